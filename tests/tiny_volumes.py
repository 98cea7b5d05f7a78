"""Tiny NIfTI studies for the API tests: a 'head' box with a class-dependent bright 'lesion'."""
from __future__ import annotations

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
