"""DICOM series -> NIfTI with the geometry taken from the headers (pydicom + numpy + nibabel).

Why not dcm2niix (the field's standard) or SimpleITK's series reader: ingest has already read,
sorted and checked every slice's ImagePositionPatient / ImageOrientationPatient / PixelSpacing
and b-value (``dicom_scan.plan_stack``), including enhanced multi-frame objects; the converter
reuses that one sorted stack instead of letting a second tool re-sort, re-split or silently
accept a gap, and pixel decoding goes through pydicom, whose missing-plugin messages name the
package to install. Not supported: Siemens MOSAIC (2D tiles of an EPI volume; use dcm2niix).

Geometry: voxel (i, j, k) = (column, row, slice). In LPS, the affine's columns are the row
cosine x column spacing, the column cosine x row spacing and the mean step between sorted slice
positions; origin = the first slice's ImagePositionPatient. NIfTI is RAS: flip x and y.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medalign.data.dicom_scan import Slice, Stack

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def stack_affine(stack: Stack) -> np.ndarray:
    """4 x 4 RAS affine of a sorted stack (see the module docstring)."""
    row, col = np.array(stack.orientation[:3]), np.array(stack.orientation[3:])
    a = np.eye(4)
    a[:3, 0] = row * stack.spacing[1]  # i: along a row = next column, spaced by PixelSpacing[1]
    a[:3, 1] = col * stack.spacing[0]  # j: down a column = next row, spaced by PixelSpacing[0]
    a[:3, 2] = stack.slice_step
    a[:3, 3] = stack.positions[0]
    return LPS_TO_RAS @ a


def pick_volume(stack: Stack, sequence: str) -> tuple[float, list[list[Slice]]]:
    """The b-value and slice lists to convert: for DWI the b nearest 1000 among b >= 500 (all
    diffusion directions at that b are combined), otherwise the only volume."""
    keys = sorted(stack.volumes)
    if sequence == "dwi":
        high = [b for b in keys if b >= 500]
        b = min(high, key=lambda v: abs(v - 1000)) if high else keys[-1]
        return b, stack.volumes[b]
    if len(keys) > 1:
        raise ValueError(f"{len(keys)} b-values ({', '.join(f'{k:g}' for k in keys)}) in a {sequence} series")
    vol = stack.volumes[keys[0]]
    n = max(len(v) for v in vol)
    if n > 1:
        raise ValueError(f"{n} images share one slice position (multi-echo or mixed series): not one volume")
    return keys[0], vol


def _rescale(ds: Any, frame: int | None) -> tuple[float, float]:
    src = ds
    if frame is not None:
        for name in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
            groups = ds.get(name) or []
            g = groups[frame] if name.startswith("PerFrame") and frame < len(groups) else (groups[0] if groups else None)
            item = (g.get("PixelValueTransformationSequence") or [None])[0] if g is not None else None
            if item is not None:
                src = item
                break
    slope = float(src.get("RescaleSlope", 1) or 1)
    inter = float(src.get("RescaleIntercept", 0) or 0)
    return slope, inter


def read_pixels(slices_at: list[list[Slice]]) -> tuple[np.ndarray, bool]:
    """(volume (i, j, k) float32, whether values are integral) from sorted slice lists; images at
    one position (diffusion directions) are combined by their geometric mean (the trace image)."""
    import pydicom

    cache: dict[str, Any] = {}
    out: np.ndarray | None = None
    integral = True
    for k, group in enumerate(slices_at):
        imgs = []
        for s in group:
            ds = cache.get(s.path)
            if ds is None:
                ds = cache[s.path] = pydicom.dcmread(s.path)
            arr = ds.pixel_array  # (rows, cols) or (frames, rows, cols)
            px = np.asarray(arr[s.frame] if s.frame is not None else arr, dtype=np.float32)
            if px.ndim != 2:
                raise ValueError(f"{s.path}: colour or multi-sample pixels (shape {px.shape}) in an MR series")
            slope, inter = _rescale(ds, s.frame)
            integral &= slope == int(slope) and inter == int(inter)
            imgs.append(px * slope + inter)
        if len(imgs) == 1:
            img = imgs[0]
        else:  # geometric mean over directions = the trace-weighted image
            img = np.exp(np.log(np.maximum(np.stack(imgs), 1e-3)).mean(0))
            integral = False
        if out is None:
            out = np.zeros((img.shape[1], img.shape[0], len(slices_at)), np.float32)  # (i=cols, j=rows, k)
        out[:, :, k] = img.T  # (rows, cols) -> (cols, rows)
        if len(cache) > 8:  # keep memory flat on long series; multi-frame files stay at the front
            cache.pop(next(k2 for k2 in cache if k2 != s.path))
    assert out is not None
    return out, integral


def write_nifti(path: str | Path, data: np.ndarray, affine: np.ndarray, integral: bool) -> None:
    """Gzipped NIfTI with qform = sform = ``affine``, written atomically; int16 when it fits."""
    import nibabel as nib

    from medalign.utils import atomic_path

    if integral and data.size and data.min() >= -32768 and data.max() <= 32767:
        data = data.astype(np.int16)
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    with atomic_path(path, suffix=".nii.gz") as tmp:
        nib.save(img, str(tmp))


def convert(stack: Stack, sequence: str, out_path: str | Path) -> dict[str, Any]:
    """Write one sequence's volume; returns shape, spacing (mm) and the b-value used."""
    b, slices_at = pick_volume(stack, sequence)
    data, integral = read_pixels(slices_at)
    aff = stack_affine(stack)
    write_nifti(out_path, data, aff, integral)
    return {"shape": list(data.shape), "spacing": np.linalg.norm(aff[:3, :3], axis=0).round(4).tolist(),
            "bvalue": None if b < 0 else b}
