"""Masked patch modelling (GiMP MPM): contiguous subsequences, random masks, masked L1 loss."""
from __future__ import annotations

import torch
from torch import Tensor, nn


def contiguous_subsequence(bag: Tensor, length: int, *, generator: torch.Generator | None = None) -> Tensor:
    """A random contiguous run of ``length`` patches from bag (N, D) -> (length, D).

    Bags shorter than ``length`` are tiled (duplicated) up to it, as in the paper.
    """
    n = bag.shape[0]
    if n == 0:
        raise ValueError("empty bag")
    if n < length:
        reps = -(-length // n)
        return bag.repeat(reps, 1)[:length]  # (length, D)
    start = int(torch.randint(0, n - length + 1, (1,), generator=generator))
    return bag[start:start + length]


def random_patch_mask(batch: int, length: int, ratio: float = 0.5, *,
                      generator: torch.Generator | None = None, device: torch.device | str | None = None) -> Tensor:
    """Bool mask (batch, length), exactly round(ratio * length) True (= masked) per row."""
    k = int(round(ratio * length))
    noise = torch.rand(batch, length, generator=generator)
    idx = noise.argsort(dim=1)[:, :k]  # (B, k)
    mask = torch.zeros(batch, length, dtype=torch.bool)
    mask.scatter_(1, idx, True)
    return mask.to(device) if device is not None else mask


class MaskedL1Loss(nn.Module):
    """L1 reconstruction on masked positions only (GiMP eq. 3).

    forward(pred (B, L, D), target (B, L, D), mask (B, L) bool True = masked)
    -> {"reconstruction_loss"}: the mean |h - h_hat| over masked positions and channels
    (eq. 3 sums; the mean keeps the scale independent of L and D so it can be added to
    the triplet loss without retuning).
    """

    def forward(self, pred: Tensor, target: Tensor, mask: Tensor) -> dict[str, Tensor]:
        if pred.shape != target.shape or mask.shape != pred.shape[:2]:
            raise ValueError(f"shapes disagree: pred {tuple(pred.shape)}, target {tuple(target.shape)}, "
                             f"mask {tuple(mask.shape)}")
        err = (pred - target).abs().sum(-1)  # (B, L)
        n = mask.sum().clamp_min(1) * pred.shape[-1]
        return {"reconstruction_loss": (err * mask).sum() / n}
