"""Read one 3D volume (NIfTI file, DICOM series folder, or any other format ITK reads) as a
float32 ``SimpleITK.Image``.

NIfTI is read with nibabel (which, unlike ITK, refuses a truncated .nii.gz) and converted to a
``SimpleITK.Image`` (RAS affine -> ITK's LPS direction/origin/spacing); DICOM series folders are
read with SimpleITK's ``ImageSeriesReader``. From there on everything is SimpleITK, so both
formats share one code path in physical space (``imaging.preprocess_study``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from medalign.errors import CohortError

# Guards against decompression bombs and absurd headers: a 285 KB .nii.gz of zeros can declare
# 500x500x300 voxels (300 MB as float32, ~900 MB peak while converting). Brain MRI is ~16 M voxels.
MAX_VOXELS = 64_000_000             # voxels of one file (every volume of a 4D file counted)
MAX_DECODED_BYTES = 512 << 20       # bytes the header says the (decompressed) data occupy


def _sitk():
    import SimpleITK as sitk

    return sitk


def read_volume(path: str | Path, *, volume_index: int | None = None, study_id: str | None = None,
                allow_nonfinite: bool = False) -> "SimpleITK.Image":  # noqa: F821
    """Read a 3D volume (NIfTI file or DICOM series folder) as a float32 ``SimpleITK.Image``.

    4D inputs are refused unless ``volume_index`` picks one volume (a trailing axis of length 1
    is dropped silently); 2D inputs (or a 3D file with a single voxel along an axis) and NaN/inf
    voxels are refused. Errors are :class:`CohortError` naming ``study_id`` and the file.
    """
    sitk = _sitk()
    p = Path(path)
    where = dict(study_id=study_id, path=str(p))
    if not p.exists():
        raise CohortError("file not found", **where)
    try:
        if p.is_dir():
            img = _read_dicom_series(p, study_id)
        elif p.name.lower().endswith((".nii", ".nii.gz", ".hdr", ".img", ".img.gz")):
            img = _read_nifti(p, volume_index, study_id)
        else:  # anything else ITK can read (.nrrd, .mha, a single DICOM file, ...)
            img = sitk.ReadImage(str(p))
    except CohortError:
        raise
    except Exception as e:  # ITK raises RuntimeError with a multi-line message
        raise CohortError(f"cannot read image ({_first_line(e)})", **where) from None
    dim = img.GetDimension()
    if dim == 4:  # DICOM / other ITK formats
        n = img.GetSize()[3]
        _pick_volume(np.empty((1, n)), n, volume_index, study_id, p)  # validates the index
        size = list(img.GetSize())
        size[3] = 0
        img = sitk.Extract(img, size=size, index=[0, 0, 0, volume_index or 0])
    elif dim != 3:
        raise CohortError(f"{dim}D image where a 3D volume is expected", **where)
    if min(img.GetSize()) < 2:
        raise CohortError(f"2D image (size {img.GetSize()}) where a 3D volume is expected", **where)
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise CohortError(f"vector image with {img.GetNumberOfComponentsPerPixel()} components per voxel", **where)
    try:
        img = sitk.Cast(img, sitk.sitkFloat32)
    except Exception as e:
        raise CohortError(f"cannot convert voxels to float ({_first_line(e)})", **where) from None
    if not allow_nonfinite:
        arr = sitk.GetArrayViewFromImage(img)
        if not np.isfinite(arr).all():
            n_bad = int(arr.size - np.isfinite(arr).sum())
            raise CohortError(f"{n_bad} NaN/inf voxel(s)", **where)
    return img


def _pick_volume(data: np.ndarray, n: int, volume_index: int | None, study_id: str | None, path: Path) -> np.ndarray:
    """Volume ``volume_index`` of a 4D array (last axis); a single volume needs no index."""
    where = dict(study_id=study_id, path=str(path))
    if volume_index is None and n == 1:
        volume_index = 0
    if volume_index is None:
        raise CohortError(f"4D image with {n} volumes; pick one with volume_index (0..{n - 1})", **where)
    if not 0 <= volume_index < n:
        raise CohortError(f"volume_index {volume_index} out of range for a 4D image with {n} volumes", **where)
    return data[..., volume_index]


def _read_nifti(path: Path, volume_index: int | None = None, study_id: str | None = None):
    """NIfTI via nibabel (it refuses truncated .gz streams that ITK would silently zero-fill),
    converted to a SimpleITK image in ITK's LPS world space."""
    import nibabel as nib

    sitk = _sitk()
    nii = nib.load(str(path))
    check_declared_size(tuple(int(v) for v in nii.shape), np.dtype(nii.get_data_dtype()).itemsize,
                        study_id=study_id, path=path)  # from the header, before decompressing anything
    data = np.asarray(nii.dataobj, dtype=np.float32)  # (i, j, k[, t]); applies scl_slope/inter
    if data.ndim > 4:
        data = np.squeeze(data, axis=tuple(range(4, data.ndim))) if all(s == 1 for s in data.shape[4:]) else data
    aff = np.asarray(nii.affine, float)
    m = aff[:3, :3]
    spacing = np.linalg.norm(m, axis=0)
    if not (spacing > 0).all() or not np.isfinite(aff).all():
        raise ValueError(f"degenerate affine (voxel sizes {spacing.tolist()})")
    flip = np.diag([-1.0, -1.0, 1.0])  # NIfTI RAS+ world -> ITK LPS world
    u, _, vt = np.linalg.svd(flip @ (m / spacing))
    direction = u @ vt  # nearest orthonormal matrix (ITK refuses sheared directions)
    if data.ndim == 4:
        data = _pick_volume(data, data.shape[3], volume_index, study_id, path)
    if data.ndim != 3:
        raise CohortError(f"{data.ndim}D image where a 3D volume is expected", study_id=study_id, path=str(path))
    img = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(2, 1, 0)))  # (k, j, i)
    img.SetSpacing(tuple(spacing.tolist()))
    img.SetDirection(tuple(direction.ravel().tolist()))
    img.SetOrigin(tuple((flip @ aff[:3, 3]).tolist()))
    return img


def check_declared_size(shape: tuple[int, ...], itemsize: int, *, study_id: str | None, path: Path | str) -> None:
    """Refuse a volume whose declared voxel count or decoded size is over the limits."""
    n = int(np.prod(shape, dtype=np.int64)) if shape else 0
    if n > MAX_VOXELS or n * itemsize > MAX_DECODED_BYTES:
        raise CohortError(f"volume of shape {list(shape)} ({n} voxels, {n * itemsize >> 20} MiB decoded) is over "
                          f"the limit of {MAX_VOXELS} voxels / {MAX_DECODED_BYTES >> 20} MiB",
                          study_id=study_id, path=str(path))


def _read_dicom_series(folder: Path, study_id: str | None):
    sitk = _sitk()
    reader = sitk.ImageSeriesReader()
    ids = reader.GetGDCMSeriesIDs(str(folder))
    if not ids:
        raise CohortError("folder holds no DICOM series", study_id=study_id, path=str(folder))
    if len(ids) > 1:  # picking one silently could feed the wrong acquisition (e.g. a localiser)
        listed = ", ".join(f"{sid} ({len(reader.GetGDCMSeriesFileNames(str(folder), sid))} files)" for sid in ids)
        raise CohortError(f"folder holds {len(ids)} DICOM series: {listed}; put each series in its own "
                          "folder and list the one to use", study_id=study_id, path=str(folder))
    files = reader.GetGDCMSeriesFileNames(str(folder), ids[0])
    first = sitk.ImageFileReader()
    first.SetFileName(files[0])
    first.ReadImageInformation()  # header only: refuse an oversize series before reading pixels
    check_declared_size((*first.GetSize()[:2], len(files)), 4, study_id=study_id, path=folder)
    reader.SetFileNames(files)
    return reader.Execute()


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    # ITK messages start with the source location; the useful part is the last line.
    return (lines[-1] if lines else type(e).__name__)[:300]
