"""The one sequence-mask helper: missing sequences are exact zeros for every encoder and augmentation."""
from __future__ import annotations

import torch


def mask_sequences(image: torch.Tensor, sequence_mask: torch.Tensor | None) -> torch.Tensor:
    """Zero the channels of missing sequences: image (B, C, *spatial), sequence_mask (B, C) bool.

    Why: a study lacking a sequence still has its channel (the cohort fills it with zeros), and
    augmentation, resampling or a one-sequence view can put values there. Every encoder must see
    a missing sequence as exact zeros, the same in training and at inference, or it learns from
    (and embeds) signal that is not in the study. ``None`` = every sequence present.
    """
    if sequence_mask is None:
        return image
    if tuple(sequence_mask.shape) != tuple(image.shape[:2]):
        raise ValueError(f"sequence_mask must be (B, C) = {tuple(image.shape[:2])} for an image "
                         f"{tuple(image.shape)}, got {tuple(sequence_mask.shape)}")
    m = sequence_mask.to(image).reshape(*sequence_mask.shape, *([1] * (image.dim() - 2)))  # (B, C, 1, ...)
    return image * m
