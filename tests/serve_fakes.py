"""Test helpers for the retrieval service: a tiny NIfTI cohort and a fake model.

The fake model has the MedAlignModel protocol (encode_text / encode_image / model_id /
sequences / preprocess_config) and embeds deterministically by random projection: text as
hashed bag-of-words, images as 4x4x4 block means per sequence. No trained model needed.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from medalign.data.schema import CLASSES
from medalign.errors import MedAlignError

EMBED_DIM = 256
REPORTS = {
    "infarct": "Acute infarct with restricted diffusion in the left MCA territory.",
    "tumor": "Enhancing mass in the right frontal lobe with surrounding edema, suspicious for tumor.",
    "hemorrhage": "Acute intraparenchymal hemorrhage in the left basal ganglia with blooming on T2*.",
    "normal": "No acute intracranial abnormality. Normal MRI of the brain.",
    "others": "Scattered chronic white matter changes, no acute findings.",
}


def _blocks(vol: np.ndarray, n: int = 4) -> np.ndarray:
    """(X, Y, Z) -> (n*n*n,) block means (any size >= n)."""
    out = []
    for a in np.array_split(np.asarray(vol, np.float32), n, axis=0):
        for b in np.array_split(a, n, axis=1):
            for c in np.array_split(b, n, axis=2):
                out.append(float(c.mean()))
    return np.asarray(out, np.float32)


class FakeModel:
    """Deterministic stand-in for medalign.api.MedAlignModel."""

    def __init__(self, seed: int = 0, sequences: tuple[str, ...] = ("dwi", "flair")) -> None:
        rng = np.random.default_rng(seed)
        self.sequences = list(sequences)
        self.model_id = f"fake-model-{seed}"
        self.preprocess_config = {"sequences": list(sequences), "shape": [8, 32, 32]}
        self.w_text = rng.standard_normal((128, EMBED_DIM)).astype(np.float32)
        self.w_image = rng.standard_normal((64 * len(sequences), EMBED_DIM)).astype(np.float32)
        self.calls = 0

    def encode_text(self, texts: list[str]) -> np.ndarray:
        feats = np.zeros((len(texts), 128), np.float32)
        for i, t in enumerate(texts):
            for w in t.lower().split():
                feats[i, int(hashlib.sha256(w.encode()).hexdigest(), 16) % 128] += 1.0
        return feats @ self.w_text  # (N, E)

    def encode_image(self, x, sequence_mask=None) -> np.ndarray:
        self.calls += 1
        if isinstance(x, str):
            raise MedAlignError(f"study {x}: fake model has no cache")
        if isinstance(x, dict):
            import nibabel as nib

            chans = []
            for s in self.sequences:
                if s in x:
                    vol = np.asanyarray(nib.load(x[s]).dataobj).astype(np.float32)
                    while vol.ndim > 3:
                        vol = vol[..., 0]
                    chans.append(_blocks(vol))
                else:
                    chans.append(np.zeros(64, np.float32))
            return (np.concatenate(chans) @ self.w_image)[None]  # (1, E)
        arr = np.asarray(x.numpy() if hasattr(x, "numpy") else x, np.float32)
        if arr.ndim == 4:
            arr = arr[None]  # (1, C, D, H, W)
        feats = np.stack([np.concatenate([_blocks(c) for c in study]) for study in arr])  # (B, C*64)
        return feats @ self.w_image  # (B, E)


def write_nifti(path: Path, vol: np.ndarray) -> Path:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(vol.astype(np.float32), np.eye(4)), str(path))
    return path


def make_volume(label_i: int, seed: int, shape=(32, 32, 8)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vol = rng.normal(0.0, 0.1, shape).astype(np.float32)  # (X, Y, Z)
    x0 = 4 + 5 * label_i
    vol[x0: x0 + 6, 10:18, 2:6] += 2.0  # label-specific bright blob
    return vol


def make_cohort(root: Path, n: int = 12, start: int = 0) -> Path:
    """Manifest + NIfTI files (dwi, flair) for n studies; relative paths."""
    import pandas as pd

    rows = []
    for i in range(start, start + n):
        label = CLASSES[i % len(CLASSES)]
        sid = f"S{i:03d}"
        row = {"study_id": sid, "patient_id": f"PATIENT-{i:03d}", "split": "test", "label": label,
               "report": f"{REPORTS[label]} Case {sid}."}
        for s, off in (("dwi", 0), ("flair", 1000)):
            write_nifti(root / sid / f"{s}.nii.gz", make_volume(i % len(CLASSES), i + off))
            row[f"image_{s}"] = f"{sid}/{s}.nii.gz"
        rows.append(row)
    path = root / "manifest.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


