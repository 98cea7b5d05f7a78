"""PneumoniaMNIST (real 2D chest X-rays, 28 x 28, pneumonia vs normal) as medalign samples.

The file is ``pneumoniamnist.npz`` with ``{train,val,test}_images`` uint8 (N, 28, 28) and
``{split}_labels`` uint8 (N, 1). There are **no patient ids** in MedMNIST: every image gets its
own ``patient_id`` (``pmnist-<split>-<index>``), so MICLe has no genuine multi-instance pairs
here; :func:`pseudo_instances` builds an explicitly labelled stand-in (two different random
crops of one image count as two "instances"), which is SimCLR in all but name.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from medalign.errors import CohortError

CLASS_NAMES: tuple[str, ...] = ("normal", "pneumonia")
SPLITS = ("train", "val", "test")


def default_path() -> Path:
    """``$MEDALIGN_SHARED_DATA/pneumoniamnist/pneumoniamnist.npz`` (default ``../shared/data``)."""
    root = Path(os.environ.get("MEDALIGN_SHARED_DATA", Path(__file__).resolve().parents[3] / ".." / "shared" / "data"))
    return root / "pneumoniamnist" / "pneumoniamnist.npz"


def load_pneumoniamnist(path: str | Path | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read the npz -> ``{split: (images uint8 (N, 28, 28), labels int64 (N,))}``.

    Raises CohortError naming the file and key when it is missing or malformed.
    """
    path = Path(path) if path is not None else default_path()
    if not path.is_file():
        raise CohortError("PneumoniaMNIST file not found", path=str(path))
    try:
        data = np.load(path)
    except Exception as e:  # noqa: BLE001 - any reader failure is a bad file
        raise CohortError(f"cannot read npz ({e})", path=str(path)) from None
    out = {}
    for split in SPLITS:
        ik, lk = f"{split}_images", f"{split}_labels"
        if ik not in data or lk not in data:
            raise CohortError(f"missing key '{ik}' or '{lk}'", path=str(path))
        x, y = data[ik], data[lk].reshape(-1).astype(np.int64)  # labels (N, 1) -> (N,)
        if x.ndim != 3 or x.shape[0] != y.shape[0]:
            raise CohortError(f"'{ik}' must be (N, H, W) with N = len('{lk}'), got {x.shape} and {y.shape}",
                              path=str(path))
        if x.dtype != np.uint8:
            raise CohortError(f"'{ik}' must be uint8, got {x.dtype}", path=str(path))
        out[split] = (x, y)
    return out


class PneumoniaMNISTDataset(Dataset):
    """One split as medalign sample dicts: image float32 (1, H, W) in [0, 1], sequence_mask (1,),
    label int, study_id, patient_id (one per image: no patient ids exist), text ''.

    ``limit`` keeps a fixed random subset of N images (tests; the file is sorted by label);
    ``size`` resizes (bilinear) e.g. to 16 x 16. Ids use the index in the file.
    """

    def __init__(self, split: str = "train", *, path: str | Path | None = None, limit: int | None = None,
                 size: int | None = None) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got '{split}'")
        x, y = load_pneumoniamnist(path)[split]
        if limit is not None and limit < len(y):
            # The file is sorted by label: a prefix would hold one class. Keep a fixed random subset.
            keep = np.sort(np.random.default_rng(0).permutation(len(y))[:limit])
            x, y = x[keep], y[keep]
            self.index = keep
        else:
            self.index = np.arange(len(y))
        img = torch.from_numpy(x.astype(np.float32) / 255.0)[:, None]  # (N, 1, H, W)
        if size is not None and size != img.shape[-1]:
            img = torch.nn.functional.interpolate(img, size=(size, size), mode="bilinear", align_corners=False)
        self.images, self.labels, self.split = img, torch.from_numpy(y), split

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> dict:
        sid = f"pmnist-{self.split}-{int(self.index[i])}"
        return {"image": self.images[i], "sequence_mask": torch.ones(1, dtype=torch.bool),
                "label": int(self.labels[i]), "study_id": sid, "patient_id": sid, "text": ""}


def pseudo_instances(images: torch.Tensor, *, n: int = 2, crop: float = 0.75,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Honest MICLe stand-in for data without patient ids: ``n`` *different fixed-size crops*
    (random position, ``crop`` of the side, resized back) of each image play the part of the
    patient's several images. (B, C, H, W) -> (B, n, C, H, W).
    """
    b, c, h, w = images.shape
    ch, cw = max(2, round(h * crop)), max(2, round(w * crop))
    out = []
    for _ in range(n):
        y0 = torch.randint(0, h - ch + 1, (b,), generator=generator)
        x0 = torch.randint(0, w - cw + 1, (b,), generator=generator)
        crops = torch.stack([images[i, :, y0[i]:y0[i] + ch, x0[i]:x0[i] + cw] for i in range(b)])  # (B, C, ch, cw)
        out.append(torch.nn.functional.interpolate(crops, size=(h, w), mode="bilinear", align_corners=False))
    return torch.stack(out, dim=1)  # (B, n, C, H, W)
