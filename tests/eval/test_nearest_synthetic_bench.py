"""benchmarks/nearest_synthetic.py: cosine neighbours, like-for-like sequences, and on a tiny run a real case
that is a copy of a synthetic study finds that study first."""
from __future__ import annotations

import json
import shutil
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
from tiny_runs import load_benchmark, perturb_last  # noqa: E402

bench = load_benchmark("nearest_synthetic")


def test_nearest_orders_by_cosine_not_by_length():
    syn = np.array([[10.0, 0.0], [0.6, 0.8], [0.0, -1.0]])  # (N, E); row 0 long but 45 degrees off
    top, sim = bench.nearest(np.array([1.0, 1.0]), syn, 2)
    assert top.tolist() == [1, 0]
    assert sim.tolist() == pytest.approx([1.4 / np.sqrt(2), 1 / np.sqrt(2)])


def test_script_on_a_tiny_run(tmp_path, monkeypatch):
    run = _tiny_run(tmp_path, monkeypatch)
    rng = np.random.default_rng(4)
    cohort = tmp_path / "cohort"
    write_lesion_study(cohort, "S1", "others", "wmh", rng)
    write_lesion_study(cohort, "S2", "tumor", "glioma", rng)
    _normal_study(cohort, "S3", rng)
    (cohort / "S2" / "dwi.nii.gz").unlink()  # FLAIR only: a neighbour of FLAIR-only cases, never of a dwi+flair one
    shared = tmp_path / "shared"
    case = shared / "real_dev" / "wmh_copy"
    case.mkdir(parents=True)
    shutil.copy(cohort / "S1" / "flair.nii.gz", case / "flair.nii.gz")  # a FLAIR-only "real" copy of S1's FLAIR
    both = shared / "real_dev" / "both"
    both.mkdir()
    for s in ("dwi", "flair"):
        shutil.copy(cohort / "S3" / f"{s}.nii.gz", both / f"{s}.nii.gz")
    (shared / "real_dev" / "cases.json").write_text(json.dumps([
        {"case": "wmh_copy", "class": "others", "files": {"flair": "flair.nii.gz"}},
        {"case": "both", "class": "normal", "files": {"dwi": "dwi.nii.gz", "flair": "flair.nii.gz"}}]), encoding="utf-8")
    out = tmp_path / "near.json"
    monkeypatch.setattr(sys, "argv", ["nearest_synthetic.py", str(run), "--cohort", str(cohort), "--k", "2",
                                      "--shared", str(shared), "--out", str(out), "--factors",
                                      "--figure", str(tmp_path / "fig")])
    bench.main()
    res = json.loads(out.read_text(encoding="utf-8"))
    flair_case = res["runs"][str(run)]["real_dev/wmh_copy"]
    assert flair_case["sequences"] == ["flair"]
    assert flair_case["neighbours"][0] == "S1" and flair_case["top_similarity"] == pytest.approx(1.0, abs=1e-4)
    assert flair_case["own_class"] == pytest.approx(0.5)  # S1 (others) and one other study of k = 2
    whole = res["runs"][str(run)]["real_dev/both"]
    assert whole["neighbours"][0] == "S3" and "S2" not in whole["neighbours"]  # S2 has no DWI: not compared
    assert sum(res["summed"]["real_dev/wmh_copy"].values()) == 2
    assert set(res["factors"]) == {"real_dev/wmh_copy", "real_dev/both"}  # drawn without randomisation: no factor
    assert res["factors"]["real_dev/both"] == [] and "z" not in whole
    assert flair_case["vote"] == "others" and whole["vote"] == "normal"  # a 1-1 tie goes to the nearest's class
    assert res["vote_right"][str(run)] == {"normal": [1, 1], "others": [1, 1]}
    assert len(flair_case["similarities"]) == 2 and flair_case["similarities"][0] == flair_case["top_similarity"]
    assert flair_case["similarities"][0] >= flair_case["similarities"][1]
    import matplotlib.pyplot as plt

    for name in ("real_dev_wmh_copy", "real_dev_both"):  # one figure per case: the case above its k = 2 neighbours
        img = plt.imread(tmp_path / "fig" / f"{name}.png")  # (H, W, 4)
        assert img.shape[0] > img.shape[1] and img[..., :3].std() > 0.05


def test_vote_is_the_majority_and_a_tie_goes_to_the_nearest():
    assert bench.vote(["infarct", "others", "others"]) == "others"
    assert bench.vote(["infarct", "others", "others", "infarct"]) == "infarct"  # 2-2: the nearest's class
    assert bench.vote(["tumor", "infarct", "others", "others", "infarct"]) == "infarct"  # 2-2-1: the first of the tied


def test_study_factors_and_their_ranking():
    from medalign.data.synth.brain import plan_cohort

    t = plan_cohort(20, 4)[0]
    f = bench.study_factors(t, "flair")
    g = t["domain"]["acquisition"]["flair"]
    assert f["skull_stripped"] == float(t["domain"]["skull_stripped"]) and f["noise_scale"] == g["noise_scale"]
    assert f["csf_to_wm"] == pytest.approx(t["domain"]["contrast"]["flair"]["csf"] / t["domain"]["contrast"]["flair"]["wm"])
    assert bench.study_factors({"label": "normal"}, "flair") == {}  # drawn without randomisation
    factors = {f"S{i}": {"a": float(i), "b": float(-i * i), "flat": 1.0} for i in range(8)}
    z = {f"S{i}": float(i) + 0.1 for i in range(8)}
    ranks = bench.factor_ranks(z, factors)
    assert [(r["factor"], r["rho"], r["n"]) for r in ranks] == [("a", 1.0, 8), ("b", -1.0, 8)]  # "flat" left out


def test_last_checkpoint_is_read_when_asked(tmp_path, monkeypatch):
    """--checkpoint last: the real case and the cohort are embedded by the last checkpoint, not the best (a FLAIR
    copy of a normal study against a study with white-matter lesions: their similarity is the last checkpoint's)."""
    import medalign

    run = _tiny_run(tmp_path, monkeypatch)
    perturb_last(run, scale=0.5)  # the tiny run's embeddings are close together: a larger step tells them apart
    rng = np.random.default_rng(4)
    cohort = tmp_path / "cohort"
    write_lesion_study(cohort, "S1", "others", "wmh", rng)
    _normal_study(cohort, "S3", rng)
    case = tmp_path / "shared" / "real_dev" / "normal_copy"
    case.mkdir(parents=True)
    shutil.copy(cohort / "S3" / "flair.nii.gz", case / "flair.nii.gz")
    (case.parent / "cases.json").write_text(json.dumps([
        {"case": "normal_copy", "class": "normal", "files": {"flair": "flair.nii.gz"}}]), encoding="utf-8")
    sims = {}
    for ckpt in ("best", "last"):
        out = tmp_path / f"near_{ckpt}.json"
        monkeypatch.setattr(sys, "argv", ["nearest_synthetic.py", str(run), "--cohort", str(cohort), "--k", "2",
                                          "--shared", str(tmp_path / "shared"), "--checkpoint", ckpt, "--out", str(out)])
        bench.main()
        res = json.loads(out.read_text(encoding="utf-8"))
        assert res["checkpoint"] == ckpt
        row = res["runs"][str(run)]["real_dev/normal_copy"]
        sims[ckpt] = dict(zip(row["neighbours"], row["similarities"]))
    m = medalign.load(run, checkpoint="last")
    emb = m.encode_image([{"flair": str(cohort / "S1" / "flair.nii.gz")}])
    real = m.encode_image([{"flair": str(case / "flair.nii.gz")}])[0]
    assert sims["last"]["S1"] == pytest.approx(float(bench.cosine(real, emb)[0]), abs=2e-4)
    assert sims["best"]["S1"] != pytest.approx(sims["last"]["S1"], abs=1e-3)
