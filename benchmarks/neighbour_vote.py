"""Held-out accuracy of the nearest training studies' vote against the prompts, on the same embeddings.

    python benchmarks/neighbour_vote.py RUN [RUN ...] --train-cohort C --heldout H [--splits train] [--k 10]
                                        [--weight 1] [--alone flair] [--checkpoint best|last] [--out results.json]

The vote (``nearest_synthetic.py``'s readout without prompts: the majority class of a study's ``k``
nearest training studies by cosine in the run's image space, a tie to the nearest's) reads a study
through the studies the run was trained on instead of through the prompts. Before it can stand for a
model's calls on real scans it must do as well as the prompts on data no choice was made on: a held-out
``synth brain`` cohort H. Each study of H is embedded with every sequence the run reads and compared with
the training studies of C (``--splits``, default ``train``: the run's own) that have the same sequences;
with ``--alone SEQ`` also with that sequence by itself, against the training studies' SEQ alone (as a
FLAIR-only clinical study is read). On the same embeddings, zero-shot is ``medalign classify``'s protocol
(shipped prompts, ensemble pooling). ``--weight W`` < 1 reads the blend ``medalign classify --neighbours W``
computes instead of the vote alone: W x the class shares among the k + (1 - W) x the zero-shot probabilities.
Per run and view: both readouts' accuracy with a Wilson 95 % interval and per class; then their means over
the runs and the right calls per class summed over them (issue 20, stops 69-71).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from finding_calls import cohort_studies  # noqa: E402


def view_embeddings(model, studies: list[dict], sequences: tuple[str, ...]) -> tuple[list[dict], np.ndarray | None]:
    """The studies that have every one of ``sequences`` and their embeddings (N, E) through those only."""
    have = [s for s in studies if all(q in s["files"] for q in sequences)]
    if not have:
        return [], None
    return have, model.encode_image([{q: s["files"][q] for q in sequences} for s in have])


def vote_calls(train: np.ndarray, train_labels: list[str], test: np.ndarray, k: int, weight: float = 1.0,
               zero_shot: tuple[list[str], np.ndarray] | None = None) -> list[str]:
    """Each test embedding's call from its ``k`` nearest training embeddings (cosine): their vote, or with
    ``weight`` < 1 the blend with ``zero_shot`` (classes, probabilities (N, C)) that ``classify`` computes."""
    from medalign.eval.neighbours import neighbour_vote

    classes = zero_shot[0] if zero_shot else sorted(set(train_labels))
    shares, calls, _ = neighbour_vote(test, train, train_labels, classes, k=k)
    if weight < 1:
        calls = (weight * shares + (1 - weight) * zero_shot[1]).argmax(axis=1)  # (N,)
    return [classes[int(c)] for c in calls]


def scored(calls: list[str], labels: list[str]) -> dict:
    """Right calls with their Wilson 95 % interval, and per class right of n."""
    from medalign.eval.bootstrap import wilson_ci

    right = [c == y for c, y in zip(calls, labels)]
    per_class = {y: [sum(r for r, t in zip(right, labels) if t == y), labels.count(y)] for y in sorted(set(labels))}
    return {**wilson_ci(sum(right), len(right)), "per_class": per_class}


def pooled_per_class(rows: list[dict]) -> dict:
    """{class: [right, n]} summed over runs' ``per_class`` tables."""
    out: dict = {}
    for row in rows:
        for cls, (right, n) in row.items():
            t = out.setdefault(cls, [0, 0])
            t[0] += right
            t[1] += n
    return dict(sorted(out.items()))


def run_views(model, train: list[dict], heldout: list[dict], alone: list[str], k: int, weight: float = 1.0) -> dict:
    """{view: {n, vote, zero_shot}} for the full view (every sequence the run reads) and each ``alone`` one."""
    views = {"full": tuple(model.sequences), **{f"{s} alone": (s,) for s in alone if s in model.sequences}}
    out = {}
    for view, seqs in views.items():
        tr, tr_emb = view_embeddings(model, train, seqs)
        te, te_emb = view_embeddings(model, heldout, seqs)
        if tr_emb is None or te_emb is None:
            continue
        labels = [s["label"] for s in te]
        classes, prob = model.zero_shot_probabilities(te_emb)
        out[view] = {"n": len(te), "n_train": len(tr),
                     "vote": scored(vote_calls(tr_emb, [s["label"] for s in tr], te_emb, k, weight, (classes, prob)),
                                    labels),
                     "zero_shot": scored([classes[int(i)] for i in prob.argmax(axis=1)], labels)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--train-cohort", type=Path, required=True, help="the `synth brain` output the runs trained on")
    ap.add_argument("--heldout", type=Path, required=True, help="a `synth brain` output no choice was made on")
    ap.add_argument("--splits", default="train", help="comma-separated splits of --train-cohort to vote among")
    ap.add_argument("--k", type=int, default=10, help="neighbours per study")
    ap.add_argument("--weight", type=float, default=1.0, help="the vote's weight against zero-shot (classify's "
                    "--neighbours; 1: the vote alone)")
    ap.add_argument("--alone", default="", help="comma-separated sequences also read alone (e.g. flair)")
    ap.add_argument("--checkpoint", default="best", help="best (validation-selected, as classify loads) or last")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    if a.k < 1:
        raise SystemExit(f"--k must be >= 1, got {a.k}")
    if not 0 < a.weight <= 1:
        raise SystemExit(f"--weight must be in (0, 1], got {a.weight}")
    import logging

    import medalign
    from medalign.utils import atomic_write_json

    logging.getLogger("medalign.api").setLevel(logging.ERROR)
    splits = {s.strip() for s in a.splits.split(",") if s.strip()} or None
    alone = [s.strip() for s in a.alone.split(",") if s.strip()]
    out: dict = {"train_cohort": str(a.train_cohort), "heldout": str(a.heldout), "splits": a.splits, "k": a.k,
                 "weight": a.weight, "checkpoint": a.checkpoint, "runs": {}, "mean": {}, "per_class": {}}
    for run in a.runs:
        m = medalign.load(run, checkpoint=a.checkpoint)
        train = cohort_studies(a.train_cohort, list(m.sequences), splits)
        heldout = cohort_studies(a.heldout, list(m.sequences))
        if not train or not heldout:
            raise SystemExit(f"{a.train_cohort if not train else a.heldout}: no study with any of {list(m.sequences)}"
                             + (f" in splits {sorted(splits)}" if splits and not train else ""))
        out["runs"][run] = rows = run_views(m, train, heldout, alone, a.k, a.weight)
        for view, r in rows.items():
            print(f"{Path(run).name:<20} {view:<12} n {r['n']:>4}  vote {r['vote']['value']:.3f}  "
                  f"zero-shot {r['zero_shot']['value']:.3f}  (k {a.k} of {r['n_train']} training studies)", flush=True)
    for view in dict.fromkeys(v for rows in out["runs"].values() for v in rows):
        got = [rows[view] for rows in out["runs"].values() if view in rows]
        out["mean"][view] = {r: float(np.mean([g[r]["value"] for g in got])) for r in ("vote", "zero_shot")}
        print(f"mean over {len(got)} run(s), {view}: vote {out['mean'][view]['vote']:.3f}, "
              f"zero-shot {out['mean'][view]['zero_shot']:.3f}")
        # per class, pooled over the runs: an overall accuracy within a bar can hide one class paying for another
        # (issue 20, stop 71: the blend's held-out infarct recall)
        out["per_class"][view] = pooled = {r: pooled_per_class([g[r]["per_class"] for g in got])
                                           for r in ("vote", "zero_shot")}
        for cls in pooled["vote"]:
            (rv, n), (rz, _) = pooled["vote"][cls], pooled["zero_shot"][cls]
            print(f"  {cls:<12} vote {rv}/{n} ({rv / n:.3f})  zero-shot {rz}/{n} ({rz / n:.3f})")
    if a.out:
        atomic_write_json(a.out, out)


if __name__ == "__main__":
    main()
