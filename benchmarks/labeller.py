"""Report labeller accuracy: hand-written corpus (dev / test halves) and generated reports.

    python benchmarks/labeller.py [--n-generated 1000] [--seed 777] [--labeller PATH]

``--labeller`` points at another module file with ``label_reports`` (e.g. the pre-medspaCy
labeller from git history) to measure it on the same data. CIs: percentile bootstrap over
reports (``medalign.eval.bootstrap``).
"""
from __future__ import annotations

import argparse
import csv
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np

CORPUS = Path(__file__).resolve().parents[1] / "tests" / "data" / "corpus" / "reports.csv"


def _labeller(path: str | None):
    if path is None:
        from medalign.data.reports import label_reports
        return label_reports
    spec = importlib.util.spec_from_file_location("other_labeller", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod.label_reports


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-generated", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=777)
    ap.add_argument("--labeller", default=None)
    args = ap.parse_args()

    from medalign.data.reports import confusion_matrix, format_confusion
    from medalign.data.synth.brain import plan_cohort
    from medalign.eval.bootstrap import bootstrap_ci, format_ci

    label = _labeller(args.labeller)
    rows = list(csv.DictReader(CORPUS.open(encoding="utf-8")))
    for split in ("dev", "test"):
        part = [r for r in rows if r["split"] == split]
        truth = [r["label"] for r in part]
        pred = label([r["text"] for r in part])
        ok = np.array([t == p for t, p in zip(truth, pred)], dtype=float)
        print(f"corpus {split}: accuracy {format_ci(bootstrap_ci(np.mean, ok, n=2000, seed=0))} (n={len(ok)})")
        if split == "test":
            print(format_confusion(confusion_matrix(truth, pred)))
    for held in (False, True):
        plans = plan_cohort(args.n_generated, seed=args.seed, heldout_phrasing=held,
                            split_counts={"train": 0, "val": 0, "test": args.n_generated})
        t0 = time.perf_counter()
        pred = label([p["report"] for p in plans])
        dt = time.perf_counter() - t0
        ok = np.array([p == t["label"] for p, t in zip(pred, plans)], dtype=float)
        fam = "held-out phrasing" if held else "standard phrasing"
        print(f"generated ({fam}, seed {args.seed}): accuracy {format_ci(bootstrap_ci(np.mean, ok, n=2000, seed=0))} "
              f"(n={len(ok)}, {len(ok) / dt:.0f} reports/s)")


if __name__ == "__main__":
    main()
