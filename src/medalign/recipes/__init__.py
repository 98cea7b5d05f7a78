"""Recipes: one method each = encoders + loss + batch logic, as an ``nn.Module``.

The training loop only knows this interface:

- ``training_step(batch) -> dict[str, Tensor]``: the loop back-propagates the sum of the keys
  ending in ``_loss``; other scalar keys (``logit_scale`` ...) are logged.
- ``validation_step(batch) -> dict``: same under ``torch.no_grad()``; may also return
  per-sample tensors (``image_embed`` ...) that ``validation_end`` turns into split-level metrics.
- ``encode_image(image, sequence_mask) -> (B, E)``, ``encode_text(texts) -> (B, E)``: normalised
  embeddings used by ``medalign.load`` / ``embed`` / ``search``.
- ``build_dataset(data_cfg, split, train=...)`` and ``collate``: what the loop feeds it;
  the default is the cohort dataset (medalign.data.datasets.CohortDataset).

Recipes register with ``@RECIPES.register("name")``; ``build_recipe(cfg)`` builds from a
resolved config (``cfg["recipe"]["name"]`` + keyword arguments).
"""
from __future__ import annotations

from typing import Any

# Modules that define recipes; imported by build_recipe so the registry is filled explicitly.
RECIPE_MODULES: dict[str, str] = {
    "clip": "medalign.recipes.clip",
    "gloria": "medalign.recipes.gloria",
    "micle": "medalign.recipes.micle",
    "hlss": "medalign.recipes.hlss",
    "gimp": "medalign.recipes.gimp",
    "simclr": "medalign.recipes.simclr",
    "supervised": "medalign.recipes.supervised",
}

_BASE_NAMES = ("RECIPES", "Recipe", "build_recipe", "default_collate")


def __getattr__(name: str) -> Any:
    # torch loads only when a recipe is actually needed, so `medalign --help` (whose command
    # modules live in this package) stays instant.
    if name in _BASE_NAMES:
        from medalign.recipes import base

        return getattr(base, name)
    raise AttributeError(f"module 'medalign.recipes' has no attribute '{name}'")


__all__ = ["RECIPE_MODULES", *_BASE_NAMES]
