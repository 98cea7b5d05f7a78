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

import numpy as np

from text_generalisation import HERE, corpus_precision_at_5, load_cohort, zero_shot_correct  # same folder


def per_run(run: str, ids: list[str], y: np.ndarray, cache: str, prompts: str) -> dict[str, np.ndarray]:
    """Per-image correctness (one prompt, ensemble) and per-query precision@5 of one run."""
    import medalign

    m = medalign.load(run, cache_dir=cache)
    img = m.encode_image(ids)  # (N, E)
    ok = zero_shot_correct(m, img, y, prompts)
    return {"one_prompt": ok["one_prompt"], "ensemble": ok["ensemble"], "p5": corpus_precision_at_5(m, img, y)[0]}


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

    ids, y = load_cohort(a.manifest)
    runs = {side: [per_run(r, ids, y, a.cache, a.prompts) for r in getattr(a, side)] for side in ("a", "b")}
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
        from medalign.utils import atomic_write_json

        atomic_write_json(a.out, out)


if __name__ == "__main__":
    main()
