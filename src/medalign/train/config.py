"""The ``train`` section of a config, typed and range-checked, and the whole-config resolver.

``train.lr=abc`` or ``trian.lr=1`` fail here, naming the key, before a run folder exists.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, Optional

from medalign.config import ConfigError, from_dict, merge, require
from medalign.data.config import DataConfig

SECTIONS = ("seed", "data", "recipe", "train", "readout", "run_dir")


@dataclass
class TrainConfig:
    """Everything the loop reads (see medalign.train.loop)."""

    epochs: int = 300
    batch_size: int = 8
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = 0.01
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = 0.9                  # sgd only
    scheduler: Literal["plateau", "cosine", "constant"] = "plateau"  # plateau follows the monitored metric
    plateau_patience: int = 10
    plateau_factor: float = 0.5
    warmup_steps: int = 0
    min_lr: float = 0.0                    # floor for cosine
    grad_clip: Optional[float] = 1.0       # max global grad norm; null = off
    ema_decay: Optional[float] = None      # e.g. 0.99: validate and save an EMA of the weights
    amp: bool = True                       # mixed precision, CUDA only (bf16 when supported, else fp16 + scaler)
    device: Optional[str] = None           # None -> cuda:LOCAL_RANK when available, else cpu
    monitor: str = "loss"                  # val metric for best checkpoint, plateau and early stopping
    monitor_mode: Literal["min", "max"] = "min"
    # which epoch's weights are the run's model (checkpoints/best.safetensors: what load, evaluate and
    # index read): the best by `monitor`, or the last (monitor still drives plateau and early stopping)
    select: Literal["best", "last"] = "best"
    early_stopping_patience: Optional[int] = None  # epochs without improvement; null = off
    drop_last: bool = True                 # contrastive batches of 1 carry no signal
    # 0 = plain shuffle; a > 0: draw training studies with p ~ (studies of its label)^-a, so rare
    # classes come up more often (1 = every class equally often); needs the manifest's label column
    class_balance: float = 0.0
    # 0 = off; a > 0: p ~ (training studies acquired with the same sequences)^-a, so a protocol that few
    # studies have (multi-sequence studies among many FLAIR-alone ones) is not starved of steps
    protocol_balance: float = 0.0
    log_every: int = 10
    checkpoint_every_steps: int = 0        # extra mid-epoch resume points; 0 = only at epoch end
    max_steps: Optional[int] = None        # stop after this many optimiser steps in total
    stop_after_steps: Optional[int] = None  # simulate a kill: save resume state and return (tests)
    progress: bool = True
    find_unused_parameters: bool = False
    tensorboard: bool = True               # used only when the tensorboard package is installed

    def __post_init__(self) -> None:
        require(self.epochs >= 1, "train.epochs", f"must be >= 1, got {self.epochs}")
        require(self.batch_size >= 1, "train.batch_size", f"must be >= 1, got {self.batch_size}")
        require(self.lr > 0, "train.lr", f"must be > 0, got {self.lr}")
        require(self.weight_decay >= 0, "train.weight_decay", f"must be >= 0, got {self.weight_decay}")
        require(0 < self.plateau_factor < 1, "train.plateau_factor", f"must be in (0, 1), got {self.plateau_factor}")
        require(self.warmup_steps >= 0, "train.warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        require(self.grad_clip is None or self.grad_clip > 0, "train.grad_clip", "must be > 0 or null")
        require(self.ema_decay is None or 0 < self.ema_decay < 1, "train.ema_decay",
                f"must be in (0, 1), got {self.ema_decay}")
        require(self.max_steps is None or self.max_steps >= 1, "train.max_steps", "must be >= 1 or null")
        require(self.log_every >= 1, "train.log_every", f"must be >= 1, got {self.log_every}")
        require(self.checkpoint_every_steps >= 0, "train.checkpoint_every_steps", "must be >= 0")
        require(0 <= self.class_balance <= 1, "train.class_balance", f"must be in [0, 1], got {self.class_balance}")
        require(0 <= self.protocol_balance <= 1, "train.protocol_balance",
                f"must be in [0, 1], got {self.protocol_balance}")

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "TrainConfig":
        return from_dict(cls, d, where="train")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


@dataclass
class ReadoutConfig:
    """How ``classify`` reads the run's embeddings by default (``medalign classify --neighbours/--k/--mirror`` override
    it): zero-shot, blended with weight ``neighbours`` with the vote of the ``k`` nearest training studies
    (medalign.eval.neighbours), each embedding optionally the mean over the study and its left-right mirror. A preset
    sets it when its readout was chosen on dev and confirmed with it."""

    neighbours: float = 0.0
    k: int = 20
    # test-time left-right mirroring: each image embedding (the study's and the bank's) read as the mean of the study's
    # and its mirror's; class labels are side-free, and the two views average out part of an embedding's noise
    mirror: bool = False

    def __post_init__(self) -> None:
        require(0 <= self.neighbours <= 1, "readout.neighbours", f"must be in [0, 1], got {self.neighbours}")
        require(self.k >= 1, "readout.k", f"must be >= 1, got {self.k}")

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "ReadoutConfig":
        return from_dict(cls, d, where="readout")


def resolve_config(cfg: dict[str, Any] | None) -> dict[str, Any]:
    """The user's config checked section by section, with every default filled in (a plain dict).

    ``recipe`` keys are checked against the recipe's constructor in ``build_recipe``.
    """
    cfg = dict(cfg or {})
    unknown = sorted(set(cfg) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"unknown top-level key(s) {unknown}; allowed: {list(SECTIONS)}")
    seed = cfg.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed: expected an integer, got {seed!r}")
    recipe = cfg.get("recipe") or {"name": "clip"}
    if not isinstance(recipe, dict):
        raise ConfigError(f"recipe: expected a mapping, got {recipe!r}")
    out = {"seed": seed,
           "data": DataConfig.from_dict(cfg.get("data")).to_dict(),
           "recipe": merge({"name": "clip"}, recipe),
           "train": TrainConfig.from_dict(cfg.get("train")).to_dict(),
           "readout": dataclasses.asdict(ReadoutConfig.from_dict(cfg.get("readout")))}
    if cfg.get("run_dir") is not None:
        out["run_dir"] = str(cfg["run_dir"])
    return out
