"""Registry, config, atomic writes and the CLI shell."""
from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from medalign.config import ConfigError, apply_override, from_dict, load_config
from medalign.registry import Registry
from medalign.utils import atomic_path, atomic_write_json, sha256_text


def test_registry_build_drops_none_kwargs_and_names_unknown():
    reg: Registry = Registry("thing")

    @reg.register("a")
    def make_a(x: int = 3, y: int = 4):
        return (x, y)

    assert reg.build("a", x=1, y=None) == (1, 4)
    assert reg.names() == ["a"] and "a" in reg
    with pytest.raises(KeyError, match="unknown thing 'b'; known: a"):
        reg.build("b")
    with pytest.raises(KeyError, match="registered twice"):
        reg.register("a")(make_a)


def test_config_base_merge_and_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("train: {lr: 0.01, epochs: 300}\nmodel: {dim: 256}\n")
    (tmp_path / "child.yaml").write_text("_base_: base.yaml\ntrain: {epochs: 5}\n")
    cfg = load_config(tmp_path / "child.yaml", ["train.lr=1e-3", "model.name=unet3d", "data.shape=[8,32,32]"])
    assert cfg == {"train": {"lr": 1e-3, "epochs": 5}, "model": {"dim": 256, "name": "unet3d"},
                   "data": {"shape": [8, 32, 32]}}
    with pytest.raises(ConfigError, match="not of the form"):
        apply_override(cfg, "train.lr")
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_from_dict_names_unknown_keys():
    @dataclasses.dataclass
    class Opt:
        lr: float = 0.1

    assert from_dict(Opt, {"lr": 0.5}).lr == 0.5
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['optim.lrr'\] \('lrr' -> did you mean 'lr'\?\)"):
        from_dict(Opt, {"lrr": 1}, where="optim")


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.json"
    atomic_write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert target.read_text(encoding="utf-8").strip().startswith("{") and '"a": 1' in target.read_text(encoding="utf-8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]
    assert sha256_text("x") == sha256_text("x") != sha256_text("y")


def test_cli_help_is_light():
    """`medalign --help` must not import torch/transformers (heavy imports live in commands)."""
    code = ("import sys; from medalign.cli import main; rc = main(['--help']); "
            "heavy = [m for m in ('torch', 'transformers', 'SimpleITK', 'faiss') if m in sys.modules]; "
            "print('HEAVY', heavy); sys.exit(rc)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout
    for cmd in ("synth", "preprocess", "train", "evaluate", "serve"):
        assert cmd in out.stdout


def test_yaml_floats_in_files(tmp_path):
    (tmp_path / "c.yaml").write_text("lr: 1e-3\nwd: 5.0e-2\nname: 1e3x\nn: 10\n")
    cfg = load_config(tmp_path / "c.yaml")
    assert cfg == {"lr": 1e-3, "wd": 5e-2, "name": "1e3x", "n": 10}


def test_cli_main_returns_exit_codes(monkeypatch):
    import typer

    from medalign import cli
    from medalign.errors import CohortError

    @cli.app.command("_exit3", hidden=True)
    def _exit3() -> None:
        raise typer.Exit(3)

    @cli.app.command("_bad", hidden=True)
    def _bad() -> None:
        raise CohortError("corrupt file", study_id="S1", path="/x/a.nii.gz")

    try:
        assert cli.main(["_exit3"]) == 3
        assert cli.main(["_bad"]) == 2
        assert cli.main(["no-such-command"]) == 2
    finally:
        cli.app.registered_commands[:] = [c for c in cli.app.registered_commands
                                          if c.name not in ("_exit3", "_bad")]
