"""Multiple-instance aggregators for bags of patch embeddings (whole-slide images).

* ``nystrom_attention`` / ``exact_attention``: functional attention cores. Nystrom
  (Xiong et al., AAAI 2021) approximates softmax(QK^T)V with m landmarks (segment means of
  Q and K), so memory is O(N m) instead of O(N^2): a 100k-patch bag never builds an N x N matrix.
* ``NystromAggregator``: GiMP's patch aggregator: linear embed -> [CLS_img; patches] ->
  2 pre-norm Nystrom self-attention layers -> CLS_img (and the patch tokens, for MPM).
* ``TransMILAggregator``: the same plus TransMIL's PPEG convolutional position encoding.
* ``ABMIL``: gated attention pooling (Ilse et al., 2018), the classic baseline.
* ``PatchDecoder``: the light MPM reconstruction decoder.

All aggregators return dicts: ``cls`` (B, d) and, where they exist, ``tokens`` (B, N, d).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medalign.registry import Registry

AGGREGATORS: Registry[nn.Module] = Registry("aggregator")


def exact_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
    """softmax(q k^T) v with q already scaled. q, k, v: (B, h, N, dh); mask (B, N) True = keep."""
    sim = q @ k.transpose(-1, -2)  # (B, h, N, N)
    if mask is not None:
        sim = sim.masked_fill(~mask[:, None, None, :], torch.finfo(sim.dtype).min)
    return sim.softmax(dim=-1) @ v  # (B, h, N, dh)


def moore_penrose_pinv(x: Tensor, iters: int = 6) -> Tensor:
    """Iterative Moore-Penrose pseudo-inverse (Razavi et al. 2014), as in the Nystromformer paper.

    x: (..., m, m). Converges fast because x is a row-stochastic softmax matrix.
    """
    abs_x = x.abs()
    col = abs_x.sum(dim=-1)
    row = abs_x.sum(dim=-2)
    z = x.transpose(-1, -2) / (col.amax(dim=-1) * row.amax(dim=-1))[..., None, None]  # (..., m, m)
    eye = torch.eye(x.shape[-1], device=x.device, dtype=x.dtype)
    for _ in range(iters):
        xz = x @ z
        z = 0.25 * z @ (13 * eye - xz @ (15 * eye - xz @ (7 * eye - xz)))
    return z


def _segment_means(t: Tensor, m: int, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """Means of m contiguous segments along dim -2, ignoring padding/masked positions.

    t: (B, h, N, dh); returns landmarks (B, h, m, dh) and a landmark-valid mask (B, m).
    """
    b, h, n, dh = t.shape
    seg = math.ceil(n / m)
    pad = seg * m - n
    keep = torch.ones(b, n, dtype=t.dtype, device=t.device) if mask is None else mask.to(t.dtype)
    t = t * keep[:, None, :, None]
    # pad at the end with zeros that carry zero weight, so every segment mean is exact
    t = F.pad(t, (0, 0, 0, pad))  # (B, h, m*seg, dh)
    keep = F.pad(keep, (0, pad))  # (B, m*seg)
    sums = t.view(b, h, m, seg, dh).sum(dim=3)  # (B, h, m, dh)
    counts = keep.view(b, m, seg).sum(dim=2)  # (B, m)
    return sums / counts.clamp_min(1.0)[:, None, :, None], counts > 0


def nystrom_attention(q: Tensor, k: Tensor, v: Tensor, *, num_landmarks: int = 256,
                      pinv_iterations: int = 6, mask: Tensor | None = None,
                      exact_pinv: bool = False) -> Tensor:
    """Nystrom approximation of softmax(q k^T) v (q already scaled).

    q, k, v: (B, h, N, dh); mask (B, N) True = real token. Landmarks are means of
    ``num_landmarks`` contiguous segments. Memory is O(N m); when N <= m every landmark is a
    single token and the result equals exact attention (up to the pseudo-inverse).
    """
    n = q.shape[-2]
    m = min(num_landmarks, n)
    q_l, lm_valid = _segment_means(q, m, mask)  # (B, h, m, dh)
    k_l, _ = _segment_means(k, m, mask)  # (B, h, m, dh)
    neg = torch.finfo(q.dtype).min
    sim1 = q @ k_l.transpose(-1, -2)  # (B, h, N, m)
    sim2 = q_l @ k_l.transpose(-1, -2)  # (B, h, m, m)
    sim3 = q_l @ k.transpose(-1, -2)  # (B, h, m, N)
    if mask is not None:
        sim1 = sim1.masked_fill(~lm_valid[:, None, None, :], neg)
        sim2 = sim2.masked_fill(~lm_valid[:, None, None, :], neg)
        sim3 = sim3.masked_fill(~mask[:, None, None, :], neg)
    a1, a2, a3 = sim1.softmax(-1), sim2.softmax(-1), sim3.softmax(-1)
    if mask is not None:  # empty landmark rows must not enter the pseudo-inverse
        a2 = a2 * lm_valid[:, None, :, None]
    a2_inv = torch.linalg.pinv(a2) if exact_pinv else moore_penrose_pinv(a2, pinv_iterations)
    # associate right-to-left so nothing N x N is ever formed
    return a1 @ (a2_inv @ (a3 @ v))  # (B, h, N, dh)


class MultiHeadAttention(nn.Module):
    """Self-attention with a choice of core: ``"nystrom"`` (default) or ``"exact"``."""

    def __init__(self, dim: int, *, heads: int = 4, kind: str = "nystrom", num_landmarks: int = 256,
                 pinv_iterations: int = 6, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        if kind not in ("nystrom", "exact"):
            raise ValueError(f"attention kind must be 'nystrom' or 'exact', got {kind!r}")
        self.heads, self.kind = heads, kind
        self.num_landmarks, self.pinv_iterations = num_landmarks, pinv_iterations
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.heads, d // self.heads)  # (B, N, 3, h, dh)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, h, N, dh)
        q = q * (d // self.heads) ** -0.5
        if self.kind == "exact" or n <= self.num_landmarks:
            o = exact_attention(q, k, v, mask)  # short sequences: exact is cheaper and identical
        else:
            o = nystrom_attention(q, k, v, num_landmarks=self.num_landmarks,
                                  pinv_iterations=self.pinv_iterations, mask=mask)
        o = o.transpose(1, 2).reshape(b, n, d)  # (B, N, d)
        return self.drop(self.out(o))


class TransLayer(nn.Module):
    """Pre-norm residual attention layer (TransMIL's layer: x + attn(norm(x)))."""

    def __init__(self, dim: int, **attn_kwargs) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = MultiHeadAttention(dim, **attn_kwargs)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return x + self.attn(self.norm(x), mask)


class _BagEmbed(nn.Module):
    """Linear embedding of patch features plus an optional learnable [MASK] substitution."""

    def __init__(self, in_dim: int, dim: int, dropout: float) -> None:
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(in_dim, dim), nn.GELU(), nn.Dropout(dropout))
        self.mask_token = nn.Parameter(torch.zeros(dim))
        self.cls_token = nn.Parameter(torch.randn(dim) * 0.02)

    def forward(self, bag: Tensor, patch_mask: Tensor | None) -> Tensor:
        h = self.fc(bag)  # (B, N, d)
        if patch_mask is not None:  # MPM: masked patches only show the learnable mask token
            h = torch.where(patch_mask[..., None], self.mask_token.to(h.dtype), h)
        cls = self.cls_token.expand(h.shape[0], 1, -1)  # (B, 1, d)
        return torch.cat([cls, h], dim=1)  # (B, 1+N, d)


def _check_bag(bag: Tensor, in_dim: int) -> None:
    if bag.ndim != 3 or bag.shape[-1] != in_dim:
        raise ValueError(f"bag must be (B, N, {in_dim}), got {tuple(bag.shape)}")


def _with_cls_mask(mask: Tensor | None) -> Tensor | None:
    if mask is None:
        return None
    return F.pad(mask, (1, 0), value=True)  # (B, 1+N): CLS is always real


@AGGREGATORS.register("nystrom")
class NystromAggregator(nn.Module):
    """GiMP patch aggregator: [CLS_img; embed(patches)] -> ``num_layers`` attention layers.

    forward(bag (B, N, in_dim), mask (B, N) bool True = real patch, patch_mask (B, N) bool
    True = hidden for MPM) -> dict(cls (B, dim), tokens (B, N, dim)).
    """

    def __init__(self, in_dim: int = 1024, dim: int = 256, *, heads: int = 4, num_layers: int = 2,
                 num_landmarks: int = 256, pinv_iterations: int = 6, attention: str = "nystrom",
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.in_dim, self.dim = in_dim, dim
        self.embed = _BagEmbed(in_dim, dim, dropout)
        self.layers = nn.ModuleList(
            TransLayer(dim, heads=heads, kind=attention, num_landmarks=num_landmarks,
                       pinv_iterations=pinv_iterations, dropout=dropout) for _ in range(num_layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, bag: Tensor, mask: Tensor | None = None,
                patch_mask: Tensor | None = None) -> dict[str, Tensor]:
        _check_bag(bag, self.in_dim)
        x = self.embed(bag, patch_mask)  # (B, 1+N, d)
        m = _with_cls_mask(mask)
        for layer in self.layers:
            x = layer(x, m)
        x = self.norm(x)
        return {"cls": x[:, 0], "tokens": x[:, 1:]}


class PPEG(nn.Module):
    """TransMIL's pyramid position encoding: depth-wise 7/5/3 convs on the square-reshaped bag."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(dim, dim, k, padding=k // 2, groups=dim) for k in (7, 5, 3))

    def forward(self, tokens: Tensor) -> Tensor:
        b, n, d = tokens.shape
        side = math.ceil(math.sqrt(n))
        # wrap the first patches round to fill the square, as TransMIL does
        padded = torch.cat([tokens, tokens[:, : side * side - n]], dim=1) if side * side > n else tokens
        while padded.shape[1] < side * side:  # tiny bags: repeat until full
            padded = torch.cat([padded, tokens], dim=1)[:, : side * side]
        grid = padded.transpose(1, 2).reshape(b, d, side, side)  # (B, d, S, S)
        grid = grid + sum(conv(grid) for conv in self.convs)
        return grid.flatten(2).transpose(1, 2)[:, :n]  # (B, N, d)


@AGGREGATORS.register("transmil")
class TransMILAggregator(NystromAggregator):
    """TransMIL-style: Nystrom layer -> PPEG -> Nystrom layer (position-aware variant)."""

    def __init__(self, in_dim: int = 1024, dim: int = 256, **kwargs) -> None:
        super().__init__(in_dim, dim, **kwargs)
        self.ppeg = PPEG(dim)

    def forward(self, bag: Tensor, mask: Tensor | None = None,
                patch_mask: Tensor | None = None) -> dict[str, Tensor]:
        _check_bag(bag, self.in_dim)
        x = self.embed(bag, patch_mask)  # (B, 1+N, d)
        m = _with_cls_mask(mask)
        for i, layer in enumerate(self.layers):
            x = layer(x, m)
            if i == 0:
                x = torch.cat([x[:, :1], self.ppeg(x[:, 1:])], dim=1)  # (B, 1+N, d)
        x = self.norm(x)
        return {"cls": x[:, 0], "tokens": x[:, 1:]}


@AGGREGATORS.register("abmil")
class ABMIL(nn.Module):
    """Gated attention MIL pooling (Ilse et al. 2018). forward -> dict(cls (B, d), attention (B, N))."""

    def __init__(self, in_dim: int = 1024, dim: int = 256, *, attn_dim: int = 128, dropout: float = 0.0,
                 **_ignored) -> None:
        super().__init__()
        self.in_dim, self.dim = in_dim, dim
        self.fc = nn.Sequential(nn.Linear(in_dim, dim), nn.GELU(), nn.Dropout(dropout))
        self.att_v = nn.Linear(dim, attn_dim)
        self.att_u = nn.Linear(dim, attn_dim)
        self.att_w = nn.Linear(attn_dim, 1)

    def forward(self, bag: Tensor, mask: Tensor | None = None,
                patch_mask: Tensor | None = None) -> dict[str, Tensor]:
        _check_bag(bag, self.in_dim)
        h = self.fc(bag)  # (B, N, d)
        logits = self.att_w(torch.tanh(self.att_v(h)) * torch.sigmoid(self.att_u(h))).squeeze(-1)  # (B, N)
        if mask is not None:
            logits = logits.masked_fill(~mask, torch.finfo(logits.dtype).min)
        a = logits.softmax(dim=-1)  # (B, N)
        return {"cls": torch.einsum("bn,bnd->bd", a, h), "attention": a, "tokens": h}  # (B, d)


class PatchDecoder(nn.Module):
    """Light MPM decoder: token (B, L, dim) -> reconstructed patch embedding (B, L, out_dim)."""

    def __init__(self, dim: int, out_dim: int = 1024, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or dim
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))

    def forward(self, tokens: Tensor) -> Tensor:
        return self.net(tokens)
