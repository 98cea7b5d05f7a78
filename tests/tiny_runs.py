"""Tiny trained GLoRIA and CLIP runs on the 12-study lesion cohort of tests/recipes/test_gloria.py
(1 epoch, 2 sequences of 4x16x16), shared by the attention-overlay tests of the service and of
``medalign attend --report``. No network: the text encoder is the packaged MiniLM.
"""
from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent / "recipes"))
from test_gloria import _tiny_cohort  # noqa: E402  (the tiny lesion cohort with masks, reused)

SEQUENCES = ["dwi", "flair"]
SHAPE = [4, 16, 16]


def run_config(name: str, manifest: Path, root: Path) -> dict:
    """The tiny training config of ``recipe: name`` (as in tests/recipes/test_gloria.py)."""
    return {"seed": 0,
            "data": {"kind": "cohort", "manifest": str(manifest), "cache_dir": str(root / "cache"),
                     "sequences": SEQUENCES, "shape": SHAPE, "val_split": None},
            "recipe": {"name": name, "embed_dim": 8, "text_encoder": {"cache_dir": str(root / "text")},
                       "image_encoder": {"name": "unet3d_cpu", "channels": [4, 8], "stem_stride": 1,
                                         "local_level": 1, "global_pool": "avg", "out_dim": 16}},
            "train": {"epochs": 1, "batch_size": 3, "optimizer": "adamw", "lr": 0.003, "scheduler": "constant",
                      "progress": False, "amp": False}}


def make_tiny_runs(root: Path, recipes: tuple[str, ...] = ("gloria", "clip")) -> dict[str, Path]:
    """Cohort + cache + one trained run per recipe under ``root``.

    Returns {"manifest", "cache", <recipe name>: run dir, ...}."""
    from medalign.data.cache import preprocess_cohort
    from medalign.train.loop import fit

    man = _tiny_cohort(root / "cohort")
    preprocess_cohort(man, {"sequences": SEQUENCES, "shape": SHAPE, "reference": "flair", "register": False},
                      root / "cache", workers=1, progress=False)
    out: dict[str, Path] = {"manifest": man, "cache": root / "cache"}
    for name in recipes:
        fit(run_config(name, man, root), root / f"run_{name}")
        out[name] = root / f"run_{name}"
    return out


def tiny_clip_recipe(**kw):
    """A 3-sequence ClipRecipe on 4x16x16 inputs with a 4-8 map encoder (for recipe unit tests)."""
    from medalign.recipes.clip import ClipRecipe

    return ClipRecipe(sequences=("dwi", "t2s", "flair"), input_shape=(4, 16, 16), embed_dim=4, gather=False,
                      image_encoder={"name": "unet3d_cpu", "channels": (4, 8), "stem_stride": (1, 2, 2),
                                     "local_level": 1, "global_pool": "avg"},
                      text_encoder={"device": "cpu"}, **kw)


class FakeText:
    """A frozen text encoder stand-in: 6-d features whose first value is the text's length; records every text."""
    dim = 6
    device = torch.device("cpu")

    def __init__(self):
        self.seen: list[str] = []

    def sentence(self, texts):
        self.seen.extend(texts)
        return torch.tensor([[float(len(t))] + [1.0] * (self.dim - 1) for t in texts])  # (B, 6)


def fake_text_clip_recipe(input_shape=(8, 16, 16), **kw):
    """(a FLAIR-only ClipRecipe reading the impression, its :class:`FakeText`): for text-side unit tests."""
    from medalign.recipes.clip import ClipRecipe

    rec = ClipRecipe(sequences=("flair",), input_shape=input_shape, text_section="impression", embed_dim=4,
                     image_encoder={"name": "unet3d_cpu", "channels": (4, 8), "stem_stride": (1, 2, 2), "local_level": 1,
                                    "global_pool": "avg"}, text_encoder={"device": "cpu"}, gather=False, **kw)
    fake = FakeText()
    rec._text[:] = [fake]
    rec.text_proj = type(rec.text_proj)(fake.dim, 4, "linear")  # sized for the fake encoder
    if rec.text_adapter is not None:  # built for the real encoder's width: rebuild at the fake's
        d = fake.dim
        rec.text_adapter = torch.nn.Sequential(torch.nn.Linear(d, d), torch.nn.GELU(), torch.nn.Linear(d, d))
        torch.nn.init.zeros_(rec.text_adapter[2].weight)
        torch.nn.init.zeros_(rec.text_adapter[2].bias)
    return rec, fake


def fit_tiny_clip(root: Path, **recipe) -> tuple[Path, list[dict]]:
    """One epoch of the tiny CLIP config with ``recipe`` overrides on a fresh tiny cohort under ``root``
    (set ``MEDALIGN_CACHE`` first); returns (run dir, metrics rows), after checking a training row has a loss."""
    import json

    from medalign.train.loop import fit

    made = make_tiny_runs(root, recipes=())
    cfg = run_config("clip", made["manifest"], root)
    cfg["recipe"].update(recipe)
    fit(cfg, root / "run")
    rows = [json.loads(line) for line in (root / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("split") == "train" and r.get("contrastive_loss", 0) > 0 for r in rows)
    return root / "run", rows


@contextmanager
def isolated_tiny_runs(root: Path) -> Iterator[dict[str, Path]]:
    """:func:`make_tiny_runs` under ``root`` with the text-feature cache (``MEDALIGN_CACHE``) there too, kept
    set while the block runs, so tests never write to the user's cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDALIGN_CACHE", str(root / "medalign_cache"))
        yield make_tiny_runs(root)


def perturb_last(run: Path, scale: float = 0.1) -> None:
    """Add seeded noise to the run's last checkpoint (floating-point tensors, metadata kept), so that a one-epoch
    tiny run's best and last checkpoints differ and a test can tell which one a command read."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    last = run / "checkpoints" / "last.safetensors"
    with safe_open(str(last), "pt") as f:
        meta = f.metadata()
    gen = torch.Generator().manual_seed(0)
    state = {k: v + scale * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v
             for k, v in load_file(str(last)).items()}
    save_file(state, str(last), metadata=meta)


def last_checkpoint_p(run: Path, files: dict[str, str], cls: str) -> float:
    """p(cls) of ``classify`` on one study by the run's last checkpoint, after checking that the best checkpoint
    gives another (:func:`perturb_last` applied): what a command told ``--checkpoint last`` must report."""
    import medalign

    last = medalign.load(run, checkpoint="last").classify([files])[0]["probabilities"][cls]
    best = medalign.load(run).classify([files])[0]["probabilities"][cls]
    assert best != pytest.approx(last, abs=0.01), "best and last checkpoints agree: the test cannot tell them apart"
    return last


def load_benchmark(name: str):
    """The module ``benchmarks/<name>.py`` (benchmarks are scripts, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
