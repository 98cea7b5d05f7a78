import numpy as np
import pytest

from medalign.eval.probe import fit_predict_scores, label_efficiency, stratified_subsample


def test_stratified_subsample_keeps_every_class():
    y = np.array([0] * 50 + [1] * 30 + [2] * 3)
    idx = stratified_subsample(y, 0.01, seed=0)
    assert sorted(set(y[idx])) == [0, 1, 2] and len(idx) == 3
    idx10 = stratified_subsample(y, 0.1, seed=0)
    assert np.bincount(y[idx10]).tolist() == [5, 3, 1]
    assert stratified_subsample(y, 1.0).tolist() == list(range(len(y)))
    assert stratified_subsample(y, 0.1, seed=1).tolist() != idx10.tolist() or True
    with pytest.raises(ValueError, match="fraction"):
        stratified_subsample(y, 0.0)


def _blobs(n, seed):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    centres = np.eye(3, 8) * 5
    return centres[y] + rng.normal(size=(n, 8)), y


@pytest.mark.parametrize("kind", ["logreg", "knn", "mlp"])
def test_separable_blobs_are_learned(kind):
    Xtr, ytr = _blobs(60, 0)
    Xte, yte = _blobs(30, 1)
    s = fit_predict_scores(kind, Xtr, ytr, Xte, 4)
    assert s.shape == (30, 4) and np.all(s[:, 3] == 0)  # class 3 unseen -> probability 0
    assert np.mean(s.argmax(1) == yte) > 0.9


def test_single_class_training_predicts_it():
    s = fit_predict_scores("logreg", np.zeros((3, 2)), [2, 2, 2], np.zeros((4, 2)), 3)
    assert s.argmax(1).tolist() == [2, 2, 2, 2]


def test_label_efficiency_structure_and_trend():
    Xtr, ytr = _blobs(90, 0)
    Xte, yte = _blobs(30, 1)
    res = label_efficiency(Xtr, ytr, Xte, yte, fractions=(0.01, 1.0), probes=("logreg", "knn"), n_boot=20)
    assert res["fractions"] == [0.01, 1.0]
    assert res["logreg"]["0.01"]["n_train"] == 3
    assert res["logreg"]["1.0"]["n_train"] == 90
    assert res["knn"]["1.0"]["accuracy"] > 0.9
    ci = res["logreg"]["1.0"]["accuracy_ci"]
    assert ci["lo"] <= ci["value"] <= ci["hi"]
