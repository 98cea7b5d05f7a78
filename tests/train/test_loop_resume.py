"""The loop on tiny synthetic data: run dir layout, metrics, checkpoints, kill + --resume, early stop."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from medalign.config import load_config
from medalign.data.samplers import ResumableBatchSampler
from medalign.train.loop import fit

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "tiny" / "clip_tiny.yaml"


pytestmark = pytest.mark.usefixtures("session_text_cache")


def _cfg(*overrides: str) -> dict:
    return load_config(TINY, ["train.epochs=3", *overrides])


def test_fit_writes_run_dir(tmp_path: Path) -> None:
    s = fit(_cfg(), tmp_path / "run")
    run = tmp_path / "run"
    for f in ("config.yaml", "meta.json", "metrics.jsonl", "summary.json",
              "checkpoints/best.safetensors", "checkpoints/last.safetensors", "checkpoints/resume.pt"):
        assert (run / f).is_file(), f
    assert s["steps"] == 3 * 2 and s["epochs"] == 3  # 10 studies, batch 4, short batch dropped
    meta = json.loads((run / "meta.json").read_text())
    assert meta["seed"] == 0 and "torch" in meta["versions"]
    lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    train = [l for l in lines if l["split"] == "train"]
    val = [l for l in lines if l["split"] == "val"]
    assert [l["step"] for l in train] == [1, 2, 3, 4, 5, 6]
    assert len(val) == 3 and {"loss", "recall@5", "lr"} <= set(val[0])
    assert train[0]["lr"] < train[1]["lr"]  # warmup
    w = load_file(str(run / "checkpoints" / "last.safetensors"))
    assert "log_logit_scale" in w and not any(k.startswith("_text") for k in w)


def test_kill_and_resume_matches_uninterrupted(tmp_path: Path) -> None:
    full = fit(_cfg(), tmp_path / "full")
    # 'kill' mid-epoch 2 (step 3 of 6), then resume
    part = fit(_cfg("train.stop_after_steps=3"), tmp_path / "part")
    assert part["stopped"] and part["steps"] == 3
    assert not (tmp_path / "part" / "summary.json").exists()
    resumed = fit(_cfg(), tmp_path / "part", resume=True)
    assert resumed["steps"] == full["steps"] == 6 and resumed["epochs"] == 3
    a = load_file(str(tmp_path / "full" / "checkpoints" / "last.safetensors"))
    b = load_file(str(tmp_path / "part" / "checkpoints" / "last.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5, msg=f"{k} differs after resume")
    steps = [json.loads(l)["step"] for l in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()
             if json.loads(l)["split"] == "train"]
    assert steps == [1, 2, 3, 4, 5, 6]  # no duplicated or lost log lines
    from medalign.api import load

    m = load(tmp_path / "part")
    assert m.encode_text(["Normal study."]).shape == (1, 16)


def test_resume_without_state_is_an_error(tmp_path: Path) -> None:
    from medalign.errors import MedAlignError

    with pytest.raises(MedAlignError, match="no resume state"):
        fit(_cfg(), tmp_path / "nothing", resume=True)


def test_early_stopping_and_max_steps(tmp_path: Path) -> None:
    # monitor something that cannot improve after epoch 1 -> stops after 1 + patience epochs
    s = fit(_cfg("train.epochs=10", "train.monitor=n", "train.early_stopping_patience=1"), tmp_path / "es")
    assert s["epochs"] == 2
    s = fit(_cfg("train.epochs=10", "train.max_steps=3"), tmp_path / "ms")
    assert s["steps"] == 3


def test_sampler_resumes_mid_epoch_and_shards() -> None:
    s = ResumableBatchSampler(10, 3, seed=1, drop_last=True)
    s.set_epoch(2)
    full = list(s)
    s.set_epoch(2, start_batch=1)
    assert list(s) == full[1:] and len(full) == 3
    ranks = [ResumableBatchSampler(10, 2, seed=1, rank=r, world=2, drop_last=False) for r in (0, 1)]
    for r in ranks:
        r.set_epoch(0)
    seen = sorted(i for r in ranks for b in r for i in b)
    assert len(seen) == 10 and set(seen) == set(range(10))


@pytest.mark.parametrize("name", ["brain_clip_paper.yaml", "brain_clip_cpu.yaml"])
def test_shipped_configs_build(name: str) -> None:
    from medalign.recipes import build_recipe
    from medalign.train.config import resolve_config

    cfg = resolve_config(load_config(ROOT / "configs" / name))
    paper = name == "brain_clip_paper.yaml"
    with torch.device("meta" if paper else "cpu"):  # the paper's 25M-weight FC: shapes only
        recipe = build_recipe(cfg)
    assert recipe.sequences == ("dwi", "t2s", "flair") and recipe.embed_dim == 256
    if paper:
        assert recipe.image_encoder.fc.in_features == 256 * 2 * 14 * 14
        assert cfg["train"]["lr"] == 0.01 and cfg["train"]["plateau_patience"] == 10 and cfg["train"]["batch_size"] == 8
        assert recipe.image_encoder.channels == (32, 64, 128, 256)
    else:  # the CPU preset runs a real-size batch
        x = torch.randn(2, 3, 16, 112, 112)
        assert recipe.encode_image(x, torch.tensor([[True, True, True], [False, False, True]])).shape == (2, 256)


def test_weight_ema_known_values_and_swap() -> None:
    from medalign.errors import MedAlignError
    from medalign.train.ema import WeightEMA

    m = torch.nn.BatchNorm1d(2)  # a float weight and an integer buffer (num_batches_tracked)
    with torch.no_grad():
        m.weight.fill_(1.0)
    ema = WeightEMA(m, decay=0.5)
    with torch.no_grad():
        m.weight.fill_(3.0)
    m.num_batches_tracked += 4
    ema.update(m, step=0)  # warm-up decay: min(0.5, 1/10) = 0.1 -> 0.1 * 1 + 0.9 * 3
    assert ema.shadow["weight"].tolist() == pytest.approx([2.8, 2.8])
    assert int(ema.shadow["num_batches_tracked"]) == 4
    ema.update(m, step=100)  # decay 0.5 -> 0.5 * 2.8 + 0.5 * 3
    assert ema.shadow["weight"].tolist() == pytest.approx([2.9, 2.9])
    with ema.applied(m):
        assert m.weight.tolist() == pytest.approx([2.9, 2.9])
    assert m.weight.tolist() == [3.0, 3.0]  # the live weights are back
    with pytest.raises(MedAlignError, match="ema_decay"):
        WeightEMA(m, decay=1.0)


def test_ema_checkpoints_and_resume(tmp_path: Path) -> None:
    full = fit(_cfg("train.ema_decay=0.9"), tmp_path / "full")
    part = fit(_cfg("train.ema_decay=0.9", "train.stop_after_steps=3"), tmp_path / "part")
    assert part["stopped"]
    fit(_cfg("train.ema_decay=0.9"), tmp_path / "part", resume=True)
    a = load_file(str(tmp_path / "full" / "checkpoints" / "last.safetensors"))
    b = load_file(str(tmp_path / "part" / "checkpoints" / "last.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5, msg=f"{k} differs after resume")
    # the checkpoint holds the average, the resume state the live weights (and the average)
    rs = torch.load(tmp_path / "full" / "checkpoints" / "resume.pt", map_location="cpu", weights_only=False)
    live = rs["model"]
    assert any(not torch.allclose(live[k].float(), a[k].float()) for k in a if a[k].is_floating_point())
    for k in a:
        torch.testing.assert_close(rs["ema"][k], a[k])
    assert full["steps"] == 6


# the tiny cohort is labelled, and every 3rd study lacks its first sequence (7 full, 3 partial)
@pytest.mark.parametrize("key", ["class_balance", "protocol_balance"])
def test_balanced_draws_in_the_loop(tmp_path: Path, key: str) -> None:
    from medalign.config import ConfigError
    from medalign.data.datasets import SyntheticPairs
    from medalign.data.samplers import protocol_balance_weights
    from medalign.train.config import resolve_config

    base = ("data.synthetic.missing_every=3",)
    opts = (*base, f"train.{key}=1")
    assert protocol_balance_weights(SyntheticPairs(**_cfg(*opts)["data"]["synthetic"]), 1.0).count(1 / 3) == 3
    # balanced draws train and resume like shuffled ones
    full = fit(_cfg(*opts), tmp_path / "full")
    part = fit(_cfg(*opts, "train.stop_after_steps=3"), tmp_path / "part")
    resumed = fit(_cfg(*opts), tmp_path / "part", resume=True)
    assert part["stopped"] and resumed["steps"] == full["steps"] == 6
    a = load_file(str(tmp_path / "full" / "checkpoints" / "last.safetensors"))
    b = load_file(str(tmp_path / "part" / "checkpoints" / "last.safetensors"))
    fit(_cfg(*base), tmp_path / "plain")
    plain = load_file(str(tmp_path / "plain" / "checkpoints" / "last.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5, msg=f"{k} differs after resume")
    assert any(not torch.allclose(a[k], plain[k]) for k in a)  # the draws did change
    with pytest.raises(ConfigError, match=f"train.{key}"):
        resolve_config(_cfg(f"train.{key}=2"))
    # a recipe that groups its own batches (twin views keep a patient's studies together) cannot also balance them
    with pytest.raises(ConfigError, match=f"{key}: the batches come from GroupedBatchSampler"):
        fit(_cfg(*opts, "recipe.twin_views=0.5"), tmp_path / "twins")


def _epoch_of(path: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["epoch"])


def test_select_last_keeps_the_last_epoch_as_the_model(tmp_path: Path) -> None:
    # monitor the val loss the wrong way round, so the "best" epoch is an early one: the two choices differ
    cfg = ("train.epochs=4", "train.monitor=loss", "train.monitor_mode=max")
    best = fit(_cfg(*cfg), tmp_path / "best")
    last = fit(_cfg(*cfg, "train.select=last"), tmp_path / "last")
    assert best["best_epoch"] == last["best_epoch"] < 4  # the monitor's verdict is the same either way
    assert best["selected_epoch"] == best["best_epoch"] and last["selected_epoch"] == 4
    assert _epoch_of(tmp_path / "best" / "checkpoints" / "best.safetensors") == best["best_epoch"]
    assert _epoch_of(tmp_path / "last" / "checkpoints" / "best.safetensors") == 4
    a = load_file(str(tmp_path / "last" / "checkpoints" / "best.safetensors"))
    b = load_file(str(tmp_path / "last" / "checkpoints" / "last.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)  # what load() reads is the last epoch's weights
    from medalign.errors import MedAlignError
    from medalign.train.config import TrainConfig

    with pytest.raises(MedAlignError, match="select"):
        TrainConfig.from_dict({"select": "middle"})
