"""A normative prior for word maps: where a study differs from the studies whose reports say "normal".

Word <-> region attention alone rarely points at the lesion (GLoRIA on the synthetic cohort:
pointing game ~0.1-0.2): its local features carry the report's class everywhere in the head, so
which cell wins is close to arbitrary. What the attention lacks is *where the study is unusual*.
That needs no masks: the training studies whose reports are normal define, per cell of a coarse
grid over the preprocessed (canonical, head-centred) volume, the mean and spread of every
sequence. A study's anomaly at a cell is the largest |z| over its present sequences.

The grounded map of a word is the attention re-weighted by the anomaly:
``p_r ∝ a_r * anomaly_r ** gamma`` — the attention as a likelihood of the word being about cell
r, the anomaly as the prior. ``gamma = 2`` and the grid (8, 28, 28) (cells of 2 x 4 x 4 voxels
of the 16 x 112 x 112 preset) were chosen on the validation split (pointing game, attention
mass); the word still picks *which* unusual region (the T2*-dark focus for "haemorrhage", the
DWI-bright one for "infarct"). The supervision is weak: only the report-derived class of the
training studies is used, never a mask.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from medalign.errors import MedAlignError

DEFAULT_GRID: tuple[int, int, int] = (8, 28, 28)
DEFAULT_GAMMA = 2.0
SD_FLOOR = 0.1  # z-scored units: a cell that never varies in normal studies must not give infinite z
FILE_NAME = "normative.npz"


def _cells(image: np.ndarray, grid: Sequence[int]) -> np.ndarray:
    """(C, D, H, W) -> (C, *grid) cell means (adaptive average pooling)."""
    import torch
    import torch.nn.functional as F

    x = torch.as_tensor(np.asarray(image, dtype=np.float32))[None]  # (1, C, D, H, W)
    return F.adaptive_avg_pool3d(x, tuple(int(g) for g in grid))[0].numpy()  # (C, *grid)


@dataclass
class NormativePrior:
    """Per-cell mean and spread of each sequence over normal studies.

    Attributes: ``mean``/``sd`` (C, *grid) float32, ``sequences`` (the channel names), ``n`` the
    number of normal studies it was fitted on."""

    mean: np.ndarray
    sd: np.ndarray
    sequences: tuple[str, ...]
    n: int

    @property
    def grid(self) -> tuple[int, ...]:
        return tuple(int(g) for g in self.mean.shape[1:])

    @classmethod
    def fit(cls, studies: Iterable[tuple[np.ndarray, Sequence[bool] | None]], sequences: Sequence[str], *,
            grid: Sequence[int] = DEFAULT_GRID) -> "NormativePrior":
        """Fit on normal studies, given as (image (C, D, H, W), sequence_mask (C,) bool or None = all present);
        streamed: only each study's cell means are kept. Absent channels do not enter their sequence's statistics."""
        cells, present = [], []
        for img, mask in studies:
            cells.append(_cells(img, grid))  # (C, *grid)
            present.append(np.ones(len(sequences), bool) if mask is None else np.asarray(mask, bool))
        if len(cells) < 2:
            raise MedAlignError(f"a normative prior needs at least 2 normal studies, got {len(cells)}")
        x = np.stack(cells)  # (n, C, *grid)
        w = np.stack(present).astype(np.float32).reshape(len(cells), len(sequences), *([1] * len(grid)))  # (n, C, 1, 1, 1)
        cnt = np.maximum(w.sum(0), 1.0)  # (C, 1, 1, 1)
        mean = (x * w).sum(0) / cnt  # (C, *grid)
        var = (((x - mean) ** 2) * w).sum(0) / np.maximum(cnt - 1, 1.0)
        return cls(mean.astype(np.float32), (np.sqrt(var) + SD_FLOOR).astype(np.float32), tuple(sequences), len(cells))

    def anomaly(self, image: np.ndarray, sequence_mask: Sequence[bool] | None = None) -> np.ndarray:
        """(C, D, H, W) -> (*grid): the largest |z| over the present sequences, 0 outside the head."""
        c = _cells(image, self.grid)  # (C, *grid)
        if c.shape[0] != self.mean.shape[0]:
            raise MedAlignError(f"normative prior has {self.mean.shape[0]} sequences {list(self.sequences)}, "
                                f"the image {c.shape[0]}")
        z = np.abs(c - self.mean) / self.sd  # (C, *grid)
        present = np.ones(len(z), bool) if sequence_mask is None else np.asarray(sequence_mask, bool)
        if not present.any():
            raise MedAlignError("no present sequence to compare with the normative prior")
        head = _cells((np.asarray(image) != 0).astype(np.float32), self.grid).max(0) > 0.5  # (*grid)
        return np.where(head, z[present].max(0), 0.0).astype(np.float32)

    def save(self, path: str | Path) -> Path:
        from medalign.utils import atomic_path

        path = Path(path)
        with atomic_path(path, suffix=".npz") as tmp:
            np.savez(tmp, mean=self.mean, sd=self.sd, sequences=np.array(self.sequences), n=np.array(self.n))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "NormativePrior":
        with np.load(path, allow_pickle=False) as z:
            return cls(z["mean"], z["sd"], tuple(str(s) for s in z["sequences"]), int(z["n"]))


def grounded_map(attention: np.ndarray, anomaly: np.ndarray, *, gamma: float = DEFAULT_GAMMA) -> np.ndarray:
    """Attention (any grid) re-weighted by the anomaly prior on the prior's grid: ``a * anomaly**gamma``,
    normalised to sum 1 (uniform when the product vanishes). Returns an array of the prior's grid."""
    from medalign.eval.localisation import upsample_map

    a = upsample_map(attention, anomaly.shape)  # (*grid)
    p = np.clip(a, 0, None) * np.power(np.clip(anomaly, 0, None), gamma)
    s = float(p.sum())
    return (p / s if s > 0 else np.full(anomaly.shape, 1.0 / anomaly.size)).astype(np.float32)


def normal_studies(dataset) -> Iterable[tuple[np.ndarray, np.ndarray]]:
    """(image, sequence_mask) of a CohortDataset's studies labelled normal (their report's class)."""
    from medalign.data.schema import CLASSES

    normal = CLASSES.index("normal")
    for i, y in enumerate(dataset.labels):
        if y == normal:
            s = dataset[i]
            yield s["image"].numpy(), s["sequence_mask"].numpy()


def run_prior(run_dir: str | Path, manifest: str | Path, cache_dir: str | Path, *, grid: Sequence[int] = DEFAULT_GRID,
              refit: bool = False) -> NormativePrior:
    """The run's prior, fitted once on its training split's normal studies and kept in RUN/normative.npz."""
    from medalign.data.datasets import CohortDataset

    path = Path(run_dir) / FILE_NAME
    if path.is_file() and not refit:
        prior = NormativePrior.load(path)
        if prior.grid == tuple(grid):
            return prior
    ds = CohortDataset(manifest, cache_dir, split="train")
    try:
        prior = NormativePrior.fit(normal_studies(ds), ds.sequences, grid=grid)
    except MedAlignError as e:
        raise MedAlignError(f"{manifest}: too few training studies labelled normal ({e})") from None
    prior.save(path)
    return prior
