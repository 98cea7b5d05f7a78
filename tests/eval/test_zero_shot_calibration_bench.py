"""benchmarks/zero_shot_calibration.py: the fitted class biases undo a known prior shift, and on a tiny
run the script fits them on the run's own cached studies and applies them to a cohort's NIfTI files."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nibabel")

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_lesion_reliance import _normal_study, _tiny_run  # noqa: E402  (dwi+flair studies; a tiny CLIP run)
from tiny_volumes import write_lesion_study  # noqa: E402
from tiny_runs import load_benchmark  # noqa: E402

bench = load_benchmark("zero_shot_calibration")


def _shifted(rng: np.random.Generator, shift: np.ndarray, n: int = 600) -> tuple[np.ndarray, np.ndarray]:
    """Log-probabilities (N, C) of a calibrated 3-class problem with ``shift`` added to its logits, and labels."""
    y = rng.integers(0, 3, n)
    logits = 1.5 * np.eye(3)[y] + rng.normal(0, 1.0, (n, 3)) + shift  # (N, C)
    return logits - np.log(np.exp(logits).sum(1, keepdims=True)), y


def test_fitted_biases_undo_a_known_prior_shift():
    rng = np.random.default_rng(0)
    shift = np.array([2.0, 0.0, -2.0])
    logp, y = _shifted(rng, shift)
    b = bench.fit_biases(logp, y, l2=0.0)
    assert b.sum() == pytest.approx(0.0, abs=1e-9)
    assert b == pytest.approx(-(shift - shift.mean()), abs=0.3)  # the shift, taken back
    p = np.exp(logp)
    before, after = (p.argmax(1) == y).mean(), (bench.apply_biases(p, b).argmax(1) == y).mean()
    assert after > before + 0.1
    # an unshifted problem keeps (almost) no bias, and the L2 penalty pulls the biases towards 0
    logp0, y0 = _shifted(rng, np.zeros(3))
    assert np.abs(bench.fit_biases(logp0, y0, l2=0.0)).max() < 0.3
    assert np.abs(bench.fit_biases(logp, y, l2=1.0)).max() < np.abs(b).max()


def test_apply_biases_reweights_and_renormalises():
    p = np.array([[0.5, 0.25, 0.25]])
    q = bench.apply_biases(p, np.log(np.array([1.0, 2.0, 4.0])))  # (0.5, 0.5, 1.0) / 2
    assert q == pytest.approx(np.array([[0.25, 0.25, 0.5]]))


def test_script_on_a_tiny_run(tmp_path, monkeypatch):
    run = _tiny_run(tmp_path, monkeypatch)
    rng = np.random.default_rng(4)
    cohort = tmp_path / "cohort"
    write_lesion_study(cohort, "S1", "tumor", "glioma", rng)
    _normal_study(cohort, "S2", rng)
    (cohort / "S2" / "dwi.nii.gz").unlink()  # FLAIR only: in both views
    out = tmp_path / "cal.json"
    monkeypatch.setattr(sys, "argv", ["zero_shot_calibration.py", str(run), "--cohort", str(cohort), "--alone", "flair",
                                      "--fit-splits", "train", "--shared", str(tmp_path / "no_shared"),
                                      "--out", str(out)])
    bench.main()
    res = json.loads(out.read_text(encoding="utf-8"))["runs"][str(run)]
    import medalign
    import pandas as pd

    m = medalign.load(run)
    whole = "+".join(m.sequences)
    assert set(res) == {whole, "flair alone"}
    n_train = int((pd.read_csv(m.config["data"]["manifest"])["split"] == "train").sum())
    for view in res.values():
        assert view["fit_n"] == n_train
        assert sum(view["biases"].values()) == pytest.approx(0.0, abs=0.01)
        assert sum(g["n"] for g in view["cohort"]["before"].values()) == 2
        assert "real" not in view  # no ../shared here
    # "before" is classify on the study's files; "after" is the same probabilities re-weighted by the biases
    item = {s: str(cohort / "S1" / f"{s}.nii.gz") for s in ("dwi", "flair")}
    direct = m.classify([item])[0]["probabilities"]
    classes = list(direct)
    before = res[whole]["cohort"]["before"]["tumor/glioma"]
    assert before["p_true"] == pytest.approx(direct["tumor"], abs=1e-3)
    b = np.array([res[whole]["biases"][c] for c in classes])
    expect = bench.apply_biases(np.array([[direct[c] for c in classes]]), b)[0, classes.index("tumor")]
    assert res[whole]["cohort"]["after"]["tumor/glioma"]["p_true"] == pytest.approx(expect, abs=2e-3)


def test_a_fit_split_without_labelled_studies_is_refused(tmp_path, monkeypatch):
    run = _tiny_run(tmp_path, monkeypatch)
    _normal_study(tmp_path / "cohort", "S1", np.random.default_rng(5))
    monkeypatch.setattr(sys, "argv", ["zero_shot_calibration.py", str(run), "--cohort", str(tmp_path / "cohort"),
                                      "--fit-splits", "nosuchsplit", "--shared", str(tmp_path / "no_shared")])
    with pytest.raises(SystemExit, match="no labelled study in splits"):
        bench.main()
