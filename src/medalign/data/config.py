"""The ``data`` section of a training config, typed and checked (unknown keys name themselves)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from medalign.config import from_dict, require
from medalign.data.schema import KNOWN_SEQUENCES, PAPER_SEQUENCES, PAPER_SHAPE


@dataclass
class DataConfig:
    """Where a recipe's studies come from; recipes receive it as a plain dict (``asdict``)."""

    kind: Literal["cohort", "synthetic", "pneumoniamnist"] = "cohort"  # manifest + cache | tiny in memory | 2D
    manifest: Optional[str] = None
    cache_dir: Optional[str] = None
    sequences: tuple[str, ...] = PAPER_SEQUENCES
    shape: tuple[int, ...] = PAPER_SHAPE               # (D, H, W) of the cache
    augment: Optional[str] = None                      # e.g. "paper" (TorchIO, train split only)
    augment_seed: Optional[int] = None
    train_split: str = "train"
    val_split: Optional[str] = "val"
    num_workers: int = 0
    preprocess: Optional[dict] = None                  # PreprocessConfig fields, when the cache does not record them
    synthetic: dict = field(default_factory=dict)      # SyntheticPairs keyword arguments (kind: synthetic)
    studies_per_patient: Optional[int] = None          # synthetic: consecutive studies share a patient
    path: Optional[str] = None                         # pneumoniamnist: the .npz (default: ../shared/data)
    limit: Optional[int] = None                        # pneumoniamnist: first N images per split
    size: Optional[int] = None                         # pneumoniamnist: resize to size x size

    def __post_init__(self) -> None:
        bad = [s for s in self.sequences if s not in KNOWN_SEQUENCES]
        require(not bad, "data.sequences", f"unknown sequence(s) {bad}; known: {list(KNOWN_SEQUENCES)}")
        require(len(self.sequences) > 0, "data.sequences", "is empty")
        require(all(s > 0 for s in self.shape), "data.shape", f"must be positive, got {list(self.shape)}")
        require(self.num_workers >= 0, "data.num_workers", f"must be >= 0, got {self.num_workers}")
        require(self.studies_per_patient is None or self.studies_per_patient >= 1, "data.studies_per_patient",
                "must be >= 1")

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "DataConfig":
        return from_dict(cls, d, where="data")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (lists, not tuples) for recipes and the run's config.yaml."""
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
