"""Projection heads into the shared embedding space."""
from __future__ import annotations

import torch
from torch import nn


class ProjectionHead(nn.Module):
    """Map encoder features to the shared space: ``"linear"`` (paper) or a 2-layer ``"mlp"``.

    Output is NOT normalised; the recipe L2-normalises after (so local features can reuse it).
    """

    def __init__(self, in_dim: int, out_dim: int = 256, kind: str = "linear", dropout: float = 0.0) -> None:
        super().__init__()
        if kind == "linear":
            self.net: nn.Module = nn.Linear(in_dim, out_dim)
        elif kind == "mlp":
            self.net = nn.Sequential(
                nn.Linear(in_dim, out_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(out_dim, out_dim)
            )
        else:
            raise ValueError(f"ProjectionHead kind must be 'linear' or 'mlp', got '{kind}'")
        self.in_dim, self.out_dim, self.kind = in_dim, out_dim, kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (..., out_dim)

