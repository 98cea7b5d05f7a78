"""Is a one-sequence study missed for want of a prior? Zero-shot class biases fitted per input on the
run's own labelled studies, and what they change on a dev cohort and on the real cases.

    python benchmarks/zero_shot_calibration.py RUN [RUN ...] --cohort DEV [--alone flair]
        [--fit-splits train,val] [--l2 0.01] [--checkpoint best|last] [--shared ../shared/data] [--out F]

Per run and input (every sequence the run reads; each ``--alone`` sequence by itself), one bias per
class is added to the zero-shot log-probabilities of ``medalign classify`` (shipped prompts, ensemble
pooling) and fitted by class-balanced cross-entropy with an L2 penalty ``--l2`` (prior correction,
as logit adjustment does for a shifted label distribution). Fit set: the studies of the run's
manifest in ``--fit-splits``, read from the run's cache, a one-sequence input with the other
channels masked out as sequence dropout masks them in training: the labelled data a user of the
synthetic cohort has. Reported: the biases; accuracy on the fit set and per class and finding of
``--cohort`` (a ``synth brain`` output read from its NIfTI files, as ``classify`` reads a study)
before -> after; and the real cases of ``real_cases.py`` that show the input's sequences. A prior
can move calls between classes the features already separate; it cannot create a class the
features do not hold. No choice of the shipped protocol is made here.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from finding_calls import cohort_studies, summarise  # noqa: E402
from real_cases import DEFAULT_SHARED, real_cases  # noqa: E402


def fit_biases(logp: np.ndarray, y: np.ndarray, l2: float = 0.01) -> np.ndarray:
    """Class biases (C,), mean 0, minimising the class-balanced cross-entropy of softmax(``logp`` + b)
    against labels ``y`` (N,) plus ``l2`` * |b|^2; ``logp`` (N, C) are log-probabilities."""
    from scipy.optimize import minimize

    n_cls = logp.shape[1]
    w = 1.0 / np.bincount(y, minlength=n_cls)[y]  # (N,) each present class weighs the same

    def loss(b: np.ndarray) -> tuple[float, np.ndarray]:
        z = logp + b
        z = z - z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)  # (N, C)
        onehot = np.eye(n_cls)[y]
        nll = -(w * np.log(p[np.arange(len(y)), y] + 1e-12)).sum() / w.sum()
        grad = (w[:, None] * (p - onehot)).sum(0) / w.sum()
        return nll + l2 * float(b @ b), grad + 2 * l2 * b

    b = minimize(loss, np.zeros(n_cls), jac=True, method="L-BFGS-B").x
    return b - b.mean()


def apply_biases(p: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Probabilities (N, C) ``p`` re-weighted by exp(``b``) and renormalised."""
    q = p * np.exp(b)[None]
    return q / q.sum(axis=1, keepdims=True)


def fit_sets(model, splits: set[str], views: dict[str, str | None]) -> dict[str, tuple[list[str], np.ndarray]]:
    """{view: (labels, embeddings (N, E))} of the run's manifest studies in ``splits``, each read once
    from the run's cache; a view ``seq`` masks every other channel out (None: as cached)."""
    import pandas as pd

    man = pd.read_csv(model.config["data"]["manifest"], dtype=str, keep_default_na=False)
    rows = man[man["split"].isin(splits) & (man["label"] != "")]
    if rows.empty:
        raise SystemExit(f"{model.run_dir}: its manifest has no labelled study in splits {sorted(splits)}")
    seqs = np.asarray(model.sequences)
    out: dict[str, tuple[list[str], list]] = {name: ([], []) for name in views}
    for sid, label in zip(rows["study_id"], rows["label"]):
        img, present = model._one(sid)  # (C, D, H, W), (C,)
        img, present = img.numpy(), present.numpy()
        for name, seq in views.items():
            mask = present if seq is None else present & (seqs == seq)
            if mask.any():  # a study without the view's sequence is left out of it
                out[name][0].append(label)
                out[name][1].append(model.encode_image(img * mask[:, None, None, None], mask)[0])
    return {name: (labels, np.stack(emb)) for name, (labels, emb) in out.items()}


def _view_files(files: dict[str, str], seq: str | None, sequences: tuple[str, ...]) -> dict[str, str] | None:
    """The files of one study as the view shows them (``seq`` alone, or every one the run reads); None
    when the study does not have that input."""
    have = {k: v for k, v in files.items() if k in sequences}
    if seq is None:
        return have or None
    return {seq: have[seq]} if seq in have else None


def calibrate_view(model, seq: str | None, fit: tuple[list[str], np.ndarray], dev: list[dict], real: list[dict],
                   l2: float) -> dict:
    """Biases of one input (``seq`` alone, or every sequence when None), fitted on ``fit`` (labels,
    embeddings), and their effect on ``dev`` studies and ``real`` cases."""
    labels, x = fit
    classes, p_fit = model.zero_shot_probabilities(x)
    y = np.array([classes.index(lab) for lab in labels])
    b = fit_biases(np.log(p_fit + 1e-12), y, l2)
    out: dict = {"biases": {c: round(float(v), 3) for c, v in zip(classes, b)},
                 "fit_accuracy": [round(float((p_fit.argmax(1) == y).mean()), 3),
                                  round(float((apply_biases(p_fit, b).argmax(1) == y).mean()), 3)], "fit_n": len(y)}
    view = [{**s, "files": f} for s in dev if (f := _view_files(s["files"], seq, model.sequences))]
    if view:
        _, p = model.zero_shot_probabilities(model.encode_image([s["files"] for s in view]))
        out["cohort"] = {"before": summarise(view, classes, p), "after": summarise(view, classes, apply_biases(p, b))}
    # real cases only as they come: a one-sequence view takes the cases that have that sequence alone
    cases = [(c, f) for c in real if (f := _view_files(c["files"], seq, model.sequences))
             and (seq is None or len(set(c["files"]) & set(model.sequences)) == 1)]
    if cases:
        _, p = model.zero_shot_probabilities(model.encode_image([f for _, f in cases]))
        q = apply_biases(p, b)
        out["real"] = [{"case": c["case"], "true": c["class"], "before": classes[int(pi.argmax())],
                        "after": classes[int(qi.argmax())], "p_true": [round(float(pi[classes.index(c["class"])]), 3),
                                                                       round(float(qi[classes.index(c["class"])]), 3)]}
                       for (c, _), pi, qi in zip(cases, p, q)]
    return out


def _print(run: str, name: str, r: dict) -> None:
    print(f"== {Path(run).name}: {name}  biases " + ", ".join(f"{c} {v:+.2f}" for c, v in r["biases"].items()))
    print(f"  fit set ({r['fit_n']} studies) right {r['fit_accuracy'][0]:.3f} -> {r['fit_accuracy'][1]:.3f}")
    for g, before in sorted(r.get("cohort", {}).get("before", {}).items()):
        after = r["cohort"]["after"][g]
        print(f"  {g:<34} right {before['right']:>3} -> {after['right']:<3}/{before['n']:<3} "
              f"p(true) {before['p_true']:.2f} -> {after['p_true']:.2f}")
    for c in r.get("real", []):
        print(f"  real {c['case']:<32} true {c['true']:<7} {c['before']:<10} -> {c['after']:<10} "
              f"p(true) {c['p_true'][0]:.2f} -> {c['p_true'][1]:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--cohort", type=Path, required=True, help="a `synth brain` output (the dev cohort)")
    ap.add_argument("--alone", default="flair", help="comma-separated sequences to calibrate alone ('' for none)")
    ap.add_argument("--fit-splits", default="train,val")
    ap.add_argument("--l2", type=float, default=0.01)
    ap.add_argument("--checkpoint", default="best")
    ap.add_argument("--shared", type=Path, default=DEFAULT_SHARED)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    import logging

    import medalign
    from medalign.utils import atomic_write_json

    logging.getLogger("medalign.api").setLevel(logging.ERROR)
    splits = {s.strip() for s in a.fit_splits.split(",") if s.strip()}
    real = real_cases(a.shared) if a.shared.is_dir() else []
    out: dict = {"cohort": str(a.cohort), "fit_splits": sorted(splits), "l2": a.l2, "runs": {}}
    for run in a.runs:
        m = medalign.load(run, checkpoint=a.checkpoint)
        dev = cohort_studies(a.cohort, list(m.sequences))
        views = {"+".join(m.sequences): None, **{f"{s} alone": s for s in (x.strip() for x in a.alone.split(",")) if s in m.sequences}}
        fits = fit_sets(m, splits, views)
        out["runs"][run] = {}
        for name, seq in views.items():
            r = calibrate_view(m, seq, fits[name], dev, real, a.l2)
            out["runs"][run][name] = r
            _print(run, name, r)
    if a.out:
        atomic_write_json(a.out, out)


if __name__ == "__main__":
    main()
