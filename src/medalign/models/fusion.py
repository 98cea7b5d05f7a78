"""Study-level image encoder: one shared encoder per series, pooled over the series a study has.

Early fusion (the paper, :class:`~medalign.models.image3d.UNetEncoder` with ``in_channels = S``)
stacks co-registered sequences as channels: one pass, cheap, but the network is tied to a fixed
channel list and a missing sequence is a channel of zeros it may never have seen.
:class:`SeriesFusionEncoder` (``fusion: late_mean | attention`` in the image-encoder spec) instead
encodes every *present* series on its own with one shared single-channel encoder, adds a learned
sequence-type embedding to each series token, and pools the tokens:

- ``late_mean``: the mean over present series (MR-RATE's late fusion);
- ``attention``: gated attention pooling (Ilse et al., 2018) with the absent series masked out,
  so the weights say which series the embedding was built from.

Trade-off: the cost grows linearly with the number of present series (only those are encoded),
and voxel-level interactions between sequences ("DWI bright *and* ADC dark at the same place")
are no longer seen by the convolutions; in exchange any subset of the known sequences embeds, a
missing series costs nothing, and the series need not be co-registered voxel-to-voxel (each is
resampled to the common grid on its own; registration is optional).
"""
from __future__ import annotations

import torch
from torch import nn

FUSIONS = ("early", "late_mean", "attention")


class SeriesFusionEncoder(nn.Module):
    """(B, S, *spatial) + sequence_mask (B, S) -> ``{"global": (B, F), "local": (B, C_l, *spatial_l),
    "series_weights": (B, S)}``.

    Args:
        encoder: a single-channel image encoder returning ``{"global": (N, F), "local": ...}`` with
            ``out_dim`` (and ``local_dim`` for GLoRIA); shared by every series.
        in_channels: S, the number of sequence types (one embedding each, in the recipe's order).
        fusion: ``"late_mean"`` or ``"attention"``.
        attn_dim: hidden size of the gated attention scorer.
    """

    def __init__(self, encoder: nn.Module, *, in_channels: int, fusion: str = "attention", attn_dim: int = 64) -> None:
        super().__init__()
        if fusion not in ("late_mean", "attention"):
            raise ValueError(f"SeriesFusionEncoder fusion must be 'late_mean' or 'attention', got '{fusion}'")
        if int(getattr(encoder, "in_channels", 1)) != 1:
            raise ValueError(f"the shared series encoder must take 1 channel, it takes {encoder.in_channels}")
        self.encoder = encoder
        self.fusion = fusion
        self.in_channels = int(in_channels)
        self.spatial_dims = int(getattr(encoder, "spatial_dims", 3))
        self.out_dim = int(encoder.out_dim)
        if hasattr(encoder, "local_dim"):
            self.local_dim = int(encoder.local_dim)
        # small init: the type embedding starts as a hint, not as the whole token
        self.type_embed = nn.Parameter(torch.randn(self.in_channels, self.out_dim) * 0.02)
        if fusion == "attention":
            self.att_v = nn.Linear(self.out_dim, attn_dim)
            self.att_u = nn.Linear(self.out_dim, attn_dim)
            self.att_w = nn.Linear(attn_dim, 1)

    def forward(self, x: torch.Tensor, sequence_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if x.dim() != self.spatial_dims + 2 or x.shape[1] != self.in_channels:
            raise ValueError(f"SeriesFusionEncoder expects (B, {self.in_channels}, *{self.spatial_dims} spatial dims), "
                             f"got {tuple(x.shape)}")
        B, S = x.shape[:2]
        mask = torch.ones(B, S, dtype=torch.bool, device=x.device) if sequence_mask is None \
            else sequence_mask.to(device=x.device, dtype=torch.bool)
        if tuple(mask.shape) != (B, S):
            raise ValueError(f"sequence_mask must be (B, S) = {(B, S)}, got {tuple(mask.shape)}")
        if not bool(mask.any(1).all()):
            raise ValueError("every study needs at least one present series (a sequence_mask row is all False)")
        bi, si = mask.nonzero(as_tuple=True)  # (N,), (N,): only present series are encoded
        out = self.encoder(x[bi, si].unsqueeze(1))  # (N, 1, *spatial) -> global (N, F), local (N, C_l, *sp_l)
        tok = out["global"] + self.type_embed[si]  # (N, F)
        tokens = tok.new_zeros(B, S, self.out_dim).index_put((bi, si), tok)  # (B, S, F); absent = 0
        if self.fusion == "attention":
            logits = self.att_w(torch.tanh(self.att_v(tokens)) * torch.sigmoid(self.att_u(tokens))).squeeze(-1)  # (B, S)
            weights = logits.masked_fill(~mask, float("-inf")).softmax(dim=1)  # (B, S)
        else:
            weights = mask.to(tok.dtype) / mask.sum(1, keepdim=True).to(tok.dtype)  # (B, S)
        g = torch.einsum("bs,bsf->bf", weights, tokens)  # (B, F)
        result = {"global": g, "series_weights": weights}
        loc = out.get("local")
        if loc is not None:
            w = weights[bi, si].to(loc.dtype).reshape(-1, *([1] * (loc.dim() - 1)))  # (N, 1, ...)
            # the study's local map: the same weighted mean over its series, voxel by voxel
            result["local"] = loc.new_zeros(B, *loc.shape[1:]).index_add(0, bi, loc * w)  # (B, C_l, *sp_l)
        return result
