"""Progress lines with an ETA, and finished units written at once, for long experiments.

A unit is one (row, seed) of an ablation table or one method of a sweep. ``save_row`` writes it
as soon as it ends (atomically); a rerun with the same settings finds it with ``row_file`` and
``load_row`` and trains only what is missing, so a killed run loses at most one unit.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from medalign.utils import atomic_path, sha256_text

_TSNE_KEYS = ("tsne_tokens", "tsne_labels", "tsne_test_tokens", "tsne_test_labels")


class Progress:
    """One line per (row, seed) unit: what starts, what finished, elapsed time and an ETA."""

    def __init__(self, total: int, log: Callable[[str], None] | None) -> None:
        self.total, self.done, self.log, self.t0, self.spent = total, 0, log or (lambda _m: None), time.time(), []

    def start(self, name: str, seed: int) -> None:
        self.log(f"[{self.done + 1}/{self.total}] {name} (seed {seed}): training ...")

    def finish(self, name: str, seed: int, acc: float, seconds: float, reused: bool) -> None:
        self.done += 1
        if not reused:
            self.spent.append(seconds)
        left = self.total - self.done
        eta = f"ETA {np.mean(self.spent) * left / 60:.1f} min" if self.spent and left else ("done" if not left else "")
        how = "reused from an earlier run" if reused else f"{seconds:.0f} s"
        self.log(f"[{self.done}/{self.total}] {name} (seed {seed}): accuracy {acc:.3f} ({how}); "
                 f"elapsed {(time.time() - self.t0) / 60:.1f} min, {eta}")


def row_file(out_dir: Path, name: str, seed: int, settings: dict) -> Path:
    """OUT/rows/<row>.seed<k>.<settings hash>.npz: a row finished with other settings is not reused."""
    key = sha256_text(json.dumps(settings, sort_keys=True, default=str))[:10]
    safe = re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")
    return out_dir / "rows" / f"{safe}.seed{seed}.{key}.npz"


def save_row(path: Path, r: dict) -> None:
    """Write one finished unit at once: arrays ``y``, ``pred``, ``seconds``, ``log`` and t-SNE keys."""
    arrays = {"y": np.asarray(r["y"]), "pred": np.asarray(r["pred"]), "seconds": np.asarray(float(r["seconds"])),
              "log": np.asarray(json.dumps(r["log"], default=str))}
    arrays.update({k: np.asarray(r[k]) for k in _TSNE_KEYS if r.get(k) is not None})
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, **arrays)


def load_row(path: Path) -> dict:
    """A unit written by :func:`save_row` (t-SNE keys None when absent)."""
    with np.load(path, allow_pickle=False) as z:
        r: dict[str, Any] = {k: z[k] for k in z.files}
    r["seconds"], r["log"] = float(r["seconds"]), json.loads(str(r["log"]))
    return {**{k: None for k in _TSNE_KEYS}, **r}
