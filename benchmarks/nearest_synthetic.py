"""Which synthetic studies each real case sits nearest to, in a trained run's image embedding space.

    python benchmarks/nearest_synthetic.py RUN [RUN ...] --cohort COHORT [--splits train] [--k 10]
                                           [--shared ../shared/data] [--out results.json]

A sim-to-real check that needs no prompts: a model that has learnt a finding on the synthetic cohort
should embed a real case of that finding near the synthetic studies of it. Each real case of
``../shared/data`` (``real_cases.py``) is embedded with the sequences it has that the run reads, as
``real_cases.py`` and ``medalign classify`` see it; every study of COHORT (a ``synth brain`` output;
``--splits train`` = the run's own training studies) is embedded with the same sequences only (a
FLAIR-only real case is compared with the synthetic FLAIRs alone), so like is compared with like. Per
case and run: the findings of its ``k`` nearest synthetic studies by cosine similarity (grouped as
``finding_calls.py`` groups them, small vessel disease by Fazekas grade), the share of them in the
case's own class, and the nearest similarity; then the counts summed over the runs.
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from finding_calls import cohort_studies  # noqa: E402
from real_cases import DEFAULT_SHARED, real_cases  # noqa: E402


def nearest(real: np.ndarray, synthetic: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (k,) of the ``k`` rows of ``synthetic`` (N, E) nearest to ``real`` (E,) by cosine, nearest
    first, and their similarities (k,)."""
    s = synthetic / np.maximum(np.linalg.norm(synthetic, axis=1, keepdims=True), 1e-12)  # (N, E)
    sim = s @ (real / max(float(np.linalg.norm(real)), 1e-12))  # (N,)
    top = np.argsort(-sim, kind="stable")[:k]
    return top, sim[top]


def case_neighbours(model, case: dict, studies: list[dict], k: int, memo: dict) -> dict | None:
    """{sequences, groups {finding group: count}, own_class (share of the k in the case's class), top_similarity}
    of one real case, or None when the run reads none of its sequences. ``memo`` keeps the synthetic
    embeddings per sequence set (every case with the same sequences reuses them)."""
    seqs = tuple(s for s in model.sequences if s in case["files"])
    if not seqs:
        return None
    if seqs not in memo:
        have = [s for s in studies if all(q in s["files"] for q in seqs)]
        memo[seqs] = (have, model.encode_image([{q: s["files"][q] for q in seqs} for s in have]) if have else None)
    have, emb = memo[seqs]
    if emb is None:
        return None
    real = model.encode_image([{q: case["files"][q] for q in seqs}])[0]
    top, sim = nearest(real, emb, min(k, len(have)))
    groups = Counter(have[j]["group"] for j in top)
    own = sum(have[j]["label"] == case["class"] for j in top) / len(top)
    return {"sequences": list(seqs), "groups": dict(groups.most_common()), "own_class": round(own, 3),
            "top_similarity": round(float(sim[0]), 4), "neighbours": [have[j]["study"] for j in top]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--cohort", type=Path, required=True, help="a `synth brain` output folder")
    ap.add_argument("--splits", default="", help="comma-separated splits to keep (e.g. train: the run's own studies)")
    ap.add_argument("--k", type=int, default=10, help="neighbours per case")
    ap.add_argument("--shared", type=Path, default=DEFAULT_SHARED)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    if a.k < 1:
        raise SystemExit(f"--k must be >= 1, got {a.k}")

    import logging

    import medalign
    from medalign.utils import atomic_write_json

    logging.getLogger("medalign.api").setLevel(logging.ERROR)
    cases = real_cases(a.shared)
    if not cases:
        raise SystemExit(f"no real cases under {a.shared}")
    splits = {s.strip() for s in a.splits.split(",") if s.strip()} or None
    out: dict = {"cohort": str(a.cohort), "splits": a.splits, "k": a.k, "runs": {}, "summed": {}}
    summed: dict[str, Counter] = {}
    for run in a.runs:
        m = medalign.load(run)
        studies = cohort_studies(a.cohort, list(m.sequences), splits)
        if not studies:
            raise SystemExit(f"{a.cohort}: no study with any of {list(m.sequences)}")
        memo: dict = {}
        rows = {}
        for c in cases:
            r = case_neighbours(m, c, studies, a.k, memo)
            if r is None:
                continue
            rows[c["case"]] = r
            summed.setdefault(c["case"], Counter()).update(r["groups"])
            near = ", ".join(f"{g} {n}" for g, n in list(r["groups"].items())[:4])
            print(f"{Path(run).name:<20} {c['case']:<34} {'+'.join(r['sequences']):<6} own class {r['own_class']:.1f}  "
                  f"nearest: {near}  (top cos {r['top_similarity']:.3f})", flush=True)
        out["runs"][run] = rows
    print(f"== the {a.k} nearest synthetic studies of each case, summed over {len(a.runs)} run(s)")
    for case, cnt in summed.items():
        out["summed"][case] = dict(cnt.most_common())
        print(f"  {case:<34} " + ", ".join(f"{g} {n}" for g, n in cnt.most_common(6)))
    if a.out:
        atomic_write_json(a.out, out)


if __name__ == "__main__":
    main()
