"""Zero-shot (one prompt vs prompt ensemble) and corpus-query search on a cohort no preset saw.

    python benchmarks/text_generalisation.py --run RUN --manifest COHORT/manifest.csv --cache CACHE

- zero-shot accuracy with ``--prompts`` (default: benchmarks/text_generalisation_prompts.yaml,
  written for this test) and with the shipped eval/prompts.yaml, each as one prompt per class
  (the paper's protocol) and as the ensemble (mean prompt embedding per class) and mean-of-scores;
- class precision@5: each impression of the hand-written corpus's test half
  (tests/data/corpus/reports.csv) queries the cohort's images; the share of the top 5 that
  are of the query's class. CIs: percentile bootstrap (medalign.eval.bootstrap) over images /
  queries. Copy the run directory first if it must stay untouched (this script only reads it).
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CORPUS = HERE.parent / "tests" / "data" / "corpus" / "reports.csv"


POOLS = (("one_prompt", {"one_per_class": True}), ("ensemble", {"pool": "ensemble"}), ("mean_of_scores", {"pool": "mean"}))


def load_cohort(manifest: str) -> tuple[list[str], np.ndarray]:
    """(study ids, class indices) of a labelled cohort manifest."""
    import pandas as pd

    from medalign.data.schema import CLASSES

    df = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    return df["study_id"].tolist(), np.array([CLASSES.index(v) for v in df["label"]])


def zero_shot_correct(m, img: np.ndarray, y: np.ndarray, prompts: str) -> dict[str, np.ndarray]:
    """Per image (N,) 0/1 correctness of zero-shot with the prompt file, for each pooling in POOLS."""
    from medalign.eval.zeroshot import embed_prompts, load_prompts, scores_from_prompt_bank

    bank = embed_prompts(load_prompts(prompts), m.encode_text)
    return {mode: (scores_from_prompt_bank(img, bank, **kw).argmax(1) == y).astype(float) for mode, kw in POOLS}


def corpus_precision_at_5(m, img: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(per query (Q,) class precision@5 of the corpus test impressions against ``img``, query classes (Q,))."""
    from medalign.data.schema import CLASSES
    from medalign.eval.retrieval import cosine_similarity

    rows = [r for r in csv.DictReader(CORPUS.open(encoding="utf-8")) if r["split"] == "test"]
    q = m.encode_report([r["text"] for r in rows])  # the impression, as reports are encoded
    qy = np.array([CLASSES.index(r["label"]) for r in rows])
    top5 = np.argsort(-cosine_similarity(q, img), axis=1)[:, :5]  # (Q, 5)
    return (y[top5] == qy[:, None]).mean(axis=1), qy


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True)
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--cache", required=True)
    ap.add_argument("--prompts", default=str(HERE / "text_generalisation_prompts.yaml"))
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    import medalign
    from medalign.data.schema import CLASSES
    from medalign.eval.bootstrap import bootstrap_ci, format_ci
    from medalign.eval.zeroshot import PROMPTS_FILE

    m = medalign.load(args.run, cache_dir=args.cache)
    ids, y = load_cohort(args.manifest)
    img = m.encode_image(ids)  # (N, E)
    res: dict = {"run": args.run, "manifest": args.manifest, "n_images": len(ids)}
    acc = lambda ok: float(np.mean(ok))  # noqa: E731
    for name, path in (("test_prompts", args.prompts), ("shipped_prompts", str(PROMPTS_FILE))):
        for mode, ok in zero_shot_correct(m, img, y, path).items():
            ci = bootstrap_ci(acc, ok, n=args.n_boot, seed=0)
            res[f"zero_shot/{name}/{mode}"] = ci
            print(f"zero-shot {name:16s} {mode:15s} accuracy {format_ci(ci)} (n={len(ok)})")
    p5, qy = corpus_precision_at_5(m, img, y)
    ci = bootstrap_ci(np.mean, p5, n=args.n_boot, seed=0)
    res["corpus_test_queries/precision@5"] = ci
    res["corpus_test_queries/precision@5_by_class"] = {c: float(p5[qy == k].mean()) for k, c in enumerate(CLASSES)}
    print(f"corpus test impressions as queries: class precision@5 {format_ci(ci)} (n={len(p5)} queries)")
    print("  by class: " + ", ".join(f"{c} {v:.2f}" for c, v in res["corpus_test_queries/precision@5_by_class"].items()))
    if args.out:
        from medalign.utils import atomic_write_json
        atomic_write_json(args.out, json.loads(json.dumps(res, default=float)))


if __name__ == "__main__":
    main()
