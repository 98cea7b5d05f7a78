"""Symmetric image-text contrastive loss (CLIP / brain-CLIP), optionally across DDP ranks."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medalign.dist import gather_no_grad, gather_with_grad, rank_world


class ClipLoss(nn.Module):
    """``loss = (CE(s * I T^T, arange) + CE(s * T I^T, arange)) / 2`` with ``s = logit_scale``.

    ``logit_scale`` is the already-exponentiated scale (open_clip convention). Inputs are
    expected L2-normalised. With ``gather=True`` under an initialised process group the
    embeddings of all ranks are gathered *with gradients*, so each rank's rows see the
    negatives of the whole global batch; the mean over ranks then equals the single-process
    loss on the global batch (tested in tests/train/test_ddp.py).

    Soft targets (off by default): with ``target_temperature`` set and the frozen text features
    of the batch passed as ``target_features``, the one-hot targets become
    ``softmax(cos(f_i, f_j) / target_temperature)`` over the batch's reports, as MedCLIP's
    semantic matching loss does with label similarity. Reports that say nearly the same thing
    ("Acute haemorrhage." / "Acute hemorrhage.") then stop being negatives of each other. As the
    temperature goes to 0 with distinct reports this is the plain loss; exactly identical reports
    give the plain loss at any temperature (their logits are identical).

    Label targets (off by default): with ``label_weight`` w > 0 and the batch's class labels passed
    as ``labels`` (B,) int, -1 = unknown, each row's targets become ``(1 - w) * own report + w *
    every report of the same class, shared equally`` (UniCL, Yang et al. 2022; MedCLIP's semantic
    matching with report-derived labels). Studies of one class then stop being negatives of each
    other, which the few-per-batch classes of a small cohort need: a report of small vessel
    disease is no longer pushed away from another study's white-matter lesions. A row with an
    unknown label keeps its own targets.

    Label similarity (off by default; with label targets and ``target_features``): the class share
    that goes to the *other* reports of a row's class is split by report similarity,
    ``softmax(cos(f_i, f_j) / label_similarity)`` over them, instead of equally; the row's own
    report keeps its equal share, so the total that goes to other reports is unchanged. For a
    grab-bag class ("others": atrophy, small vessel disease, demyelination, sinus disease) a study
    is then pulled mostly to reports of its own kind, not to the class's mean.
    """

    def __init__(self, gather: bool = True, target_temperature: float | None = None,
                 label_weight: float = 0.0, label_similarity: float | None = None) -> None:
        super().__init__()
        if target_temperature is not None and target_temperature <= 0:
            raise ValueError(f"target_temperature must be > 0 (or None for one-hot targets), got {target_temperature}")
        if not 0.0 <= label_weight <= 1.0:
            raise ValueError(f"label_weight must be in [0, 1], got {label_weight}")
        if label_similarity is not None and label_similarity <= 0:
            raise ValueError(f"label_similarity must be > 0 (or None for an equal share), got {label_similarity}")
        if label_similarity is not None and label_weight == 0:
            raise ValueError("label_similarity splits the class-label targets: it needs label_weight > 0 "
                             "(recipe.label_targets)")
        self.gather = gather
        self.target_temperature = target_temperature
        self.label_weight = float(label_weight)
        self.label_similarity = label_similarity

    def forward(self, image_embed: torch.Tensor, text_embed: torch.Tensor,
                logit_scale: torch.Tensor | float,
                target_features: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
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
        targets = torch.arange(b, device=image_embed.device) + offset  # (B,)
        cos = None  # (B, world * B) cosine of the frozen report features, for the soft and similarity targets
        if self.target_temperature is not None or self.label_similarity is not None:
            option = "target_temperature" if self.target_temperature is not None else "label_similarity"
            if target_features is None or target_features.shape[0] != b:
                raise ValueError(f"ClipLoss with {option} needs target_features (B, Dt) for the batch")
            f = F.normalize(target_features.detach().float(), dim=-1)  # (B, Dt)
            all_f = gather_no_grad(f) if self.gather and world > 1 else f  # (world * B, Dt)
            cos = f @ all_f.T  # rows = this rank's reports, columns = all reports
        if self.target_temperature is not None:
            # the matrix is symmetric, so the same targets serve both directions
            targets = F.softmax(cos / self.target_temperature, dim=-1).to(logits_per_image.dtype)  # (B, world * B)
        if self.label_weight > 0:
            if labels is None or labels.shape[0] != b:
                raise ValueError("ClipLoss with label_weight needs the batch's class labels (B,)")
            y = labels.to(image_embed.device).long()  # (B,)
            all_y = gather_no_grad(y) if self.gather and world > 1 else y  # (world * B,)
            sim = cos / self.label_similarity if self.label_similarity is not None else None  # (B, world * B)
            targets = self._with_label_targets(targets, y, all_y, logits_per_image.dtype, sim, offset)
        loss = (F.cross_entropy(logits_per_image, targets) + F.cross_entropy(logits_per_text, targets)) / 2
        return {"contrastive_loss": loss}

    def _with_label_targets(self, base: torch.Tensor, y: torch.Tensor, all_y: torch.Tensor,
                            dtype: torch.dtype, sim: torch.Tensor | None = None, offset: int = 0) -> torch.Tensor:
        """Mix ``base`` targets (indices (B,) or rows (B, world * B)) with the rows of this rank's labels
        ``y`` (B,) over all ranks' ``all_y`` (world * B,); label equality is symmetric, so the same rows
        serve as targets in both directions. ``sim`` (B, world * B): report similarity / temperature, for
        ``label_similarity``; each row is then a distribution over the columns, used for both directions as
        the soft report targets are. This rank's rows sit at columns ``offset + arange(B)``."""
        n_all = all_y.shape[0]
        if base.dim() == 1:  # indices -> one-hot rows
            base = F.one_hot(base, n_all).to(dtype)  # (B, world * B)
        is_same = y[:, None] == all_y[None, :]  # (B, world * B)
        n = is_same.sum(1, keepdim=True).to(dtype)  # (B, 1): >= 1, a row always matches itself
        if sim is None:
            same = is_same.to(dtype) / n  # rows sum to 1
        else:
            own = F.one_hot(torch.arange(y.shape[0], device=y.device) + offset, n_all).bool()  # (B, world * B)
            others = is_same & ~own
            # a row without another report of its class gets a uniform row here, times (n - 1) / n = 0
            w = torch.softmax(sim.float().masked_fill(~others, torch.finfo(torch.float32).min), dim=1).to(dtype)
            same = own.to(dtype) / n + w * (n - 1) / n  # own keeps 1 / n; the others share (n - 1) / n
        w = self.label_weight * (y >= 0).to(dtype)[:, None]  # (B, 1): an unknown label keeps its own targets
        return (1 - w) * base + w * same
