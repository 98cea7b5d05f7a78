"""How far each drawn finding stands out on one sequence, per finding, against the real cases (issue 20, stop 63).

    python benchmarks/lesion_contrast.py --cohort C [--cache C/.cache] [--splits train] [--sequence flair]
        [--real DIR] [--out results.json]

Per study of ``--splits`` whose cached lesion mask is not empty: the realism report's metrics of ``--sequence``
(``data.realism_compare.study_metrics``: ``lesion_contrast`` = mean inside the lesion minus the normal head, in the
cache's normalised units; ``lesion_volume`` = the lesion's share of the head), grouped by the finding that made the
study's class, ``class/variant[/age]`` from its ``ground_truth.json``; per group the count, mean contrast (with its
spread) and median volume. With ``--real DIR`` (the ``--out`` folder of ``benchmarks/realism.py``: its real manifest and
real cache) every real case's values as well, preprocessed as that cache. Stop 63 read it so: the drawn acute infarcts
stand out on FLAIR as far as the gliomas or further, and the two real gliomas larger cohorts call "infarct" are the
two brightest.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from study_fusion import study_variants  # noqa: E402


def measure(cache: Path, ids: list[str], kinds: dict[str, str], sequence: str) -> list[dict]:
    """Rows {study_id, kind, lesion_contrast, lesion_volume} of the studies with a lesion in the cache."""
    from medalign.data.realism_compare import cohort_values

    rows, _, cfg = cohort_values(cache, ids, findings=kinds)
    if sequence not in rows:
        raise SystemExit(f"--sequence {sequence}: the cache {cache} holds {list(cfg.sequences)}")
    return [{"study_id": r["study_id"], "kind": r["finding"], "lesion_contrast": r["lesion_contrast"],
             "lesion_volume": r["lesion_volume"]} for r in rows[sequence] if r.get("lesion_volume")]


def summary(rows: list[dict]) -> dict[str, dict]:
    """Per kind: n, mean and SD of the lesion contrast, median lesion volume."""
    out = {}
    for kind in sorted({r["kind"] for r in rows}):
        c = np.array([r["lesion_contrast"] for r in rows if r["kind"] == kind and r["lesion_contrast"] is not None])
        v = np.array([r["lesion_volume"] for r in rows if r["kind"] == kind])
        out[kind] = {"n": int(v.size), "contrast_mean": float(c.mean()) if c.size else None,
                     "contrast_sd": float(c.std()) if c.size else None, "volume_median": float(np.median(v))}
    return out


def main(argv: list[str] | None = None) -> int:
    import pandas as pd

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cohort", required=True, type=Path, help="a `synth brain` folder (manifest + ground truths)")
    ap.add_argument("--cache", type=Path, default=None, help="its preprocessed cache (default: COHORT/.cache)")
    ap.add_argument("--splits", default="train", help="comma-separated splits to read (default: train)")
    ap.add_argument("--sequence", default="flair")
    ap.add_argument("--real", type=Path, default=None, help="a benchmarks/realism.py --out folder")
    ap.add_argument("--out", type=Path, default=None, help="write the rows and the summary as JSON here")
    a = ap.parse_args(argv)
    man = pd.read_csv(a.cohort / "manifest.csv", dtype=str, keep_default_na=False)
    man = man[man["split"].isin(a.splits.split(","))]
    ids = man["study_id"].tolist()
    kinds = dict(zip(ids, study_variants(str(a.cohort / "manifest.csv"), ids, man["label"].tolist(), age=True)))
    rows = measure(a.cache or a.cohort / ".cache", list(kinds), kinds, a.sequence)
    res = {"cohort": str(a.cohort), "splits": a.splits, "sequence": a.sequence, "rows": rows, "summary": summary(rows)}
    print(f"{'finding':<34} {'n':>4} {'contrast mean (sd)':>20} {'volume median':>14}")
    for kind, s in res["summary"].items():
        c = "-" if s["contrast_mean"] is None else f"{s['contrast_mean']:.2f} ({s['contrast_sd']:.2f})"
        print(f"{kind:<34} {s['n']:>4} {c:>20} {s['volume_median']:>14.4f}")
    if a.real is not None:
        real = pd.read_csv(a.real / "real_manifest.csv", dtype=str, keep_default_na=False)
        caches = sorted(a.real.glob("real_cache*"))
        if not caches:
            raise SystemExit(f"--real {a.real}: no real cache there; run benchmarks/realism.py --out {a.real} first")
        res["real"] = measure(caches[0], real["study_id"].tolist(),
                              dict(zip(real["study_id"], real["label"] + "/real")), a.sequence)
        for r in res["real"]:
            print(f"{r['study_id'] + ' (' + r['kind'] + ')':<34} {'':>4} {r['lesion_contrast']:>20.2f} {r['lesion_volume']:>14.4f}")
    if a.out is not None:
        from medalign.utils import atomic_write_text

        atomic_write_text(a.out, json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
