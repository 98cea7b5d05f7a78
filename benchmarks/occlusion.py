"""Where on the image does a call come from? Occlusion on the model's grid: each in-plane column
(``--window`` voxels square, every slice) is hidden in turn, its head voxels set to the head's
median in every sequence the study shows, and the zero-shot probabilities recomputed
(``medalign classify``'s protocol: shipped prompts, ensemble pooling).

    python benchmarks/occlusion.py RUN [RUN ...] [--shared ../shared/data] [--case wmh_2516044939]
        [--cohort SYNTH_DIR --variants wmh] [--sequences flair] [--target infarct] [--window 16]
        [--top 5] [--checkpoint best|last] [--out results.json]

Studies: as ``lesion_reliance.py`` (the real cases with a lesion mask in ``--shared``, and with
``--cohort`` the synthetic studies of ``--variants``), ``--case`` keeping those whose name holds
the text. Per study and run: the probabilities as acquired; per column the drop of p(target)
(default: the class called as acquired) when it is hidden, and the share of the lesion inside it
(the lesion located on the model's grid as the preprocessed study minus the same with its mask
erased, > 0.3, so the mask never has to be resampled by hand); the ``--top`` columns by drop, and
the probabilities with the top one hidden. A call that one column carries is made there; the
column's lesion share says whether that is the lesion (stop 54: the 34 ml real WMH's "infarct" rests
on one column with 17 % of its masked lesion and an unmasked one-sided hyperintensity).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_SHARED = HERE.parents[0] / ".." / "shared" / "data"
LESION_Z = 0.3  # preprocessed units: a voxel whose erasing lowers it by more is lesion


def occluded(image, present, window: int):
    """The study ``image`` (C, D, H, W; 0 outside the head) with each in-plane column of ``window`` x
    ``window`` voxels hidden in turn: its head voxels set to each present channel's head median.
    Returns (columns [(y, x), ...], batch (N, C, D, H, W))."""
    import torch

    if window < 1:
        raise ValueError(f"window must be >= 1 voxel, got {window}")
    head = (image != 0).any(0)  # (D, H, W)
    medians = [float(image[c][head].median()) if bool(present[c]) and head.any() else 0.0 for c in range(image.shape[0])]
    cols, batch = [], []
    for y in range(0, image.shape[-2], window):
        for x in range(0, image.shape[-1], window):
            im = image.clone()
            inside = head[:, y:y + window, x:x + window]  # (D, h, w)
            for c in range(image.shape[0]):
                if bool(present[c]):
                    im[c, :, y:y + window, x:x + window][inside] = medians[c]
            cols.append((y, x))
            batch.append(im)
    return cols, torch.stack(batch)


def lesion_shares(lesion, cols, window: int) -> np.ndarray:
    """Share of the lesion (D, H, W bool) inside each column; zeros when there is no lesion."""
    total = max(float(lesion.sum()), 1.0)
    return np.array([float(lesion[:, y:y + window, x:x + window].sum()) / total for y, x in cols])


def occlude_study(m, files: dict, erased: dict | None, *, window: int, target: str | None, top: int) -> dict:
    """Occlusion of one study under the loaded model ``m`` (see the module docstring)."""
    import torch

    image, present = m._one(files)  # (C, D, H, W), (C,): preprocessed as classify does
    cols, batch = occluded(image, present, window)
    emb = m.encode_image(torch.cat([image[None], batch]), present[None].expand(len(cols) + 1, -1))
    classes, p = m.zero_shot_probabilities(emb)  # (1 + N, K)
    called = classes[int(p[0].argmax())]
    t = classes.index(target or called)
    drop = p[0, t] - p[1:, t]  # (N,)
    shares = np.zeros(len(cols))
    if erased is not None:
        plain, _ = m._one(erased)
        shares = lesion_shares((image - plain).amax(0) > LESION_Z, cols, window)
    order = np.argsort(-drop)[:top]
    best = int(order[0])
    return {"called": called, "target": classes[t], "probabilities": dict(zip(classes, p[0].round(4).tolist())),
            "columns": [list(c) for c in cols], "drop": drop.round(4).tolist(), "lesion_share": shares.round(4).tolist(),
            "top": [{"column": list(cols[i]), "drop": round(float(drop[i]), 4), "lesion_share": round(float(shares[i]), 4)}
                    for i in order],
            "top_hidden": dict(zip(classes, p[1 + best].round(4).tolist()))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--shared", type=Path, default=DEFAULT_SHARED)
    ap.add_argument("--cohort", type=Path, default=None, help="a `synth brain` output folder")
    ap.add_argument("--variants", default="wmh")
    ap.add_argument("--sequences", default="flair", help="what each study shows (default: FLAIR alone, as the real WMH)")
    ap.add_argument("--case", default=None, help="keep the studies whose name holds this text")
    ap.add_argument("--target", default=None, help="the class whose drop is mapped (default: the one called as acquired)")
    ap.add_argument("--window", type=int, default=16, help="column size in voxels of the model's grid, in-plane")
    ap.add_argument("--top", type=int, default=5)
    ap.add_argument("--checkpoint", default="best", help="best (validation-selected, as classify loads) or last")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    import logging

    import medalign

    sys.path.insert(0, str(HERE))
    from lesion_reliance import erased_copies, real_items, synthetic_items

    logging.getLogger("medalign.api").setLevel(logging.ERROR)
    seqs = a.sequences.split(",")
    items = real_items(a.shared) if a.shared.is_dir() else []
    items = [{**it, "files": {s: p for s, p in it["files"].items() if s in seqs}} for it in items]
    items = [it for it in items if it["files"]]
    if a.cohort is not None:
        items += synthetic_items(a.cohort, a.variants.split(","), seqs)
    if a.case:
        items = [it for it in items if a.case in it["case"]]
    if not items:
        raise SystemExit(f"no study with a lesion mask showing {a.sequences} (shared {a.shared}, cohort {a.cohort}, case {a.case})")
    result: dict = {"studies": [it["case"] for it in items], "window": a.window, "checkpoint": a.checkpoint,
                    "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        erased = erased_copies(items, Path(tmp), grow=1)
        for run in a.runs:
            m = medalign.load(run, checkpoint=a.checkpoint)
            result["runs"][run] = rows = []
            for it, er in zip(items, erased):
                r = occlude_study(m, it["files"], er, window=a.window, target=a.target, top=a.top)
                rows.append({"case": it["case"], "class": it["class"], **r})
                tops = ", ".join(f"({c['column'][0]}, {c['column'][1]}) -{c['drop']:.2f} lesion {c['lesion_share']:.2f}"
                                 for c in r["top"])
                print(f"{Path(run).name:<16} {it['case']:<32} {it['class']:<7} -> {r['called']:<10} "
                      f"p({r['target']}) {r['probabilities'][r['target']]:.2f}; top columns by drop: {tops}; "
                      f"top hidden: {max(r['top_hidden'], key=r['top_hidden'].get)} "
                      f"(p({r['target']}) {r['top_hidden'][r['target']]:.2f})", flush=True)
    if a.out:
        from medalign.utils import atomic_write_json

        atomic_write_json(a.out, result)


if __name__ == "__main__":
    main()
