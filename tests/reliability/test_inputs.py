"""Finding 6: decompression bombs, constant volumes and multi-series DICOM folders are refused."""
from __future__ import annotations

import time
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medalign.data.imaging import PreprocessConfig, preprocess_study
from medalign.data.volume_io import read_volume
from medalign.errors import CohortError


def test_gzip_bomb_is_refused_from_its_header(tmp_path):
    p = tmp_path / "bomb.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((500, 500, 300), np.uint8), np.eye(4)), str(p))
    assert p.stat().st_size < 1 << 20  # ~285 KB on disk, 75 M voxels declared
    tracemalloc.start()
    t0 = time.perf_counter()
    with pytest.raises(CohortError, match="over the limit") as e:
        read_volume(p, study_id="s1")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert "s1" in str(e.value) and str(p) in str(e.value)
    assert peak < 32 << 20 and time.perf_counter() - t0 < 5  # refused before decompressing (was ~900 MB)


def test_constant_volume_is_refused(tmp_path):
    # Normalisation already refused it ("constant inside the head"); this guards the earlier check
    # at read time (before registration and resampling run on a blank volume).
    p = tmp_path / "flair.nii.gz"
    nib.save(nib.Nifti1Image(np.full((20, 24, 12), 7.0, np.float32), np.eye(4)), str(p))
    with pytest.raises(CohortError, match="volume is constant") as e:
        preprocess_study({"flair": str(p)}, PreprocessConfig(sequences=("flair",), shape=(8, 16, 16)), study_id="c1")
    assert "c1" in str(e.value) and str(p) in str(e.value)


def _write_series(folder: Path, uid: str, n_slices: int, value: int) -> None:
    arr = (np.arange(16 * 16 * n_slices).reshape(n_slices, 16, 16) % 50 + value).astype(np.int16)  # (z, y, x)
    img = sitk.GetImageFromArray(arr)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(n_slices):
        sl = img[:, :, k]
        for tag, val in {"0008|0060": "MR", "0020|000e": uid, "0020|000d": "1.2.3.4", "0020|0013": str(k + 1),
                         "0020|0037": "1\\0\\0\\0\\1\\0", "0020|0032": f"0\\0\\{5.0 * k}", "0028|0030": "1\\1",
                         "0018|0050": "5.0"}.items():
            sl.SetMetaData(tag, val)
        writer.SetFileName(str(folder / f"{uid[-1]}_{k:03d}.dcm"))
        writer.Execute(sl)


def test_dicom_folder_with_two_series_lists_them(tmp_path):
    folder = tmp_path / "study"
    folder.mkdir()
    _write_series(folder, "1.2.826.0.1.3680043.2.1125.1.1", 6, 10)
    _write_series(folder, "1.2.826.0.1.3680043.2.1125.1.2", 4, 500)
    with pytest.raises(CohortError, match="2 DICOM series") as e:
        read_volume(folder, study_id="d1")  # used to take the larger series silently
    msg = str(e.value)
    assert "1.2.826.0.1.3680043.2.1125.1.1 (6 files)" in msg and "1.2.826.0.1.3680043.2.1125.1.2 (4 files)" in msg
    one = tmp_path / "one"
    one.mkdir()
    _write_series(one, "1.2.826.0.1.3680043.2.1125.1.3", 5, 10)
    assert read_volume(one).GetSize() == (16, 16, 5)


def _slab(path: Path, z0_mm: float, n: int = 10, seed: int = 0) -> None:
    """A head-like ellipsoid with texture, in axial slices of 5 mm starting at z0_mm (world), 2 mm in-plane."""
    zz, yy, xx = np.mgrid[0:n, 0:40, 0:40]
    head = ((yy - 20) / 16.0) ** 2 + ((xx - 20) / 14.0) ** 2 < 1.0  # (z, y, x), every slice
    arr = head * (100 + 10 * np.random.default_rng(seed).standard_normal(head.shape))  # (z, y, x)
    affine = np.diag([2.0, 2.0, 5.0, 1.0])
    affine[:3, 3] = (-40.0, -40.0, z0_mm)
    nib.save(nib.Nifti1Image(arr.transpose(2, 1, 0).astype(np.float32), affine), str(path))  # (x, y, z) on disk


def test_series_outside_the_references_field_of_view_is_absent_not_fatal(tmp_path):
    """A FLAIR slab of the upper head and a T2* slab of the lower head, not overlapping (partial coverage from
    opposite ends, as a synthetic study drew): the T2* is an absent channel, named in the info, and the study is
    preprocessed; a series that overlaps is kept; the reference itself is never dropped."""
    _slab(tmp_path / "flair.nii.gz", 60.0)  # z 60-105 mm
    _slab(tmp_path / "t2s.nii.gz", -60.0, seed=1)  # z -60 to -15 mm: nowhere near
    _slab(tmp_path / "dwi.nii.gz", 40.0, seed=2)  # z 40-85 mm: overlaps the FLAIR
    cfg = PreprocessConfig(sequences=("dwi", "t2s", "flair"), shape=(8, 16, 16), register=False)
    st = preprocess_study({"dwi": str(tmp_path / "dwi.nii.gz"), "t2s": str(tmp_path / "t2s.nii.gz"),
                           "flair": str(tmp_path / "flair.nii.gz")}, cfg, study_id="s9")
    assert st.sequence_mask.tolist() == [True, False, True]
    assert not st.image[1].any() and st.image[0].std() > 0 and st.image[2].std() > 0
    assert st.info["outside_reference"] == ["t2s"] and st.info["available"] == ["dwi", "flair"]
    assert st.info["per_sequence"]["t2s"]["outside_reference"] is True
