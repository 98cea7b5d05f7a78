"""Triplet loss on patient tokens (GiMP eq. 4): max(||x-x+||^2 + delta - ||x-x-||^2, 0)."""
from __future__ import annotations

import torch
from torch import Tensor, nn


def pairwise_sq_dist(x: Tensor) -> Tensor:
    """Squared Euclidean distances (B, B), computed by differences (exact, no cancellation)."""
    diff = x[:, None, :] - x[None, :, :]  # (B, B, E)
    return diff.pow(2).sum(-1)


class TripletLoss(nn.Module):
    """Triplet loss with in-batch mining.

    mining: ``"batch_hard"`` (each anchor with its farthest positive and nearest negative),
    ``"random"`` (a random positive and negative per anchor; seeded via ``generator``) or
    ``"all"`` (mean over every valid triplet). Anchors lacking a positive or a negative
    are skipped; a batch with no valid triplet gives a zero loss that still has a graph.
    forward(embeddings (B, E), labels (B,)) -> {"triplet_loss", "triplet_active"}.
    """

    def __init__(self, margin: float = 0.8, *, mining: str = "batch_hard", squared: bool = True) -> None:
        super().__init__()
        if mining not in ("batch_hard", "random", "all"):
            raise ValueError(f"mining must be batch_hard, random or all, got {mining!r}")
        self.margin, self.mining, self.squared = margin, mining, squared

    def forward(self, embeddings: Tensor, labels: Tensor, *, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        if embeddings.ndim != 2 or labels.shape != embeddings.shape[:1]:
            raise ValueError(f"expected embeddings (B, E) and labels (B,), got {tuple(embeddings.shape)} "
                             f"and {tuple(labels.shape)}")
        d = pairwise_sq_dist(embeddings)
        if not self.squared:
            d = (d + 1e-12).sqrt()
        same = labels[:, None] == labels[None, :]  # (B, B)
        eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
        pos, neg = same & ~eye, ~same
        valid = pos.any(1) & neg.any(1)  # anchors with at least one positive and one negative
        zero = embeddings.sum() * 0.0
        if not valid.any():
            return {"triplet_loss": zero, "triplet_active": zero.detach()}
        if self.mining == "all":
            t = d[:, :, None] - d[:, None, :] + self.margin  # (B, B_pos, B_neg)
            ok = pos[:, :, None] & neg[:, None, :]
            losses = t.clamp_min(0)[ok]
        else:
            if self.mining == "batch_hard":
                d_pos = d.masked_fill(~pos, float("-inf")).amax(1)
                d_neg = d.masked_fill(~neg, float("inf")).amin(1)
            else:  # random: one uniformly chosen positive and negative per anchor
                r = torch.rand(d.shape, generator=generator, device=d.device) if generator is not None \
                    else torch.rand(d.shape, device=d.device)
                ip = r.masked_fill(~pos, -1).argmax(1)
                ineg = r.masked_fill(~neg, -1).argmax(1)
                ar = torch.arange(len(labels), device=d.device)
                d_pos, d_neg = d[ar, ip], d[ar, ineg]
            losses = (d_pos - d_neg + self.margin).clamp_min(0)[valid]
        return {"triplet_loss": losses.mean(), "triplet_active": (losses > 0).float().mean().detach()}
