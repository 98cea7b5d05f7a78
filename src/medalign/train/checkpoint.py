"""What a run leaves on disk: weights (safetensors), resume state, reproducibility metadata, metrics log.

Run directory::

    config.yaml            resolved config (defaults + file + overrides)
    meta.json              seed, package versions, git hash, device, world size
    preprocess.json        the PreprocessConfig of the cohort cache (for on-the-fly inference)
    metrics.jsonl          one JSON per line: {"epoch","step","split","loss",...,"lr"}
    checkpoints/best.safetensors, checkpoints/last.safetensors   recipe weights (+ metadata)
    checkpoints/resume.pt  optimiser / schedule / epoch / step / RNG state for --resume
    summary.json           final figures (written at the end)
"""
from __future__ import annotations

import contextlib
import json
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from medalign.errors import MedAlignError
from medalign.utils import atomic_path, atomic_write_json, atomic_write_text


def save_weights(recipe: nn.Module, path: Path, metadata: dict[str, Any]) -> None:
    """Recipe state_dict -> safetensors, atomically (frozen text encoders are not in it)."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous().clone() for k, v in recipe.state_dict().items()}
    with atomic_path(path, suffix=".safetensors") as tmp, _write_errors(path):
        save_file(state, str(tmp), metadata={k: json.dumps(v) for k, v in metadata.items()})


def load_weights(recipe: nn.Module, path: Path, *, strict: bool = True) -> dict[str, Any]:
    """Load a safetensors checkpoint into ``recipe``; returns its metadata."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise MedAlignError(f"checkpoint not found: {path}")
    try:
        state = load_file(str(path))
    except Exception as e:  # SafetensorError on a truncated / damaged file
        raise MedAlignError(f"checkpoint {path} is damaged or not a safetensors file ({str(e)[:120]})") from None
    missing, unexpected = recipe.load_state_dict(state, strict=False)
    if strict and (missing or unexpected):
        raise MedAlignError(f"checkpoint {path} does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    return {k: json.loads(v) for k, v in meta.items()}


def rng_state() -> dict[str, Any]:
    """Every RNG the loop draws from (python, numpy, torch, CUDA)."""
    st = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict[str, Any]) -> None:
    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def save_resume(path: Path, payload: dict[str, Any]) -> None:
    """Model / optimiser / scaler / loop state / RNG -> ``resume.pt``, atomically (a kill leaves the old one)."""
    with atomic_path(path, suffix=".pt") as tmp, _write_errors(path):
        torch.save({**payload, "rng": rng_state()}, tmp)


@contextlib.contextmanager
def _write_errors(path: Path) -> Iterator[None]:
    """torch / safetensors report a full disk as RuntimeError / SafetensorError: one line instead."""
    try:
        yield
    except OSError:
        raise  # the CLI prints these as one line already
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise MedAlignError(f"cannot write {path}: {first} (disk full?)") from None


def load_resume(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise MedAlignError(f"--resume: no resume state at {path}")
    # weights_only=False: the payload holds python RNG state and the config dict (our own file)
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated / foreign file: one line, not a pickle traceback
        raise MedAlignError(f"--resume: cannot read {path} ({type(e).__name__}); the file is damaged") from None


def trim_metrics(path: Path, last_step: int) -> None:
    """Forget log lines written after the resume point (the killed run's lost steps)."""
    if path.is_file():
        keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= last_step]
        atomic_write_text(path, "".join(ln + "\n" for ln in keep))


# What a training run writes (and ``--overwrite`` removes); anything else in the folder is left alone.
RUN_OUTPUTS = ("config.yaml", "meta.json", "preprocess.json", "metrics.jsonl", "summary.json", "checkpoints",
               "tensorboard", "embeddings", "eval", "report_extras")
# A folder holding any of these holds a run worth protecting (config.yaml alone = killed during setup).
RUN_EVIDENCE = ("checkpoints", "metrics.jsonl", "summary.json")


def prepare_run_dir(run_dir: Path, *, resume: bool, overwrite: bool, clean: bool = True) -> None:
    """Refuse to train into a folder that holds a run, unless resuming it or told to overwrite it.

    With ``overwrite`` the previous run's outputs are removed first (``clean``: this rank may
    delete; under DDP only rank 0 does), so no stale checkpoint or metrics line survives.
    """
    import shutil

    if resume and overwrite:
        raise MedAlignError("--resume and --overwrite contradict each other; pick one")
    if resume and not (run_dir / "config.yaml").is_file():
        raise MedAlignError(f"--resume: no resume state in {run_dir} (no config.yaml); start the run without --resume")
    held = [n for n in RUN_EVIDENCE if (run_dir / n).exists() and not (run_dir / n).stat().st_size == 0]
    if not held or resume:
        return
    if not overwrite:
        raise MedAlignError(f"run dir {run_dir} already holds a run ({', '.join(held)}); pass --resume to "
                            f"continue it or --overwrite to replace it")
    if clean:
        for name in RUN_OUTPUTS:
            p = run_dir / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()


def git_hash() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except Exception:
        return None


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": sys.version.split()[0]}
    for pkg in ("medalign", "torch", "numpy", "transformers", "safetensors", "torchio", "SimpleITK"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def write_run_meta(run_dir: Path, *, seed: int, world: int, device: torch.device) -> None:
    atomic_write_json(run_dir / "meta.json", {
        "seed": seed, "versions": versions(), "git": git_hash(), "world_size": world, "device": str(device),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "argv": sys.argv,
    })


class MetricsLog:
    """metrics.jsonl (+ TensorBoard when installed) on rank 0; a no-op elsewhere or without a run dir."""

    def __init__(self, run_dir: Path | None, *, tensorboard: bool) -> None:
        self.f = open(run_dir / "metrics.jsonl", "a", encoding="utf-8") if run_dir is not None else None
        self.tb = None
        if run_dir is not None and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tensorboard"))
            except Exception:  # tensorboard not installed: JSONL only
                self.tb = None

    def __call__(self, rec: dict[str, Any]) -> None:
        if self.f is not None:
            self.f.write(json.dumps(rec) + "\n")
            self.f.flush()
        if self.tb is not None:
            for k, v in rec.items():
                if isinstance(v, (int, float)) and k not in ("epoch", "step"):
                    self.tb.add_scalar(f"{rec['split']}/{k}", v, rec["step"])

    def close(self) -> None:
        if self.f is not None:
            self.f.close()
        if self.tb is not None:
            self.tb.close()
