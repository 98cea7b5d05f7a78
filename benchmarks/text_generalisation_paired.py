"""Paired comparison of two sets of runs (e.g. the same preset with and without an option, one run
per training seed) on one held-out cohort, as ``benchmarks/text_generalisation.py`` scores them.

    python benchmarks/text_generalisation_paired.py --a RUN_A1 RUN_A2 ... --b RUN_B1 RUN_B2 ... \
        --manifest COHORT/manifest.csv --cache CACHE

Per run: zero-shot accuracy with the test prompts (benchmarks/text_generalisation_prompts.yaml),
one prompt per class and the ensemble, and class precision@5 of the hand-written corpus's test
impressions as queries. The difference A - B is the mean over A's runs minus the mean over B's
runs; its 95 % CI comes from one percentile bootstrap (2000 resamples, seed 0) that resamples the
images (and the queries) jointly for every run, so image sampling is paired. Seed-to-seed spread
is shown by the per-run values, not folded into the CI.
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CORPUS = HERE.parent / "tests" / "data" / "corpus" / "reports.csv"


def per_run(run: str, ids: list[str], y: np.ndarray, queries: list[str], qy: np.ndarray, cache: str,
            prompts: str) -> dict[str, np.ndarray]:
    """Per-image correctness (one prompt, ensemble) and per-query precision@5 of one run."""
    import medalign
    from medalign.eval.retrieval import cosine_similarity
    from medalign.eval.zeroshot import embed_prompts, load_prompts, scores_from_prompt_bank

    m = medalign.load(run, cache_dir=cache)
    img = m.encode_image(ids)  # (N, E)
    bank = embed_prompts(load_prompts(prompts), m.encode_text)
    one = scores_from_prompt_bank(img, bank, one_per_class=True).argmax(1) == y
    ens = scores_from_prompt_bank(img, bank, pool="ensemble").argmax(1) == y
    top5 = np.argsort(-cosine_similarity(m.encode_report(queries), img), axis=1)[:, :5]  # (Q, 5)
    return {"one_prompt": one.astype(float), "ensemble": ens.astype(float), "p5": (y[top5] == qy[:, None]).mean(1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", nargs="+", required=True)
    ap.add_argument("--b", nargs="+", required=True)
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--cache", required=True)
    ap.add_argument("--prompts", default=str(HERE / "text_generalisation_prompts.yaml"))
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()

    import pandas as pd

    from medalign.data.schema import CLASSES

    df = pd.read_csv(a.manifest, dtype=str, keep_default_na=False)
    ids, y = df["study_id"].tolist(), np.array([CLASSES.index(v) for v in df["label"]])
    rows = [r for r in csv.DictReader(CORPUS.open(encoding="utf-8")) if r["split"] == "test"]
    queries, qy = [r["text"] for r in rows], np.array([CLASSES.index(r["label"]) for r in rows])
    runs = {side: [per_run(r, ids, y, queries, qy, a.cache, a.prompts) for r in getattr(a, side)] for side in ("a", "b")}
    rng = np.random.default_rng(0)
    out: dict = {"a": a.a, "b": a.b, "manifest": a.manifest, "metrics": {}}
    for k in ("one_prompt", "ensemble", "p5"):
        va = np.stack([r[k] for r in runs["a"]])  # (runs, N)
        vb = np.stack([r[k] for r in runs["b"]])
        n = va.shape[1]
        diff = va.mean(0) - vb.mean(0)  # (N,) per image / query, mean over runs
        boots = np.array([diff[rng.integers(0, n, n)].mean() for _ in range(a.n_boot)])
        lo, hi = (float(v) for v in np.percentile(boots, [2.5, 97.5]))
        out["metrics"][k] = {"a_runs": [round(float(v.mean()), 3) for v in va],
                             "b_runs": [round(float(v.mean()), 3) for v in vb],
                             "diff": float(diff.mean()), "lo": lo, "hi": hi, "n": n}
        print(f"{k:<11} A {out['metrics'][k]['a_runs']}  B {out['metrics'][k]['b_runs']}  "
              f"A - B {diff.mean():+.3f} [{lo:+.3f}, {hi:+.3f}] (n={n})", flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps(out, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
