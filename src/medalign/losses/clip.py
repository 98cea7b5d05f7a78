"""Symmetric image-text contrastive loss (CLIP / brain-CLIP), optionally across DDP ranks."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medalign.train.dist import gather_with_grad, rank_world


class ClipLoss(nn.Module):
    """``loss = (CE(s * I T^T, arange) + CE(s * T I^T, arange)) / 2`` with ``s = logit_scale``.

    ``logit_scale`` is the already-exponentiated scale (open_clip convention). Inputs are
    expected L2-normalised. With ``gather=True`` under an initialised process group the
    embeddings of all ranks are gathered *with gradients*, so each rank's rows see the
    negatives of the whole global batch; the mean over ranks then equals the single-process
    loss on the global batch (tested in tests/train/test_ddp.py).
    """

    def __init__(self, gather: bool = True) -> None:
        super().__init__()
        self.gather = gather

    def forward(self, image_embed: torch.Tensor, text_embed: torch.Tensor,
                logit_scale: torch.Tensor | float) -> dict[str, torch.Tensor]:
        if image_embed.dim() != 2 or text_embed.dim() != 2 or image_embed.shape != text_embed.shape:
            raise ValueError(
                f"ClipLoss needs image_embed and text_embed of the same shape (B, E); "
                f"got {tuple(image_embed.shape)} and {tuple(text_embed.shape)}"
            )
        b = image_embed.shape[0]
        rank, world = rank_world()
        if self.gather and world > 1:
            all_image = gather_with_grad(image_embed)  # (world * B, E)
            all_text = gather_with_grad(text_embed)  # (world * B, E)
            offset = rank * b  # this rank's rows are the positives at these columns
        else:
            all_image, all_text, offset = image_embed, text_embed, 0
        logits_per_image = logit_scale * image_embed @ all_text.T  # (B, world * B)
        logits_per_text = logit_scale * text_embed @ all_image.T  # (B, world * B)
        labels = torch.arange(b, device=image_embed.device) + offset  # (B,)
        loss = (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2
        return {"contrastive_loss": loss}
