"""Probes on frozen image embeddings: logistic regression, a small MLP, kNN; label efficiency.

Image-only at inference: a probe sees only image embeddings, never the report.
"""
from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np

from medalign.eval.bootstrap import bootstrap_ci

PROBES = ("logreg", "knn", "mlp")


def stratified_subsample(y: Sequence[int], fraction: float, *, seed: int = 0) -> np.ndarray:
    """Sorted row indices of a stratified ``fraction`` of ``y``, at least one per class present."""
    y = np.asarray(y)
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if fraction >= 1:
        return np.arange(len(y))
    rng = np.random.default_rng(seed)
    idx = []
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        k = max(1, int(round(fraction * len(rows))))
        idx.extend(rng.choice(rows, size=k, replace=False).tolist())
    return np.sort(np.asarray(idx, dtype=np.int64))


def build_probe(kind: str, *, n_train: int, seed: int = 0):
    """An sklearn estimator for ``kind`` in PROBES (features standardised first)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind == "logreg":
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0, random_state=seed))
    if kind == "mlp":
        return make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(64,), alpha=1e-3,
                                                             max_iter=500, random_state=seed))
    if kind == "knn":
        # cosine kNN on embeddings; k shrinks with tiny training sets (1% fractions)
        return KNeighborsClassifier(n_neighbors=max(1, min(5, n_train)), metric="cosine")
    raise ValueError(f"unknown probe '{kind}'; allowed: {', '.join(PROBES)}")


def fit_predict_scores(kind: str, train_X: np.ndarray, train_y: np.ndarray, test_X: np.ndarray,
                       n_classes: int, *, seed: int = 0) -> np.ndarray:
    """Fit probe ``kind`` and return (N_test, n_classes) class probabilities.

    Classes absent from the training subset get probability 0; with a single training class
    the prediction is that class.
    """
    train_y = np.asarray(train_y, dtype=int)
    seen = np.unique(train_y)
    out = np.zeros((len(test_X), n_classes))
    if len(seen) == 1:
        out[:, seen[0]] = 1.0
        return out
    est = build_probe(kind, n_train=len(train_y), seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence warnings on 5-sample fits
        est.fit(train_X, train_y)
        proba = est.predict_proba(test_X)  # (N_test, n_seen)
    out[:, est.classes_] = proba
    return out


def _acc(y, s):
    return float(np.mean(np.asarray(s).argmax(1) == y))


def _bacc(y, s):
    pred = np.asarray(s).argmax(1)
    return float(np.mean([np.mean(pred[y == c] == c) for c in np.unique(y)]))


def label_efficiency(
    train_X: np.ndarray,
    train_y: Sequence[int],
    test_X: np.ndarray,
    test_y: Sequence[int],
    *,
    fractions: Sequence[float] = (0.01, 0.1, 1.0),
    probes: Sequence[str] = PROBES,
    seed: int = 0,
    n_boot: int = 200,
    n_classes: int | None = None,
    class_names: Sequence[str] | None = None,
) -> dict:
    """Train each probe on a stratified fraction of the labelled training rows; test on all.

    Returns {probe: {str(fraction): {accuracy, balanced_accuracy, macro_f1, auroc_macro,
    confusion, n_train, accuracy_ci, balanced_accuracy_ci}}} plus "fractions" and "probes".
    Rows with label < 0 (unlabelled) are dropped from both sides.
    """
    from medalign.eval.zeroshot import classification_metrics

    train_X, test_X = np.asarray(train_X, np.float64), np.asarray(test_X, np.float64)
    train_y, test_y = np.asarray(train_y, int), np.asarray(test_y, int)
    if len(train_X) != len(train_y) or len(test_X) != len(test_y):
        raise ValueError("label_efficiency: X and y row counts differ")
    tr, te = train_y >= 0, test_y >= 0
    train_X, train_y, test_X, test_y = train_X[tr], train_y[tr], test_X[te], test_y[te]
    if len(train_y) == 0 or len(test_y) == 0:
        raise ValueError("label_efficiency: no labelled rows in train or test")
    n_classes = n_classes or int(max(train_y.max(), test_y.max()) + 1)
    out: dict = {"fractions": [float(f) for f in fractions], "probes": list(probes)}
    for kind in probes:
        res = {}
        for f in fractions:
            idx = stratified_subsample(train_y, f, seed=seed)
            scores = fit_predict_scores(kind, train_X[idx], train_y[idx], test_X, n_classes, seed=seed)
            m = classification_metrics(test_y, scores, n_classes=n_classes, class_names=class_names)
            m["n_train"] = int(len(idx))
            if n_boot:
                m["accuracy_ci"] = bootstrap_ci(_acc, test_y, scores, n=n_boot, seed=seed)
                m["balanced_accuracy_ci"] = bootstrap_ci(_bacc, test_y, scores, n=n_boot, seed=seed)
            res[str(float(f))] = m
        out[kind] = res
    return out
