"""Typed config sections: a wrong type, a bad range or a typo fails naming the key, before any run folder exists."""
from __future__ import annotations

from pathlib import Path

import pytest

from medalign.cli import main
from medalign.config import ConfigError
from medalign.train.config import TrainConfig, resolve_config

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "tiny" / "clip_tiny.yaml"


@pytest.mark.parametrize("override,message", [
    ("train.lr=abc", "train.lr: expected a number, got 'abc'"),
    ("train.batch_size=0", "train.batch_size: must be >= 1, got 0"),
    ("train.epochs=-1", "train.epochs: must be >= 1, got -1"),
    ("train.lrr=0.1", "unknown key(s) ['train.lrr'] ('lrr' -> did you mean 'lr'?)"),
    ("trian.lr=1", "unknown top-level key(s) ['trian']"),
    ("train.optimizer=adamm", "train.optimizer: must be one of ['adam', 'adamw', 'sgd'], got 'adamm'"),
    ("train.amp=maybe", "train.amp: expected true or false, got 'maybe'"),
    ("data.shape=[4,abc,8]", "data.shape[1]: expected an integer, got 'abc'"),
    ("recipe.embed_dimm=8", "unknown key(s) ['recipe.embed_dimm'] for recipe 'clip'"),
    ("readout.neighbours=1.5", "readout.neighbours: must be in [0, 1], got 1.5"),
    ("readout.k=0", "readout.k: must be >= 1, got 0"),
])
def test_bad_config_is_one_line_naming_the_key(tmp_path, capsys, override, message):
    run = tmp_path / "run"
    rc = main(["train", str(TINY), override, "--run-dir", str(run)])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert not (run / "checkpoints").exists()


def test_defaults_survive_and_types_are_coerced():
    cfg = resolve_config({"train": {"lr": 1, "betas": [0.8, 0.9]}, "data": {"shape": [4, 8, 8]}})
    assert cfg["readout"] == {"neighbours": 0.0, "k": 20, "mirror": False}  # zero-shot unless a preset says otherwise
    assert resolve_config({"readout": {"neighbours": 1}})["readout"] == {"neighbours": 1.0, "k": 20, "mirror": False}
    assert cfg["train"]["lr"] == 1.0 and isinstance(cfg["train"]["lr"], float)
    assert cfg["train"]["betas"] == [0.8, 0.9]
    assert cfg["train"]["epochs"] == TrainConfig().epochs
    assert cfg["data"]["shape"] == [4, 8, 8] and cfg["data"]["kind"] == "cohort"
    assert cfg["recipe"] == {"name": "clip"}


def test_optional_and_tuple_length_checks():
    assert TrainConfig.from_dict({"grad_clip": None}).grad_clip is None
    with pytest.raises(ConfigError, match=r"train.betas: expected 2 values, got 3"):
        TrainConfig.from_dict({"betas": [0.9, 0.99, 0.999]})
    with pytest.raises(ConfigError, match=r"train.ema_decay: must be in \(0, 1\)"):
        TrainConfig.from_dict({"ema_decay": 1.0})
