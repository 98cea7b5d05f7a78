"""NT-Xent (SimCLR / MICLe): normalised-temperature cross-entropy over 2N views.

For N positive pairs (z1[i], z2[i]) the 2N embeddings are L2-normalised and every one is an
anchor: its positive is its partner, its negatives are the other 2N - 2 views
(Chen et al., 2020). With ``groups`` (e.g. patient ids), views of *other* pairs from the same
group are removed from the denominator: in MICLe two pairs of one patient are not negatives
of each other (they would be false negatives).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medalign.dist import gather_no_grad
from medalign.dist import gather_with_grad as _gather


def _gather_ids(ids: torch.Tensor, *, local: bool) -> torch.Tensor:
    """All-gather integer ids (no gradient). ``local``: the ids only mean something within one
    rank's batch (dense patient / study indices), so they are offset by ``rank << 32`` first and
    equal ids of different ranks stay apart; otherwise (class labels) they are gathered as is."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return ids
    ids = ids.long() + ((int(dist.get_rank()) << 32) if local else 0)
    return gather_no_grad(ids)


class NTXentLoss(nn.Module):
    """``forward(z1, z2, groups=None) -> {"contrastive_loss": scalar}``.

    Args:
        temperature: softmax temperature tau (SimCLR uses ~0.1).
        gather: all-gather embeddings across DDP ranks so negatives come from the global batch.

    ``groups`` are batch-local ids (e.g. dense patient indices of this rank's batch).
    """

    def __init__(self, temperature: float = 0.1, gather: bool = True) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.gather = gather

    def forward(self, z1: torch.Tensor, z2: torch.Tensor,
                groups: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if z1.ndim != 2 or z2.ndim != 2 or z1.shape != z2.shape:
            raise ValueError(f"NT-Xent needs two (N, D) tensors of equal shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
        if z1.shape[0] < 1:
            raise ValueError("NT-Xent needs at least one pair")
        if groups is not None and (groups.ndim != 1 or groups.shape[0] != z1.shape[0]):
            raise ValueError(f"groups must be (N,) = ({z1.shape[0]},), got {tuple(groups.shape)}")
        if self.gather:
            z1, z2 = _gather(z1), _gather(z2)
            groups = _gather_ids(groups, local=True) if groups is not None else None
        n = z1.shape[0]
        z = F.normalize(torch.cat([z1, z2], dim=0), dim=-1)  # (2N, D)
        logits = z @ z.t() / self.temperature  # (2N, 2N)
        idx = torch.arange(2 * n, device=z.device)
        target = (idx + n) % (2 * n)  # partner of view i is i +/- N
        exclude = torch.eye(2 * n, dtype=torch.bool, device=z.device)  # self-similarity
        if groups is not None:
            g = torch.cat([groups, groups]).to(z.device)  # (2N,)
            same = g[:, None] == g[None, :]  # (2N, 2N)
            same[idx, target] = False  # keep the positive itself
            exclude = exclude | same
        logits = logits.masked_fill(exclude, float("-inf"))
        return {"contrastive_loss": F.cross_entropy(logits, target)}
