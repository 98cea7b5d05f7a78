"""Gene-expression encoders: GroupMSA (GiMP, MICCAI 2023) and the SNN baseline (Klambauer 2017).

Both take an expression vector (B, G) and return dict(cls=(B, dim), ...). ``build_gene_encoder``
builds one by name, ``GeneClassifier`` adds a linear head for supervised gene-only pretraining,
``save_gene_encoder`` / ``load_gene_encoder`` keep the (then frozen) weights as safetensors.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medalign.errors import CohortError
from medalign.registry import Registry

GENE_ENCODERS: Registry[nn.Module] = Registry("gene encoder")


class _Block(nn.Module):
    """Pre-norm transformer block (MSA + MLP) with exact attention (sequences here are short)."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


@GENE_ENCODERS.register("groupmsa")
class GroupMSA(nn.Module):
    """Group multi-head self-attention gene encoder.

    The (B, G) vector is zero-padded to ``n_fragments * frag`` genes and split into N_f
    contiguous fragments (order genes by signature group first to make fragments and groups
    biological). Each fragment is linearly embedded to ``dim``; fragments are split into
    N_gr groups, each prefixed by its own learnable group token and passed through an
    intra-group MSA block; the N_gr group tokens plus a CLS token then pass an inter-group
    MSA block. Returns dict(cls (B, dim), groups (B, N_gr, dim)).
    """

    def __init__(self, n_genes: int, *, n_fragments: int = 64, n_groups: int = 8, dim: int = 64,
                 heads: int = 4, intra_layers: int = 1, inter_layers: int = 1, dropout: float = 0.1,
                 embed: str = "per_fragment") -> None:
        super().__init__()
        if n_fragments % n_groups:
            raise ValueError(f"n_fragments {n_fragments} must be divisible by n_groups {n_groups}")
        if n_genes < n_fragments:
            raise ValueError(f"n_genes {n_genes} is smaller than n_fragments {n_fragments}")
        self.n_genes, self.n_fragments, self.n_groups, self.dim = n_genes, n_fragments, n_groups, dim
        self.frag = math.ceil(n_genes / n_fragments)
        if embed not in ("per_fragment", "shared"):
            raise ValueError(f"embed must be 'per_fragment' or 'shared', got {embed!r}")
        # Genes are not translation-invariant like pixels: gene k of fragment 3 and gene k of
        # fragment 7 are unrelated, so by default every fragment has its own projection
        # ("shared" = one ViT-style patch projection for all fragments; the paper does not say).
        self.embed_kind = embed
        if embed == "per_fragment":
            self.embed_w = nn.Parameter(torch.randn(n_fragments, self.frag, dim) / math.sqrt(self.frag))
            self.embed_b = nn.Parameter(torch.zeros(dim))
        else:
            self.embed = nn.Linear(self.frag, dim)
        self.pos = nn.Parameter(torch.randn(n_fragments, dim) * 0.02)
        self.group_tokens = nn.Parameter(torch.randn(n_groups, dim) * 0.02)
        self.cls_token = nn.Parameter(torch.randn(dim) * 0.02)
        self.intra = nn.Sequential(*[_Block(dim, heads, dropout) for _ in range(intra_layers)])
        self.inter = nn.Sequential(*[_Block(dim, heads, dropout) for _ in range(inter_layers)])
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        if x.ndim != 2 or x.shape[1] != self.n_genes:
            raise ValueError(f"expression must be (B, {self.n_genes}), got {tuple(x.shape)}")
        b = x.shape[0]
        nf, ng, d = self.n_fragments, self.n_groups, self.dim
        x = F.pad(x, (0, nf * self.frag - self.n_genes))  # (B, N_f*frag)
        frags = x.view(b, nf, self.frag)  # (B, N_f, frag)
        if self.embed_kind == "per_fragment":
            h = torch.einsum("bfg,fgd->bfd", frags, self.embed_w) + self.embed_b + self.pos  # (B, N_f, d)
        else:
            h = self.embed(frags) + self.pos  # (B, N_f, d)
        h = h.reshape(b * ng, nf // ng, d)  # (B*N_gr, N_f/N_gr, d)
        gt = self.group_tokens[None].expand(b, ng, d).reshape(b * ng, 1, d)  # (B*N_gr, 1, d)
        h = self.intra(torch.cat([gt, h], dim=1))  # (B*N_gr, 1+N_f/N_gr, d)
        groups = h[:, 0].view(b, ng, d)  # (B, N_gr, d)
        cls = self.cls_token.expand(b, 1, d)  # (B, 1, d)
        g = self.norm(self.inter(torch.cat([cls, groups], dim=1)))  # (B, 1+N_gr, d)
        return {"cls": g[:, 0], "groups": g[:, 1:]}


@GENE_ENCODERS.register("snn")
class SNN(nn.Module):
    """Self-normalising network: Linear -> SELU -> AlphaDropout blocks, LeCun-normal init.

    The genomic encoder of Pathomic Fusion / PORPOISE. Returns dict(cls (B, dim)).
    """

    def __init__(self, n_genes: int, *, hidden: tuple[int, ...] = (256,), dim: int = 64,
                 dropout: float = 0.25) -> None:
        super().__init__()
        self.n_genes, self.dim = n_genes, dim
        sizes = [n_genes, *hidden, dim]
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), nn.SELU(), nn.AlphaDropout(dropout)]
        self.net = nn.Sequential(*layers)
        for mod in self.net:
            if isinstance(mod, nn.Linear):  # LeCun normal keeps SELU activations self-normalising
                nn.init.normal_(mod.weight, 0.0, 1.0 / math.sqrt(mod.in_features))
                nn.init.zeros_(mod.bias)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        if x.ndim != 2 or x.shape[1] != self.n_genes:
            raise ValueError(f"expression must be (B, {self.n_genes}), got {tuple(x.shape)}")
        return {"cls": self.net(x)}


class GeneClassifier(nn.Module):
    """Gene encoder + linear head, for supervised gene-only pretraining and evaluation."""

    def __init__(self, encoder: nn.Module, n_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.dim, n_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(x)["cls"])  # (B, n_classes)


def build_gene_encoder(name: str, n_genes: int, **kwargs: Any) -> nn.Module:
    """Build a gene encoder; ``kwargs`` may be flat or keyed by encoder name ({"groupmsa": {...}, "snn": {...}})."""
    if any(k in GENE_ENCODERS for k in kwargs):
        kwargs = dict(kwargs.get(name) or {})
    return GENE_ENCODERS.build(name, n_genes=n_genes, **kwargs)


def save_gene_encoder(encoder: nn.Module, path: str | Path) -> Path:
    """Save a (pretrained) gene encoder's weights as safetensors, atomically."""
    from safetensors.torch import save_file

    from medalign.utils import atomic_path

    path = Path(path)
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file({k: v.detach().contiguous() for k, v in encoder.state_dict().items()}, str(tmp))
    return path


def load_gene_encoder(encoder: nn.Module, path: str | Path) -> nn.Module:
    """Load weights saved by save_gene_encoder; a mismatch names the file."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.exists():
        raise CohortError("gene encoder checkpoint not found", path=str(path))
    try:
        encoder.load_state_dict(load_file(str(path)))
    except RuntimeError as e:
        raise CohortError(f"gene encoder checkpoint does not match the encoder: {e}", path=str(path)) from e
    return encoder
