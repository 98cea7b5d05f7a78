"""Zero-shot accuracy of trained runs under several prompt sets, on the same image embeddings.

    python benchmarks/prompt_sets.py RUN [RUN ...] --prompts A.yaml [B.yaml ...] --dev DEV [--heldout HELD]
                                     [--alone flair] [--shared ../shared/data] [--out results.json]

Each run embeds once: every study of the ``synth brain`` cohorts DEV and HELD with all the sequences it
reads, DEV's studies with each sequence of ``--alone`` by itself, and the real cases of
``../shared/data`` as ``real_cases.py`` does; then every prompt set scores those embeddings with
``medalign classify``'s protocol (ensemble pooling, softmax of the run's logit scale), so the sets
differ only in their prompts. ``shipped`` is ``medalign/eval/prompts.yaml``; a set may give a class
``subclasses`` (``eval/zeroshot.py``: each pooled alone, the class takes their max). Choose a set on
DEV; HELD and the real cases are for reporting. Per set: accuracy per run and the mean, right per
class, and the real cases' calls.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from finding_calls import cohort_studies  # noqa: E402
from real_cases import DEFAULT_SHARED, real_cases  # noqa: E402


def accuracy(classes: list[str], p: np.ndarray, labels: list[str]) -> dict:
    """{acc, right {class: [right, n]}, calls} of probabilities ``p`` (N, C) against ``labels``."""
    pred = [classes[int(i)] for i in p.argmax(1)]
    right = {c: [sum(a == b == c for a, b in zip(pred, labels)), labels.count(c)] for c in classes if c in labels}
    return {"acc": round(float(np.mean([a == b for a, b in zip(pred, labels)])), 4), "right": right, "calls": pred}


def run_embeddings(model, dev: Path, heldout: Path | None, alone: list[str], shared: Path) -> dict:
    """{view: (embeddings (N, E), labels, names)} for the views this run can be scored on."""
    views: dict = {}
    studies = cohort_studies(dev, list(model.sequences))
    views["dev"] = (model.encode_image([s["files"] for s in studies]), [s["label"] for s in studies],
                    [s["study"] for s in studies])
    for seq in (q for q in alone if q in model.sequences):
        have = [s for s in studies if seq in s["files"]]
        if have:
            views[f"dev {seq} alone"] = (model.encode_image([{seq: s["files"][seq]} for s in have]),
                                         [s["label"] for s in have], [s["study"] for s in have])
    if heldout is not None:
        held = cohort_studies(heldout, list(model.sequences))
        views["heldout"] = (model.encode_image([s["files"] for s in held]), [s["label"] for s in held],
                            [s["study"] for s in held])
    cases = [c for c in real_cases(shared) if any(q in model.sequences for q in c["files"])]
    if cases:
        items = [{q: f for q, f in c["files"].items() if q in model.sequences} for c in cases]
        views["real"] = (model.encode_image(items), [c["class"] for c in cases], [c["case"] for c in cases])
    return views


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--prompts", nargs="+", default=[], help="prompt YAMLs to compare with the shipped set")
    ap.add_argument("--dev", type=Path, required=True, help="a `synth brain` cohort where the choice is made")
    ap.add_argument("--heldout", type=Path, default=None, help="a `synth brain` cohort for reporting")
    ap.add_argument("--alone", default="flair", help="comma-separated sequences to show alone on DEV ('' for none)")
    ap.add_argument("--shared", type=Path, default=DEFAULT_SHARED)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()

    import logging

    import medalign
    from medalign.eval.zeroshot import PROMPTS_FILE
    from medalign.utils import atomic_write_json

    logging.getLogger("medalign.api").setLevel(logging.ERROR)
    sets = {"shipped": str(PROMPTS_FILE), **{Path(p).stem: str(p) for p in a.prompts}}
    alone = [s.strip() for s in a.alone.split(",") if s.strip()]
    out: dict = {"prompt_sets": sets, "dev": str(a.dev), "heldout": str(a.heldout) if a.heldout else None, "runs": {}}
    for run in a.runs:
        m = medalign.load(run)
        views = run_embeddings(m, a.dev, a.heldout, alone, a.shared)
        stacked = np.concatenate([emb for emb, _, _ in views.values()])  # (sum N_view, E): one scoring per set
        ends = np.cumsum([len(emb) for emb, _, _ in views.values()])
        res = {}
        for name, path in sets.items():
            classes, p = m.zero_shot_probabilities(stacked, prompts=path)
            res[name] = {view: {**accuracy(classes, pv, labels), "names": names}
                         for (view, (_, labels, names)), pv in zip(views.items(), np.split(p, ends[:-1]))}
        out["runs"][run] = res
        print(f"{Path(run).name:<20} " + "  ".join(
            f"{name}: " + " ".join(f"{v} {r['acc']:.3f}" for v, r in res[name].items() if v != "real")
            for name in sets), flush=True)
    print("== mean over runs")
    for name in sets:
        means = {}
        for view in next(iter(out["runs"].values()))[name]:
            rows = [r[name][view] for r in out["runs"].values()]
            if view == "real":
                right: dict = {}
                for row in rows:
                    for c, (k, n) in row["right"].items():
                        right[c] = [right.get(c, [0, 0])[0] + k, right.get(c, [0, 0])[1] + n]
                means[view] = ", ".join(f"{c} {k}/{n}" for c, (k, n) in sorted(right.items()))
            else:
                means[view] = f"{np.mean([row['acc'] for row in rows]):.4f}"
        print(f"  {name:<16} " + "  ".join(f"{v}: {s}" for v, s in means.items()))
    if a.out:
        atomic_write_json(a.out, out)


if __name__ == "__main__":
    main()
