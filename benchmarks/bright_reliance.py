"""Does a call rest on how bright the brightest tissue is? Zero-shot class probabilities of each
study as acquired vs with one sequence's bright tail capped, and stretched, per group: the paired
change of p(true) with a 95 % bootstrap CI over studies, and where the evidence goes.

    python benchmarks/bright_reliance.py RUN [RUN ...] [--cohort SYNTH_DIR] [--sequence flair]
        [--sequences flair] [--threshold 1.5] [--gain 1.5] [--shared ../shared/data] [--out results.json]

The change is made on the preprocessed image, in the run's normalised units (by default z-scores
inside the head; outside it is 0, which a positive threshold leaves alone): every voxel of
``--sequence`` above ``--threshold`` is set to it (**capped**), or moved to ``threshold + gain x
(value - threshold)`` (**stretched**). A lesion keeps its place, shape and extent (capped at 1.5
it is still brighter than almost all tissue); only how far it stands out changes. No lesion mask is needed, so any scan can be asked; ``lesion_reliance.py``
is the complement (the lesion erased: shape and brightness gone together).

Studies: the real cases of ``real_cases.py`` (each shows what it has that the run reads), and with
``--cohort`` every study of a ``synth brain`` cohort, grouped as ``finding_calls.py`` groups them,
showing ``--sequences`` (default: FLAIR alone, as the real clinical white-matter FLAIRs were
acquired). The protocol is ``medalign classify``'s default (shipped prompts, ensemble pooling).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from finding_calls import cohort_studies  # noqa: E402
from lesion_reliance import DEFAULT_SHARED, class_changes, summarise  # noqa: E402
from real_cases import real_cases  # noqa: E402

VARIANTS = ("capped", "stretched")


def perturb(x: np.ndarray, threshold: float, gain: float) -> dict[str, np.ndarray]:
    """``x`` (any shape, normalised units) -> {variant: copy}: capped at ``threshold``, and stretched
    above it by ``gain``; voxels at or below the threshold are unchanged in both. The training
    augmentation's transform (``recipe.jitter.tail``) with fixed threshold and gain."""
    import torch

    from medalign.recipes.clip import bright_tail

    t = torch.from_numpy(np.ascontiguousarray(x))[None, None]  # (1, 1, *x.shape): one sample, one channel
    return {name: bright_tail(t, p=1.0, threshold=(threshold, threshold), gain=(g, g))[0, 0].numpy().astype(x.dtype)
            for name, g in (("capped", 0.0), ("stretched", gain))}


def studies(shared: Path, cohort: Path | None, sequences: list[str], reads: list[str]) -> list[dict]:
    """[{case, class, group, files}]: the real cases (what they have of ``reads``) and the cohort's
    studies showing ``sequences``."""
    out = []
    if shared.is_dir():
        for c in real_cases(shared):
            files = {k: v for k, v in c["files"].items() if k in reads}
            if files:
                out.append({"case": c["case"], "class": c["class"], "group": f"real {c['class']}", "files": files})
    if cohort is not None:
        for s in cohort_studies(cohort, [q for q in sequences if q in reads]):
            out.append({"case": s["study"], "class": s["label"], "group": f"synthetic {s['group']}", "files": s["files"]})
    return out


def probabilities(model, items: list[dict], sequence: str, threshold: float, gain: float) -> dict[str, list[dict]]:
    """{"as acquired" | variant: [{"probabilities": {class: p}}] per item}; an item without
    ``sequence`` is shown unchanged in every variant."""
    c = list(model.sequences).index(sequence)
    names = ("as acquired", *VARIANTS)
    emb: list[np.ndarray] = []  # per item (1 + len(VARIANTS), E): only embeddings are kept, not the images
    for it in items:
        image, mask = model._one(it["files"])  # (C, D, H, W), (C,): preprocessed once for every variant
        x = image.numpy()
        changed = perturb(x[c], threshold, gain) if bool(mask[c]) else {v: x[c] for v in VARIANTS}
        views = np.repeat(x[None], len(names), axis=0)  # (1 + V, C, D, H, W)
        for k, v in enumerate(VARIANTS, start=1):
            views[k, c] = changed[v]
        emb.append(model.encode_image(views, mask.numpy()))
    e = np.stack(emb)  # (N, 1 + V, E)
    out = {}
    for k, name in enumerate(names):
        classes, p = model.zero_shot_probabilities(e[:, k])
        out[name] = [{"probabilities": dict(zip(classes, map(float, row)))} for row in p]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--shared", type=Path, default=DEFAULT_SHARED)
    ap.add_argument("--cohort", type=Path, default=None, help="a `synth brain` output folder")
    ap.add_argument("--sequence", default="flair", help="the sequence whose bright tail is changed")
    ap.add_argument("--sequences", default="flair", help="what a synthetic study shows (default: FLAIR alone)")
    ap.add_argument("--threshold", type=float, default=1.5, help="> 0, in the run's normalised units (default z-scores)")
    ap.add_argument("--gain", type=float, default=1.5, help="the stretch above the threshold")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    if a.gain <= 0 or a.threshold <= 0:  # a threshold <= 0 would change the zeros outside the head too
        raise SystemExit(f"--threshold and --gain must be > 0, got {a.threshold} and {a.gain}")
    import logging

    import medalign
    from medalign.utils import atomic_write_json

    logging.getLogger("medalign.api").setLevel(logging.ERROR)  # "skipping t1c" is expected for 3-sequence models
    result: dict = {"sequence": a.sequence, "threshold": a.threshold, "gain": a.gain, "runs": {}}
    for run in a.runs:
        m = medalign.load(run)
        if a.sequence not in m.sequences:
            raise SystemExit(f"{run} does not read {a.sequence} (it reads {list(m.sequences)})")
        items = studies(a.shared, a.cohort, a.sequences.split(","), list(m.sequences))
        if not items:
            raise SystemExit(f"no study to classify (shared {a.shared}, cohort {a.cohort})")
        probs = probabilities(m, items, a.sequence, a.threshold, a.gain)
        groups = [it["group"] for it in items]
        p0 = np.array([r["probabilities"][it["class"]] for it, r in zip(items, probs["as acquired"])])
        res: dict = {"studies": [it["case"] for it in items], "p_true": p0.round(4).tolist()}
        for v in VARIANTS:
            p1 = np.array([r["probabilities"][it["class"]] for it, r in zip(items, probs[v])])
            summary = summarise(groups, p0, p1, key="p_true_changed")
            for g, per in class_changes(groups, probs["as acquired"], probs[v]).items():
                summary[g]["class_change"] = per
            res[v] = {"summary": summary, "p_true": p1.round(4).tolist()}
            for g, s in summary.items():
                ch = s["change"]
                ci = f" [{ch['lo']:+.2f}, {ch['hi']:+.2f}]" if "lo" in ch else ""
                moves = ", ".join(f"{k} {d:+.2f}" for k, d in s["class_change"].items())
                print(f"{Path(run).name:<20} {v:<9} {g:<34} n {s['n']:>3}  p(true) {s['p_true']:.2f} -> "
                      f"{s['p_true_changed']:.2f}  change {ch['value']:+.2f}{ci}; per class: {moves}", flush=True)
        result["runs"][run] = res
    if a.out:
        atomic_write_json(a.out, result)


if __name__ == "__main__":
    main()
