"""Finding 2 (run dirs) and 7 (checkpoint loading): nothing of a finished run is overwritten or
silently swapped; a run killed in its first epoch resumes cleanly with no stale metrics lines."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from medalign import cli
from medalign.config import load_config
from medalign.errors import MedAlignError
from medalign.train import loop as loop_mod
from medalign.train.loop import fit

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "tiny" / "clip_tiny.yaml"


pytestmark = pytest.mark.usefixtures("session_text_cache")


def _cfg(*overrides: str) -> dict:
    return load_config(TINY, ["train.epochs=2", *overrides])


def _steps(run: Path) -> list[int]:
    return [json.loads(ln)["step"] for ln in (run / "metrics.jsonl").read_text().splitlines()
            if json.loads(ln)["split"] == "train"]


def test_train_into_finished_run_is_refused_and_leaves_it_untouched(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(["train", str(TINY), "train.epochs=1", "--run-dir", str(run)]) == 0
    before = {p.relative_to(run).as_posix(): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    capsys.readouterr()
    rc = cli.main(["train", str(TINY), "train.epochs=2", "--run-dir", str(run)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "already holds a run" in err and "--resume" in err and "--overwrite" in err
    after = {p.relative_to(run).as_posix(): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert after == before  # config, checkpoints, summary and metrics all byte-identical


def test_overwrite_replaces_the_run_without_stale_lines(tmp_path):
    run = tmp_path / "run"
    fit(_cfg("train.epochs=1"), run)
    (run / "checkpoints" / "best.safetensors").write_bytes(b"stale")
    fit(_cfg(), run, overwrite=True)
    assert _steps(run) == [1, 2, 3, 4]  # 2 epochs x 2 steps, the first run's lines gone
    assert (run / "checkpoints" / "best.safetensors").read_bytes() != b"stale"
    with pytest.raises(MedAlignError, match="contradict"):
        fit(_cfg(), run, resume=True, overwrite=True)


class _Killed(BaseException):
    """A SIGKILL stand-in: not an Exception, not KeyboardInterrupt, so no handler saves anything."""


def test_run_killed_in_first_epoch_resumes_without_stale_metrics(tmp_path, monkeypatch):
    full = tmp_path / "full"
    fit(_cfg(), full)
    real = loop_mod.optimisation_step
    calls = {"n": 0}

    def dying_step(loop, batch):
        calls["n"] += 1
        if calls["n"] == 2:  # step 1 was logged, step 2 never finishes: killed mid-epoch 1
            raise _Killed()
        return real(loop, batch)

    monkeypatch.setattr(loop_mod, "optimisation_step", dying_step)
    part = tmp_path / "part"
    with pytest.raises(_Killed):
        fit(_cfg(), part)
    monkeypatch.setattr(loop_mod, "optimisation_step", real)
    assert _steps(part) == [1]
    fit(_cfg(), part, resume=True)
    assert _steps(part) == [1, 2, 3, 4]  # the killed run's line replaced, not duplicated
    losses = lambda r: [json.loads(ln)["loss"] for ln in (r / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert losses(part) == losses(full)  # same stream as the uninterrupted run


def test_resume_with_config_but_no_resume_point_starts_clean(tmp_path):
    run = tmp_path / "run"
    fit(_cfg("train.epochs=1"), run)
    # killed during setup of an earlier version: config written, no resume point, a stale line
    (run / "checkpoints" / "resume.pt").unlink()
    fit(_cfg(), run, resume=True)
    assert _steps(run) == [1, 2]  # the saved config (1 epoch) wins on --resume; no stale lines


def test_load_refuses_a_missing_best_and_a_truncated_checkpoint(tmp_path, capsys):
    from medalign.api import load

    run = tmp_path / "run"
    fit(_cfg("train.epochs=1"), run)
    best = run / "checkpoints" / "best.safetensors"
    data = best.read_bytes()
    best.write_bytes(data[: len(data) // 2])
    with pytest.raises(MedAlignError, match="damaged"):
        load(run)
    assert cli.main(["embed", str(run)]) == 2  # one line, not a SafetensorError traceback
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    best.unlink()
    with pytest.raises(MedAlignError, match="last"):
        load(run)  # used to load last.safetensors without a word
    assert load(run, checkpoint="last").model_id


def test_oserror_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    rc = cli.main(["train", str(TINY), "--run-dir", str(blocker / "run")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "Not a directory" in err and str(blocker) in err


def test_failed_checkpoint_write_is_one_line(tmp_path, monkeypatch):
    import torch

    from medalign.train import checkpoint as ckpt

    def full_disk(*a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:603] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(MedAlignError, match="cannot write .*resume.pt: .*PytorchStreamWriter"):
        ckpt.save_resume(tmp_path / "resume.pt", {"x": 1})
    assert not list(tmp_path.iterdir())  # no half-written file left behind
