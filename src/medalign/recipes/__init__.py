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

import importlib
import inspect
from typing import Any

import torch
from torch import nn

from medalign.registry import Registry

RECIPES: Registry["Recipe"] = Registry("recipe")

# Modules that define recipes; imported by build_recipe so the registry is filled explicitly.
RECIPE_MODULES: dict[str, str] = {
    "clip": "medalign.recipes.clip",
    "gloria": "medalign.recipes.gloria",
    "micle": "medalign.recipes.micle",
    "hlss": "medalign.recipes.hlss",
    "gimp": "medalign.recipes.gimp",
}


class Recipe(nn.Module):
    """Base class; see the module docstring for the contract with the loop."""

    def training_step(self, batch: dict) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    @torch.no_grad()
    def validation_step(self, batch: dict) -> dict[str, Any]:
        return self.training_step(batch)

    def validation_end(self, outputs: list[dict[str, Any]]) -> dict[str, float]:
        """Split-level metrics from the validation_step outputs (default: none beyond mean losses)."""
        return {}

    def encode_image(self, image: torch.Tensor, sequence_mask: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no image encoder")

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no text encoder")

    def build_dataset(self, data_cfg: dict, split: str | None, *, train: bool):
        """Dataset for one split. Default: CohortDataset(manifest, cache_dir) (+ augment when training).

        ``data_cfg["kind"] == "synthetic"`` gives a tiny in-memory paired set (tests, benchmarks).
        """
        kind = data_cfg.get("kind", "cohort")
        if kind == "synthetic":
            from medalign.train.loop import SyntheticPairs

            return SyntheticPairs(split=split or "all", **(data_cfg.get("synthetic") or {}))
        if kind != "cohort":
            raise ValueError(f"unknown data.kind '{kind}' (known: cohort, synthetic)")
        from medalign.data.datasets import CohortDataset

        augment = None
        if train and data_cfg.get("augment"):
            from medalign.data.augment import build_augment

            augment = build_augment(data_cfg["augment"], seed=data_cfg.get("augment_seed"))
        return CohortDataset(data_cfg["manifest"], data_cfg["cache_dir"], split=split, augment=augment)

    def prepare(self, datasets: list) -> None:
        """Called once before training with the train/val datasets (e.g. to pre-fill caches)."""

    @staticmethod
    def collate(samples: list[dict]) -> dict:
        return default_collate(samples)


def default_collate(samples: list[dict]) -> dict:
    """Stack tensors/numbers present in every sample; everything else becomes a list."""
    try:  # the data layer's collate, when present, is the reference
        from medalign.data.datasets import collate

        return collate(samples)
    except ImportError:
        pass
    out: dict[str, Any] = {}
    keys = [k for k in samples[0] if all(k in s for s in samples)]
    for k in keys:
        vals = [s[k] for s in samples]
        if isinstance(vals[0], torch.Tensor) and all(v.shape == vals[0].shape for v in vals):
            out[k] = torch.stack(vals)  # (B, ...)
        elif isinstance(vals[0], (int, float, bool)) and not isinstance(vals[0], str):
            out[k] = torch.tensor(vals)
        else:
            out[k] = vals
    return out


def build_recipe(cfg: dict) -> Recipe:
    """Build ``cfg["recipe"]["name"]`` with the other ``recipe`` keys as keyword arguments.

    ``sequences`` and ``input_shape`` come from the ``data`` section (``data.sequences``,
    ``data.shape``) when the recipe accepts them, so the image side always matches the data.
    """
    rcfg = dict(cfg.get("recipe") or {})
    name = rcfg.pop("name", None)
    if not name:
        raise ValueError("config has no recipe.name")
    if name not in RECIPES and name in RECIPE_MODULES:
        importlib.import_module(RECIPE_MODULES[name])
    factory = RECIPES.get(name)
    params = inspect.signature(factory).parameters
    data = cfg.get("data") or {}
    if "sequences" in params and "sequences" not in rcfg and data.get("sequences"):
        rcfg["sequences"] = tuple(data["sequences"])
    if "input_shape" in params and "input_shape" not in rcfg and data.get("shape"):
        rcfg["input_shape"] = tuple(data["shape"])
    return RECIPES.build(name, **rcfg)


__all__ = ["RECIPES", "Recipe", "build_recipe", "default_collate"]
