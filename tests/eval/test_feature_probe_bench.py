"""benchmarks/feature_probe.py: the probe separates features that hold a finding and not random ones,
picks the studies of each group, and runs end to end on a tiny run."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("nibabel")

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_lesion_reliance import _normal_study, _tiny_run  # noqa: E402  (2-sequence studies; a tiny CLIP run)
from tiny_volumes import write_lesion_study  # noqa: E402
from tiny_runs import load_benchmark  # noqa: E402

bench = load_benchmark("feature_probe")


def test_probe_auc_finds_a_feature_that_holds_the_group_and_not_noise():
    rng = np.random.default_rng(0)
    y = np.array([0, 1] * 20)
    noise = rng.standard_normal((40, 8))
    held = noise.copy()
    held[:, 3] += 4.0 * y  # one feature carries the group
    r = bench.probe_auc(held, y)
    assert r["auc"] > 0.9 and r["lo"] <= r["auc"] <= r["hi"] <= 1.0
    r0 = bench.probe_auc(noise, y)
    assert 0.2 < r0["auc"] < 0.8 and r0["lo"] < 0.5 < r0["hi"]  # nothing to find: the CI spans chance
    with pytest.raises(ValueError, match="at least 2 studies of each group"):
        bench.probe_auc(noise[:3], np.array([0, 0, 1]))


def test_intensity_features_are_percentiles_inside_the_head_per_present_channel():
    image = np.zeros((2, 2, 4, 4), np.float32)  # (C, D, H, W)
    image[0, 0] = np.arange(1, 17).reshape(4, 4)  # the head: 16 voxels of values 1..16
    f = bench.intensity_features(image, np.array([True, False])).reshape(2, -1)
    assert f[0, 0] == pytest.approx(8.5)  # the median of 1..16, the zeros outside the head left out
    assert f[0, -1] == pytest.approx(np.percentile(np.arange(1, 17), 99.9))
    assert not f[1].any()  # an absent channel gives zeros



def test_local_contrast_sees_a_thin_bright_line_and_not_a_uniform_shift():
    image = np.zeros((2, 1, 16, 16), np.float32)  # (C, D, H, W)
    image[:, 0, 2:14, 2:14] = 1.0  # the head: a flat 12x12 square, the same in both channels
    image[0, 0, 8, 3:13] = 3.0  # channel 0: a one-voxel-thick bright line of 10 voxels
    image[1] *= 2.0  # channel 1: brighter everywhere, no local structure
    f = bench.local_contrast_features(image, np.array([True, True])).reshape(2, -1)
    assert f[0, -4] == pytest.approx(10 / 144)  # the line's share of the head rises 2 above its neighbourhood
    assert f[0, 3] == pytest.approx(2.0)  # the 99.9th percentile of the contrast is the line's
    assert not f[1, 4:].any()  # a uniform change of brightness has no local contrast
    assert not bench.local_contrast_features(image, np.array([False, False])).any()


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe_cohort")
    rng = np.random.default_rng(0)
    for i in range(3):
        write_lesion_study(root, f"W{i}", "others", "wmh", rng)
        _normal_study(root, f"N{i}", rng)
    write_lesion_study(root, "T0", "tumor", "glioma", rng)  # neither group: left out
    return root


def test_cohort_groups_takes_each_group_with_its_sequences(cohort):
    items = bench.cohort_groups(cohort, ["wmh"], ["normal"], ["flair"])
    assert sorted((it["case"], it["y"]) for it in items) == [("N0", 0), ("N1", 0), ("N2", 0), ("W0", 1), ("W1", 1),
                                                             ("W2", 1)]
    assert all(set(it["files"]) == {"flair"} for it in items)


def test_script_on_a_tiny_run(cohort, tmp_path, monkeypatch):
    run = _tiny_run(tmp_path, monkeypatch)
    out = tmp_path / "probe.json"
    monkeypatch.setattr(sys, "argv", ["feature_probe.py", str(run), "--cohort", str(cohort), "--positive", "wmh",
                                      "--sequences", "dwi,flair", "--folds", "3", "--out", str(out)])
    bench.main()
    row = json.loads(out.read_text(encoding="utf-8"))["runs"][str(run)]["dwi+flair"]
    assert row["n"] == 6 and row["positive"] == 3
    for k in ("features", "embedding", "intensity", "local_contrast"):
        assert 0.0 <= row[k]["lo"] <= row[k]["hi"] <= 1.0 and 0.0 <= row[k]["auc"] <= 1.0


def test_real_scores_place_a_case_on_the_synthetic_axis():
    rng = np.random.default_rng(1)
    y = np.array([0, 1] * 30)
    x = rng.standard_normal((60, 5))
    x[:, 0] += 6.0 * y  # the synthetic groups differ along feature 0
    real = np.zeros((2, 5))
    real[0, 0], real[1, 0] = 6.0, 0.0  # one case like the positives, one like the negatives
    p = bench.real_scores(x, y, real)
    assert p.shape == (2,) and p[0] > 0.75 and p[1] < 0.25


def test_script_scores_real_cases(cohort, tmp_path, monkeypatch):
    run = _tiny_run(tmp_path, monkeypatch)
    shared = tmp_path / "shared"  # a stand-in for ../shared/data: one real case, FLAIR alone
    (shared / "real_dev" / "wmh_x").mkdir(parents=True)
    (shared / "real_dev" / "wmh_x" / "flair.nii.gz").write_bytes((cohort / "W0" / "flair.nii.gz").read_bytes())
    (shared / "real_dev" / "cases.json").write_text(json.dumps([{"case": "wmh_x", "class": "others",
                                                                 "files": {"flair": "flair.nii.gz"}}]))
    out = tmp_path / "probe.json"
    monkeypatch.setattr(sys, "argv", ["feature_probe.py", str(run), "--cohort", str(cohort), "--positive", "wmh",
                                      "--sequences", "flair", "--folds", "3", "--real", str(shared), "--out", str(out)])
    bench.main()
    row = json.loads(out.read_text(encoding="utf-8"))["runs"][str(run)]["flair"]
    r = row["real"]["real_dev/wmh_x"]
    assert r["class"] == "others" and set(r) == {"class", "features", "embedding", "intensity", "local_contrast"}
    assert all(0.0 <= r[k] <= 1.0 for k in ("features", "embedding", "intensity", "local_contrast"))
    # the stand-in is W0 itself: the intensity probe, fit on W0 among the others, puts it with the lesions
    assert r["intensity"] > 0.5
