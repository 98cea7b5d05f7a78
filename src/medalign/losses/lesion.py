"""Auxiliary lesion-class loss: which class's lesion, if any, each cell of a feature map holds."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def lesion_targets(mask: torch.Tensor, labels: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
    """Per-cell targets on a feature ``grid``: 0 = no lesion, ``1 + label`` = a lesion of the study's class.

    ``mask`` (B, *spatial) lesion voxels (> 0) on the image grid; ``labels`` (B,) class indices.
    A cell is lesion when any of its voxels is (max pooling), so thin white-matter lesions still
    mark the cells they cross. Returns (B, *grid) long.
    """
    m = (mask > 0).float().unsqueeze(1)  # (B, 1, *spatial)
    pool = F.adaptive_max_pool3d if m.dim() == 5 else F.adaptive_max_pool2d
    cells = pool(m, grid).squeeze(1) > 0  # (B, *grid)
    lab = labels.long().view(-1, *([1] * len(grid)))  # (B, 1, ...)
    return torch.where(cells, lab + 1, torch.zeros_like(lab))


def lesion_fractions(mask: torch.Tensor, labels: torch.Tensor, grid: tuple[int, ...], num_classes: int) -> torch.Tensor:
    """Soft per-cell targets on a feature ``grid``: channel 0 = the share of the cell's voxels
    without lesion, channel ``1 + label`` = the share with one (the study's class); the rest 0.

    ``mask`` (B, *spatial) lesion voxels (> 0); ``labels`` (B,) in [0, num_classes). Returns
    (B, 1 + num_classes, *grid) float, summing to 1 over the channels of every cell.
    """
    m = (mask > 0).float().unsqueeze(1)  # (B, 1, *spatial)
    pool = F.adaptive_avg_pool3d if m.dim() == 5 else F.adaptive_avg_pool2d
    frac = pool(m, grid)  # (B, 1, *grid), share of lesion voxels per cell
    onehot = F.one_hot(labels.long() + 1, 1 + num_classes).float()  # (B, 1 + K)
    onehot = onehot.view(*onehot.shape, *([1] * len(grid)))  # (B, 1 + K, 1, ...)
    out = frac * onehot  # (B, 1 + K, *grid): the lesion share in the study's class channel
    out[:, 0] = 1.0 - frac[:, 0]
    return out


class LesionClassLoss(nn.Module):
    """Cross-entropy of per-cell lesion-class logits, lesion and lesion-free cells weighted equally.

    A segmentation-style auxiliary task for image encoders trained contrastively on a cohort
    with lesion masks (the synthetic cohort has them): the features at a lesion must say whose
    lesion it is (white-matter disease vs tumour oedema vs infarct), which the image-report
    loss alone does not force when the report can be matched from other cues. Lesions are a few
    percent of the cells, so the two groups' mean losses are averaged (a batch without lesion
    cells uses the background term alone). Only studies with a mask and a label count
    (``valid``); a batch with none gives a zero loss that keeps the graph.

    ``targets="fraction"``: the target of a cell is the share of its voxels that are lesion
    (:func:`lesion_fractions`), and every cell weighs the same, so the head's probabilities are
    calibrated shares: their mean over the cells estimates the lesion volume per class, near 0
    in a brain without lesions. ``"any"`` (default) marks a cell as soon as one voxel is lesion
    and balances the two groups, which makes the head call lesion generously: in the demo
    cohort every cell next to a ventricle is a white-matter-disease cell somewhere.
    """

    def __init__(self, weight: float = 1.0, targets: str = "any") -> None:
        super().__init__()
        if weight < 0:
            raise ValueError(f"lesion loss weight must be >= 0, got {weight}")
        if targets not in ("any", "fraction"):
            raise ValueError(f"lesion targets must be 'any' or 'fraction', got {targets!r}")
        self.weight = float(weight)
        self.targets = targets

    def forward(self, logits: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor,
                valid: torch.Tensor) -> dict[str, torch.Tensor]:
        """``logits`` (B, 1 + K, *grid); ``mask`` (B, *spatial); ``labels`` (B,); ``valid`` (B,) bool."""
        keep = valid & (labels >= 0)  # (B,)
        if not bool(keep.any()):
            return {"lesion_loss": logits.sum() * 0.0}
        if self.targets == "fraction":
            soft = lesion_fractions(mask[keep], labels[keep], tuple(logits.shape[2:]), logits.shape[1] - 1)
            ce = F.cross_entropy(logits[keep].float(), soft, reduction="mean")  # soft targets (b, 1 + K, *grid)
            return {"lesion_loss": self.weight * ce}
        target = lesion_targets(mask[keep], labels[keep], tuple(logits.shape[2:]))  # (b, *grid)
        ce = F.cross_entropy(logits[keep].float(), target, reduction="none")  # (b, *grid)
        lesion = target > 0
        parts = [ce[~lesion].mean()] if bool((~lesion).any()) else []
        if bool(lesion.any()):
            parts.append(ce[lesion].mean())
        return {"lesion_loss": self.weight * torch.stack(parts).mean()}


def space_to_depth(mask: torch.Tensor, factors: tuple[int, ...]) -> torch.Tensor:
    """(B, *spatial) -> (B, prod(factors), *spatial / factors): each cell's voxels as channels,
    ordered as the axes' offsets (the first axis slowest), so a 1x1 conv with ``prod(factors)``
    outputs on a map ``factors`` times coarser predicts every voxel."""
    b, n = mask.shape[0], len(factors)
    spatial = mask.shape[1:]
    if len(spatial) != n or any(s % f for s, f in zip(spatial, factors)):
        raise ValueError(f"lesion mask grid {tuple(spatial)} does not divide into cells of {tuple(factors)} voxels")
    grid = [s // f for s, f in zip(spatial, factors)]
    shape = [b] + [v for g, f in zip(grid, factors) for v in (g, f)]
    x = mask.reshape(shape)  # (B, g_1, f_1, ..., g_n, f_n)
    order = [0] + [2 + 2 * a for a in range(n)] + [1 + 2 * a for a in range(n)]
    return x.permute(*order).reshape(b, -1, *grid)  # (B, prod(f), *grid)


class VoxelLesionLoss(nn.Module):
    """Class-balanced binary cross-entropy of per-voxel lesion logits read off a strided map.

    ``logits`` (B, prod(factors), *grid) come from a 1x1 conv on a map ``factors`` times coarser
    than the image (e.g. level 0 behind the 1x4x4 patchify stem); the mask is folded onto that grid
    (:func:`space_to_depth`) instead of unfolding the logits, which keeps the loss cheap. Why voxels
    and not cells: a small white-matter lesion fills a few voxels of a 4x4 cell, and a cell target
    is met by features that only say "something bright near the ventricles"; asking where in the
    patch the lesion lies makes the stem keep it. Lesion and lesion-free voxels weigh half each.
    Only studies with a mask count (``valid``); none gives a zero loss that keeps the graph.
    """

    def __init__(self, weight: float = 1.0, factors: tuple[int, ...] = (1, 4, 4)) -> None:
        super().__init__()
        if weight < 0:
            raise ValueError(f"voxel lesion loss weight must be >= 0, got {weight}")
        self.weight = float(weight)
        self.factors = tuple(int(f) for f in factors)

    def forward(self, logits: torch.Tensor, mask: torch.Tensor, valid: torch.Tensor) -> dict[str, torch.Tensor]:
        """``logits`` (B, prod(factors), *grid); ``mask`` (B, *spatial); ``valid`` (B,) bool."""
        if not bool(valid.any()):
            return {"voxel_lesion_loss": logits.sum() * 0.0}
        kept = logits[valid].float()  # (b, r, *grid)
        target = space_to_depth((mask[valid] > 0).to(kept.dtype), self.factors)  # (b, r, *grid)
        if target.shape != kept.shape:
            raise ValueError(f"voxel lesion logits {tuple(logits.shape[1:])} do not match the folded mask "
                             f"{tuple(target.shape[1:])}: lesion_upsample must be image grid / local map grid")
        pos = target.mean().clamp(1e-6, 1 - 1e-6)
        w = torch.where(target > 0, 0.5 / pos, 0.5 / (1 - pos))  # (b, r, *grid): halves for lesion / rest
        bce = F.binary_cross_entropy_with_logits(kept, target, weight=w)
        return {"voxel_lesion_loss": self.weight * bce}
