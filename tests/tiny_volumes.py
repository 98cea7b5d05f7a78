"""Tiny NIfTI studies for the API and benchmark tests: a 'head' box with a bright 'lesion'."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def head_with_lesion(i: int, rng: np.random.Generator) -> np.ndarray:
    """(x, y, z) = 32 x 32 x 8 float32: a noisy head box and a lesion whose position depends on i % 5."""
    vol = np.zeros((32, 32, 8), np.float32)  # (x, y, z)
    vol[6:26, 6:26, 1:7] = 1.0 + 0.1 * rng.standard_normal((20, 20, 6))  # the 'head'
    vol[8 + 3 * (i % 5): 12 + 3 * (i % 5), 10:14, 3:5] += 2.0  # class-dependent 'lesion'
    return vol


def write_nifti(path: Path, arr: np.ndarray) -> str:
    """Save ``arr`` with 2 x 2 x 4 mm voxels; returns the path as a string."""
    import nibabel as nib

    nib.save(nib.Nifti1Image(arr.astype(np.float32), np.diag([2.0, 2.0, 4.0, 1.0])), str(path))
    return str(path)


def write_lesion_study(root: Path, sid: str, label: str, variant: str, rng: np.random.Generator) -> None:
    """A ``synth brain``-like study folder ``root/sid``: dwi and flair (a 32 x 32 x 8 head box with one
    bright lesion), ``lesion_mask.nii.gz`` and a ``ground_truth.json`` naming ``label`` and ``variant``."""
    import nibabel as nib

    d = root / sid
    d.mkdir(parents=True)
    affine = np.diag([1.5, 1.5, 5.0, 1.0])
    head = np.zeros((32, 32, 8), np.float32)
    head[4:28, 4:28, 1:7] = 1
    lesion = np.zeros_like(head, dtype=np.uint8)
    lesion[8:16, 10:18, 3:5] = 1
    for s in ("dwi", "flair"):
        x = head * (0.5 + 0.05 * rng.standard_normal(head.shape)) + 1.5 * lesion
        nib.save(nib.Nifti1Image(x.astype(np.float32), affine), d / f"{s}.nii.gz")
    nib.save(nib.Nifti1Image(lesion, affine), d / "lesion_mask.nii.gz")
    gt = {"study_id": sid, "label": label, "findings": [{"variant": variant}]}
    (d / "ground_truth.json").write_text(json.dumps(gt), encoding="utf-8")
