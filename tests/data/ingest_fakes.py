"""Tiny phantom studies exported as vendor-style DICOM, shared by the ingest tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np

SEQS = ("dwi", "adc", "t2s", "flair", "t1", "t2")


def phantom(rng: np.random.Generator, shape=(12, 10, 8), lesion: int = 0) -> np.ndarray:
    v = np.zeros(shape, np.float32)  # (i, j, k)
    v[2:10, 2:8, 1:7] = 400 + 40 * rng.standard_normal((8, 6, 6))
    v[3 + lesion % 5: 5 + lesion % 5, 3:5, 3:5] += 300  # a class-dependent 'lesion'
    return v


def axial_affine(spacing=(2.0, 2.2, 4.0)) -> np.ndarray:
    a = np.diag([*spacing, 1.0])
    a[:3, 3] = [-12.0, -10.0, -14.0]
    return a


def export(root: Path, n: int, seed: int = 0, shape=(12, 10, 8), lesions=None) -> list[dict]:
    """``n`` studies (vendors rotate, layouts alternate) under ``root``; returns the truth rows."""
    from medalign.data.synth.dicom_export import export_study

    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        les = lesions[i] if lesions else i
        vols = {s: (phantom(rng, shape, les), axial_affine()) for s in SEQS}
        rows += export_study(vols, root, i, seed=seed, layout="flat" if i % 2 else "nested")
    return rows
