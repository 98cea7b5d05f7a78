"""Exponential moving average of a module's weights (validated and checkpointed instead of the live ones)."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from medalign.errors import MedAlignError


class WeightEMA:
    """Exponential moving average of a module's state: weights and float buffers (BatchNorm stats).

    ``shadow = d * shadow + (1 - d) * current`` after every optimiser step, with the decay warmed up
    as ``d_t = min(decay, (1 + t) / (10 + t))`` so the average does not remember the random
    initialisation for long (timm's ModelEmaV2 does the same). Integer buffers are copied.
    Why: with ~200 training studies the weights at any single step are noisy; the validation
    metric that picks the best checkpoint then picks a lucky step. The average is smoother.
    """

    def __init__(self, module: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise MedAlignError(f"train.ema_decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items()}

    @torch.no_grad()
    def update(self, module: nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for k, v in module.state_dict().items():
            s = self.shadow[k]
            if s.is_floating_point():
                s.lerp_(v.detach().to(s.dtype), 1.0 - d)  # s = d * s + (1 - d) * v
            else:
                s.copy_(v)

    @contextmanager
    def applied(self, module: nn.Module) -> Iterator[None]:
        """Swap the averaged weights in for the ``with`` block, then put the live ones back."""
        live = {k: v.detach().clone() for k, v in module.state_dict().items()}
        module.load_state_dict(self.shadow)
        try:
            yield
        finally:
            module.load_state_dict(live)
