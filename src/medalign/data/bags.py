"""Bags of patch embeddings (whole-slide images as N x D feature matrices).

Reads the CLAM layout users already have: ``<root>/pt_files/<slide>.pt`` (a tensor, or a
dict with ``features``), ``<root>/h5_files/<slide>.h5`` (datasets ``features`` (N, D) and
optional ``coords`` (N, 2)), or plain ``<slide>.npy``. N varies per slide.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from medalign.errors import CohortError

BAG_SUFFIXES = (".pt", ".npy", ".h5")


def load_bag(path: str | Path, *, study_id: str = "?", with_coords: bool = False):
    """Load one bag as float32 (N, D) numpy; with_coords -> (features, coords (N, 2) | None)."""
    path = Path(path)
    if not path.exists():
        raise CohortError("bag file not found", study_id=study_id, path=str(path))
    coords = None
    try:
        if path.suffix == ".npy":
            feats = np.load(path, mmap_mode="r")
        elif path.suffix == ".pt":
            obj = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(obj, dict):
                if "features" not in obj:
                    raise CohortError(f"dict without 'features' (keys {sorted(obj)})", study_id=study_id, path=str(path))
                coords = obj.get("coords")
                obj = obj["features"]
            feats = obj.numpy() if isinstance(obj, Tensor) else np.asarray(obj)
        elif path.suffix == ".h5":
            import h5py

            with h5py.File(path, "r") as f:
                if "features" not in f:
                    raise CohortError(f"no 'features' dataset (has {list(f.keys())})", study_id=study_id, path=str(path))
                feats = f["features"][()]
                coords = f["coords"][()] if "coords" in f else None
        else:
            raise CohortError(f"unknown bag format '{path.suffix}' (use {', '.join(BAG_SUFFIXES)})",
                              study_id=study_id, path=str(path))
    except CohortError:
        raise
    except Exception as e:  # corrupt file: say which
        raise CohortError(f"cannot read bag: {e}", study_id=study_id, path=str(path)) from e
    feats = np.asarray(feats)
    if feats.ndim == 3 and feats.shape[0] == 1:  # CLAM sometimes stores (1, N, D)
        feats = feats[0]
    if feats.ndim != 2 or feats.shape[0] == 0:
        raise CohortError(f"bag must be a non-empty (N, D) array, got shape {feats.shape}", study_id=study_id,
                          path=str(path))
    feats = feats.astype(np.float32, copy=False)
    if with_coords:
        return feats, (None if coords is None else np.asarray(coords))
    return feats


def find_bag(root: str | Path, slide_id: str) -> Path:
    """Locate ``slide_id`` under a CLAM-style feature folder (pt_files/, h5_files/ or flat)."""
    root = Path(root)
    candidates = [root / sub / f"{slide_id}{suf}" for sub in ("pt_files", "h5_files", "") for suf in BAG_SUFFIXES]
    for c in candidates:
        if c.exists():
            return c
    raise CohortError(f"no bag under {root} (looked in pt_files/, h5_files/, ./ for .pt/.h5/.npy)",
                      study_id=slide_id, path=str(root))


def save_bag(path: str | Path, features: np.ndarray, coords: np.ndarray | None = None) -> Path:
    """Write a bag atomically in the format given by the suffix (.pt / .npy / .h5)."""
    from medalign.utils import atomic_path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        if path.suffix == ".npy":
            with open(tmp, "wb") as fh:
                np.save(fh, features)
        elif path.suffix == ".pt":
            obj = {"features": torch.from_numpy(np.ascontiguousarray(features))}
            if coords is not None:
                obj["coords"] = torch.from_numpy(np.ascontiguousarray(coords))
            torch.save(obj, tmp)
        elif path.suffix == ".h5":
            import h5py

            with h5py.File(tmp, "w") as f:
                f.create_dataset("features", data=features)
                if coords is not None:
                    f.create_dataset("coords", data=coords)
        else:
            raise ValueError(f"unknown bag format {path.suffix}")
    return path


def pad_bags(bags: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Stack variable-length bags: -> (B, N_max, D) zero-padded and mask (B, N_max) True = real."""
    n_max = max(b.shape[0] for b in bags)
    d = bags[0].shape[1]
    out = bags[0].new_zeros(len(bags), n_max, d)
    mask = torch.zeros(len(bags), n_max, dtype=torch.bool)
    for i, b in enumerate(bags):
        out[i, : b.shape[0]] = b
        mask[i, : b.shape[0]] = True
    return out, mask
