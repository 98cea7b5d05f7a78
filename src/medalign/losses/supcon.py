"""Supervised contrastive loss (Khosla et al., 2020), the per-level loss of HLSS.

Every embedding is an anchor; its positives are all *other* embeddings with the same label
(two views of one slab, two slabs of one study, two studies of one patient...):

    L = mean_{i with |P(i)|>0}  -1/|P(i)| * sum_{p in P(i)} log( exp(s_ip/t) / sum_{a != i} exp(s_ia/t) )

with s the cosine similarity. Anchors without any positive are left out of the mean.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medalign.losses.ntxent import _gather, _gather_ids


class SupConLoss(nn.Module):
    """``forward(features, labels) -> {"supcon_loss": scalar}``.

    ``features`` is (N, D), or (N, V, D) for V views per sample (views share the label).
    ``labels`` is an integer tensor (N,). ``gather`` all-gathers across DDP ranks; with
    ``local_labels`` the labels are ids within one rank's batch (HLSS patient/study/slab
    indices) and are kept apart across ranks, otherwise they are global (class labels).
    """

    def __init__(self, temperature: float = 0.07, gather: bool = True, name: str = "supcon",
                 local_labels: bool = False) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.gather = gather
        self.name = name
        self.local_labels = local_labels

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        if features.ndim not in (2, 3):
            raise ValueError(f"SupCon features must be (N, D) or (N, V, D), got {tuple(features.shape)}")
        if labels.ndim != 1 or labels.shape[0] != features.shape[0]:
            raise ValueError(f"SupCon labels must be (N,) = ({features.shape[0]},), got {tuple(labels.shape)}")
        if labels.dtype.is_floating_point:
            raise ValueError("SupCon labels must be integers (e.g. patient/study/slab index)")
        if features.ndim == 3:
            n, v, d = features.shape
            labels = labels.repeat_interleave(v)  # (N*V,) view-major within sample
            features = features.reshape(n * v, d)  # (N*V, D)
        if self.gather:
            features = _gather(features)
            labels = _gather_ids(labels, local=self.local_labels)
        z = F.normalize(features, dim=-1)  # (M, D)
        m = z.shape[0]
        logits = z @ z.t() / self.temperature  # (M, M)
        self_mask = torch.eye(m, dtype=torch.bool, device=z.device)
        logits = logits.masked_fill(self_mask, float("-inf"))
        log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)  # (M, M)
        pos = (labels[:, None] == labels[None, :]) & ~self_mask  # (M, M)
        n_pos = pos.sum(1)  # (M,)
        has_pos = n_pos > 0
        key = f"{self.name}_loss"
        if not bool(has_pos.any()):
            # No anchor has a positive: a zero that still carries a graph.
            return {key: features.sum() * 0.0}
        # -inf on the diagonal times 0 would be NaN: zero it first.
        pos_log_prob = torch.where(pos, log_prob, torch.zeros_like(log_prob)).sum(1)  # (M,)
        loss = -(pos_log_prob[has_pos] / n_pos[has_pos]).mean()
        return {key: loss}

