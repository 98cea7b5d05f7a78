"""Optimiser and learning-rate schedules for the one training loop.

A schedule is a plain function ``lr(step) -> float`` (as open_clip's ``cosine_lr``), built once
per run; the plateau schedule reads a scale that the loop lowers when the monitor stalls.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable

import torch

from medalign.errors import MedAlignError
from medalign.train.config import TrainConfig

Schedule = Callable[[int], float]


def build_optimizer(params: Iterable[torch.nn.Parameter], tc: TrainConfig) -> torch.optim.Optimizer:
    """Adam / AdamW / SGD (momentum) over ``params`` with the config's lr and weight decay."""
    params = list(params)
    if tc.optimizer == "adam":
        return torch.optim.Adam(params, lr=tc.lr, betas=tuple(tc.betas), weight_decay=tc.weight_decay)
    if tc.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=tc.lr, betas=tuple(tc.betas), weight_decay=tc.weight_decay)
    if tc.optimizer == "sgd":
        return torch.optim.SGD(params, lr=tc.lr, momentum=tc.momentum, weight_decay=tc.weight_decay)
    raise MedAlignError(f"unknown train.optimizer '{tc.optimizer}' (adam, adamw, sgd)")


def warmup(base_lr: float, warmup_steps: int, step: int) -> float | None:
    """Linear warm-up lr for ``step`` (None once it is over)."""
    if warmup_steps and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    return None


def cosine_lr(base_lr: float, *, warmup_steps: int, total_steps: int, min_lr: float = 0.0) -> Schedule:
    """Linear warm-up, then half a cosine from ``base_lr`` down to ``min_lr`` at ``total_steps``."""
    def lr(step: int) -> float:
        w = warmup(base_lr, warmup_steps, step)
        if w is not None:
            return w
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_lr + 0.5 * (base_lr - min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))
    return lr


@dataclass
class Plateau:
    """ReduceLROnPlateau semantics (torch defaults: relative threshold 1e-4, no cooldown) on a score to minimise."""

    patience: int
    factor: float
    scale: float = 1.0
    best: float = math.inf
    bad: int = 0

    def observe(self, score: float) -> None:
        if score < self.best - abs(self.best) * 1e-4:
            self.best, self.bad = score, 0
        else:
            self.bad += 1
            if self.bad > self.patience:
                self.scale *= self.factor
                self.bad = 0


def plateau_lr(base_lr: float, *, warmup_steps: int, plateau: Plateau) -> Schedule:
    """Linear warm-up, then ``base_lr`` x the plateau's current scale."""
    def lr(step: int) -> float:
        w = warmup(base_lr, warmup_steps, step)
        return w if w is not None else base_lr * plateau.scale
    return lr


def constant_lr(base_lr: float, *, warmup_steps: int) -> Schedule:
    def lr(step: int) -> float:
        w = warmup(base_lr, warmup_steps, step)
        return w if w is not None else base_lr
    return lr


def build_schedule(tc: TrainConfig, total_steps: int, plateau: Plateau) -> Schedule:
    """The config's schedule as a function of the global step."""
    if tc.scheduler == "cosine":
        return cosine_lr(tc.lr, warmup_steps=tc.warmup_steps, total_steps=total_steps, min_lr=tc.min_lr)
    if tc.scheduler == "plateau":
        return plateau_lr(tc.lr, warmup_steps=tc.warmup_steps, plateau=plateau)
    return constant_lr(tc.lr, warmup_steps=tc.warmup_steps)
