"""Does a model's image side carry a finding at all? Cross-validated linear-probe AUC of one group
of a synthetic cohort's studies against another (default: white-matter disease vs normal).

    python benchmarks/feature_probe.py RUN [RUN ...] --cohort SYNTH_DIR
        [--positive wmh,demyelination] [--negative normal] [--sequences dwi,t2s,flair|flair]
        [--folds 5] [--real ../shared/data] [--out results.json]

Per run and per input (every sequence the run reads, and FLAIR alone as the real clinical WMH
were acquired): the image encoder's pooled features (what the projection sees), the image
embedding (what zero-shot and retrieval use) and two references that need no training: upper
percentiles of each preprocessed sequence's intensities inside the head (what a bright-lesion
detector without any shape could read), and the same of its local contrast (each voxel minus the
median of the head voxels in its 9x9 in-plane neighbourhood, plus the share of voxels above 0.5-2 SD: a thin bright
lesion on darker white matter, wherever it is), each through a standardised L2 logistic regression
(C = 0.1), ``--folds``-fold stratified cross-validation (out-of-fold probabilities, one AUC over
all studies), with a 95 % bootstrap CI over studies. Zero-shot and lesion erasing
(``lesion_reliance.py``) ask whether a model *uses* a finding; this asks whether its features
hold it: near 0.5, no prompt or pooling can find it. ``--real SHARED`` also fits each probe on
all the cohort's studies and scores the real cases (``real_cases.py``, with the same sequences):
a real WMH FLAIR the synthetic axis puts among the normals is a gap of the generator, not of the
classifier on top. Variants are a study's first finding
(``ground_truth.json``); ``normal`` = the studies labelled normal.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def cohort_groups(cohort: Path, positive: list[str], negative: list[str], sequences: list[str]) -> list[dict]:
    """[{case, y, files}] of the studies whose first finding's variant (or label ``normal``) is in
    ``positive`` (y 1) or ``negative`` (y 0), with the files of ``sequences`` they have."""
    items = []
    for gt in sorted(cohort.glob("*/ground_truth.json")):
        t = json.loads(gt.read_text(encoding="utf-8"))
        f = (t.get("findings") or [{}])[0]
        kind = "normal" if t["label"] == "normal" else f.get("variant")
        files = {s: str(gt.parent / f"{s}.nii.gz") for s in sequences if (gt.parent / f"{s}.nii.gz").is_file()}
        if files and kind in positive + negative:
            items.append({"case": t["study_id"], "y": int(kind in positive), "files": files})
    return items


def probe_auc(x: np.ndarray, y: np.ndarray, folds: int = 5, seed: int = 0, n_boot: int = 1000) -> dict:
    """Out-of-fold logistic-probe AUC of features ``x`` (N, F) for labels ``y`` (N,), with a
    bootstrap CI over studies: {"auc", "lo", "hi"}."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = int(min(folds, np.bincount(y).min()))
    if folds < 2:
        raise ValueError(f"need at least 2 studies of each group for a cross-validated probe, got {np.bincount(y)}")
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=5000))
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    p = cross_val_predict(clf, x, y, cv=cv, method="predict_proba")[:, 1]  # (N,) out of fold
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        i = rng.integers(0, len(y), len(y))
        if 0 < y[i].sum() < len(i):
            boots.append(roc_auc_score(y[i], p[i]))
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return {"auc": float(roc_auc_score(y, p)), "lo": float(lo), "hi": float(hi)}


PERCENTILES = (50, 75, 90, 95, 98, 99, 99.5, 99.9)


def intensity_features(image: np.ndarray, present: np.ndarray) -> np.ndarray:
    """(C * len(PERCENTILES),) upper percentiles of each present channel of a preprocessed study
    (C, D, H, W) inside the head (preprocessing sets every voxel outside it to exactly 0); 0 for
    absent channels."""
    out = np.zeros((len(present), len(PERCENTILES)), np.float32)
    for c in np.flatnonzero(present):
        v = image[c][image[c] != 0]
        if v.size:
            out[c] = np.percentile(v, PERCENTILES)
    return out.ravel()


CONTRAST_WINDOW = (1, 9, 9)  # (D, H, W) voxels of the median a voxel's local contrast is taken against
CONTRAST_LEVELS = (0.5, 1.0, 1.5, 2.0)  # z units (preprocessing normalises each sequence inside the head)


def local_contrast_features(image: np.ndarray, present: np.ndarray) -> np.ndarray:
    """(C * (4 + len(CONTRAST_LEVELS)),) per present channel of a preprocessed study (C, D, H, W):
    the 95/99/99.5/99.9th percentiles of the local contrast inside the head (the voxel minus the
    median of the head voxels in its ``CONTRAST_WINDOW``; outside the head left out, so the head's
    edge is no contrast) and the share of head voxels above each of ``CONTRAST_LEVELS``; 0 for
    absent channels."""
    from numpy.lib.stride_tricks import sliding_window_view

    n = 4 + len(CONTRAST_LEVELS)
    out = np.zeros((len(present), n), np.float32)
    pad = [(w // 2, w // 2) for w in CONTRAST_WINDOW]
    for c in np.flatnonzero(present):
        head = image[c] != 0
        if not head.any():
            continue
        x = np.pad(np.where(head, image[c], np.nan), pad, constant_values=np.nan)  # (D + 2a, H + 2b, W + 2b)
        win = sliding_window_view(x, CONTRAST_WINDOW)[head]  # (voxels in the head, *CONTRAST_WINDOW)
        r = image[c][head] - np.nanmedian(win.reshape(len(win), -1), axis=1)  # (voxels in the head,)
        out[c] = [*np.percentile(r, (95, 99, 99.5, 99.9)), *[(r > t).mean() for t in CONTRAST_LEVELS]]
    return out.ravel()


def features(model, items: list[dict]) -> dict[str, np.ndarray]:
    """{"features": pooled encoder features (N, F), "embedding": image embeddings (N, E),
    "intensity": :func:`intensity_features`, "local_contrast": :func:`local_contrast_features`} of
    ``items``' files."""
    import torch

    feats, inten, local, emb = [], [], [], []
    rec = model.recipe
    for it in items:
        image, mask = model._one(it["files"])  # (C, D, H, W), (C,): preprocessed once, used for all four
        inten.append(intensity_features(image.numpy(), mask.numpy()))
        local.append(local_contrast_features(image.numpy(), mask.numpy()))
        with torch.no_grad():
            enc = rec.image_encoder(image[None].to(model.device), mask[None].to(model.device))
        feats.append(enc["global"][0].cpu())  # (F,) pooled, before the projection
        emb.append(model.encode_image(image, mask)[0])  # (E,)
    return {"features": torch.stack(feats).float().numpy(), "embedding": np.stack(emb), "intensity": np.stack(inten),
            "local_contrast": np.stack(local)}


def real_scores(x: np.ndarray, y: np.ndarray, x_real: np.ndarray) -> np.ndarray:
    """p(positive) of real studies ``x_real`` (M, F) under the probe fit on all synthetic studies
    ``x`` (N, F), ``y`` (N,): where a real case lands on the synthetic cohort's axis."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=5000)).fit(x, y)
    return clf.predict_proba(x_real)[:, 1]


def real_items(shared: Path, sequences: list[str]) -> list[dict]:
    """The real cases of ``real_cases.py`` showing only ``sequences`` ({case, class, files}); cases
    with none of them are left out."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from real_cases import real_cases

    out = []
    for c in real_cases(shared):
        files = {k: v for k, v in c["files"].items() if k in sequences}
        if files:
            out.append({"case": c["case"], "class": c["class"], "files": files})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--cohort", type=Path, required=True, help="a `synth brain` output folder")
    ap.add_argument("--positive", default="wmh,demyelination")
    ap.add_argument("--negative", default="normal")
    ap.add_argument("--sequences", default=None,
                    help="comma list; default: every sequence the run reads, then FLAIR alone")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--real", type=Path, default=None, metavar="SHARED",
                    help="also fit each probe on all the cohort's studies and score the real cases under SHARED "
                         "(../shared/data): p(positive) per case")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    import logging

    import medalign

    logging.getLogger("medalign.api").setLevel(logging.ERROR)
    result: dict = {"positive": a.positive, "negative": a.negative, "runs": {}}
    for run in a.runs:
        m = medalign.load(run)
        inputs = [a.sequences.split(",")] if a.sequences else [list(m.sequences), ["flair"]]
        result["runs"][run] = {}
        for seqs in inputs:
            items = cohort_groups(a.cohort, a.positive.split(","), a.negative.split(","), seqs)
            y = np.array([it["y"] for it in items])
            if len(items) == 0 or y.min() == y.max():
                raise SystemExit(f"{a.cohort}: no studies of both groups showing {'+'.join(seqs)}")
            row = {"n": len(items), "positive": int(y.sum())}
            feats = features(m, items)
            row.update({k: probe_auc(x, y, a.folds) for k, x in feats.items()})
            result["runs"][run]["+".join(seqs)] = row
            aucs = ", ".join(f"{k} {row[k]['auc']:.2f} [{row[k]['lo']:.2f}, {row[k]['hi']:.2f}]"
                             for k in ("features", "embedding", "intensity", "local_contrast"))
            print(f"{Path(run).name:<16} {'+'.join(seqs):<14} {a.positive} ({row['positive']}) vs {a.negative} "
                  f"({row['n'] - row['positive']}): probe AUC {aucs}", flush=True)
            real = real_items(a.real, seqs) if a.real is not None else []
            if real:
                rf = features(m, real)
                scores = {k: real_scores(feats[k], y, rf[k]) for k in feats}  # {kind: (M,)}
                row["real"] = {r["case"]: {"class": r["class"], **{k: float(scores[k][i]) for k in feats}}
                               for i, r in enumerate(real)}
                for r in real:
                    v = row["real"][r["case"]]
                    print(f"    real {r['case']:<32} {r['class']:<7} p({a.positive}): "
                          + ", ".join(f"{k} {v[k]:.2f}" for k in feats), flush=True)
    if a.out:
        from medalign.utils import atomic_write_json

        atomic_write_json(a.out, result)


if __name__ == "__main__":
    main()
