"""Recipe base class, the RECIPES registry and build_recipe (see medalign.recipes)."""
from __future__ import annotations

import importlib
import inspect
from typing import Any

import torch
from torch import nn

from medalign.recipes import RECIPE_MODULES
from medalign.registry import Registry

RECIPES: Registry["Recipe"] = Registry("recipe")



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
            from medalign.data.datasets import SyntheticPairs

            return SyntheticPairs(split=split or "all", **(data_cfg.get("synthetic") or {}))
        if kind != "cohort":
            raise ValueError(f"unknown data.kind '{kind}' (known: cohort, synthetic)")
        from medalign.data.datasets import CohortDataset

        augment = None
        if train and data_cfg.get("augment"):
            from medalign.data.augment import build_augment

            augment = build_augment(data_cfg["augment"], seed=data_cfg.get("augment_seed"))
        return CohortDataset(data_cfg["manifest"], data_cfg["cache_dir"], split=split, augment=augment)

    def batch_sampler(self, dataset, *, batch_size: int, train: bool, seed: int = 0, rank: int = 0,
                      world: int = 1, drop_last: bool = True):
        """A batch sampler of the recipe's own (e.g. patient-grouped), or None for the loop's default."""
        return None

    def prepare(self, datasets: list) -> None:
        """Called once before training with the train/val datasets (e.g. to pre-fill caches)."""

    @staticmethod
    def collate(samples: list[dict]) -> dict:
        return default_collate(samples)


def default_collate(samples: list[dict]) -> dict:
    """The data layer's collate: tensors stacked, strings as lists (medalign.data.datasets.collate)."""
    from medalign.data.datasets import collate

    return collate(samples)


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
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(rcfg) - set(params))
        if unknown:
            from medalign.config import ConfigError

            raise ConfigError(f"unknown key(s) {[f'recipe.{k}' for k in unknown]} for recipe '{name}'; "
                              f"allowed: {sorted(k for k in params if k != 'self')}")
    data = cfg.get("data") or {}
    if "sequences" in params and "sequences" not in rcfg and data.get("sequences"):
        rcfg["sequences"] = tuple(data["sequences"])
    if "input_shape" in params and "input_shape" not in rcfg and data.get("shape"):
        rcfg["input_shape"] = tuple(data["shape"])
    return RECIPES.build(name, **rcfg)


__all__ = ["RECIPES", "Recipe", "build_recipe", "default_collate"]
