"""benchmarks/lesion_reliance.py: erasing a lesion on any grid, the paired change per group, and
the whole script on a tiny CLIP run (synthetic studies written here; the real cases when
../shared/data is present)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sitk = pytest.importorskip("SimpleITK")
nib = pytest.importorskip("nibabel")

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT / ".." / "shared" / "data"
sys.path.insert(0, str(ROOT / "tests"))
from tiny_runs import last_checkpoint_p, load_benchmark, make_tiny_runs, perturb_last  # noqa: E402
from tiny_volumes import write_lesion_study  # noqa: E402

bench = load_benchmark("lesion_reliance")


def _image(arr_zyx: np.ndarray, spacing=(1.0, 1.0, 5.0), origin=(0.0, 0.0, 0.0)):
    im = sitk.GetImageFromArray(arr_zyx.astype(np.float32))
    im.SetSpacing(spacing)
    im.SetOrigin(origin)
    return im


def test_erase_sets_the_lesion_to_its_surroundings_on_another_grid():
    rng = np.random.default_rng(0)
    x = 100 + rng.normal(0, 2, (6, 40, 40))  # (z, y, x) at 1 x 1 x 5 mm
    x[2:4, 15:25, 15:25] = 300  # the lesion
    image = _image(x)
    # the mask on a finer grid (0.5 x 0.5 x 1 mm) covering the same physical box
    m = np.zeros((30, 80, 80), np.uint8)
    m[10:20, 30:50, 30:50] = 1
    mask = _image(m, spacing=(0.5, 0.5, 1.0), origin=(-0.25, -0.25, -2.0))
    out = sitk.GetArrayFromImage(bench.erase(image, mask))
    assert abs(float(out[2:4, 15:25, 15:25].mean()) - 100) < 2  # the lesion is gone
    keep = np.ones(x.shape, bool)
    keep[2:4, 15:25, 15:25] = False
    assert np.array_equal(out[keep], x[keep].astype(np.float32))  # nothing else changed
    fringe = x.copy()
    fringe[2:4, 14, 15:25] = 200  # a partial-volume rim just outside the mask
    grown = sitk.GetArrayFromImage(bench.erase(_image(fringe), mask, grow=1))
    assert abs(float(grown[2:4, 14, 15:25].mean()) - 100) < 2 and abs(float(grown[2:4, 15:25, 15:25].mean()) - 100) < 2
    assert sitk.GetArrayFromImage(bench.erase(_image(fringe), mask))[2, 14, 20] == 200  # not grown: the rim stays
    z = np.full((6, 40, 40), -3.6)  # z-scored and masked (as BraTS): a constant minimum outside, tissue around 0
    z[:, 5:35, 5:35] = -1 + 0.01 * rng.standard_normal((6, 30, 30))
    z[2:4, 15:25, 15:25] = 3
    zo = sitk.GetArrayFromImage(bench.erase(_image(z), mask))
    assert abs(float(zo[2:4, 15:25, 15:25].mean()) + 1) < 0.05  # filled with the (negative) tissue
    far = _image(m, spacing=(0.5, 0.5, 1.0), origin=(500.0, 0.0, 0.0))  # a mask that misses this grid
    assert np.array_equal(sitk.GetArrayFromImage(bench.erase(image, far)), x.astype(np.float32))


def test_summarise_is_paired_per_group():
    groups = ["a", "a", "a", "b"]
    p0, p1 = np.array([0.8, 0.6, 0.7, 0.5]), np.array([0.2, 0.3, 0.1, 0.6])
    s = bench.summarise(groups, p0, p1)
    assert s["a"]["n"] == 3 and s["a"]["p_true"] == pytest.approx(0.7) and s["a"]["p_true_erased"] == pytest.approx(0.2)
    assert s["a"]["change"]["value"] == pytest.approx(-0.5)
    c = s["a"]["change"]  # paired changes -0.6, -0.3, -0.6: the interval lies within them and holds the mean
    assert -0.6 - 1e-9 <= c["lo"] <= -0.5 <= c["hi"] <= -0.3 + 1e-9 and c["lo"] < c["hi"]
    assert s["b"]["change"] == {"value": pytest.approx(0.1)}  # one study: no interval


def _normal_study(root: Path, sid: str, rng: np.random.Generator) -> None:
    """A lesion-free study on the grid of :func:`tiny_volumes.write_lesion_study`, labelled normal."""
    d = root / sid
    d.mkdir(parents=True)
    head = np.zeros((32, 32, 8), np.float32)
    head[4:28, 4:28, 1:7] = 1
    for s in ("dwi", "flair"):
        x = head * (0.5 + 0.05 * rng.standard_normal(head.shape))
        nib.save(nib.Nifti1Image(x.astype(np.float32), np.diag([1.5, 1.5, 5.0, 1.0])), d / f"{s}.nii.gz")
    gt = {"study_id": sid, "label": "normal", "findings": []}
    (d / "ground_truth.json").write_text(json.dumps(gt), encoding="utf-8")


def _tiny_run(tmp_path: Path, monkeypatch) -> Path:
    """A tiny trained CLIP run (tests/tiny_runs.py), with its model cache under ``tmp_path``."""
    monkeypatch.setenv("MEDALIGN_CACHE", str(tmp_path / "medalign_cache"))
    return make_tiny_runs(tmp_path / "runs", ("clip",))["clip"]


def test_script_on_a_tiny_run(tmp_path, monkeypatch):
    run = _tiny_run(tmp_path, monkeypatch)
    rng = np.random.default_rng(1)
    cohort = tmp_path / "cohort"
    write_lesion_study(cohort, "S1", "others", "wmh", rng)
    write_lesion_study(cohort, "S2", "tumor", "glioma", rng)
    write_lesion_study(cohort, "S3", "normal", "none", rng)  # not a variant asked for: left out
    out = tmp_path / "lr.json"
    shared = SHARED if SHARED.is_dir() else tmp_path / "no_shared"
    monkeypatch.setattr(sys, "argv", ["lesion_reliance.py", str(run), "--cohort", str(cohort), "--shared", str(shared),
                                      "--variants", "wmh,glioma", "--out", str(out)])
    bench.main()
    res = json.loads(out.read_text(encoding="utf-8"))
    r = res["runs"][str(run)]
    groups = r["summary"]
    assert {"synthetic others/wmh", "synthetic tumor/glioma"} <= set(groups) and "S3" not in res["studies"]
    assert len(r["p_true"]) == len(r["p_true_erased"]) == len(res["studies"])
    assert all(0.0 <= p <= 1.0 for p in r["p_true"] + r["p_true_erased"])
    import medalign

    direct = medalign.load(run).classify([{"dwi": str(cohort / "S2" / "dwi.nii.gz"), "flair": str(cohort / "S2" / "flair.nii.gz")}])
    i = res["studies"].index("S2")
    assert r["p_true"][i] == pytest.approx(direct[0]["probabilities"]["tumor"], abs=1e-4)  # as acquired = classify
    assert r["p_true_erased"] != r["p_true"]  # erasing changed what the model saw
    if SHARED.is_dir():
        assert groups["real others"]["n"] == 3 and groups["real tumor"]["n"] == 6


def test_last_checkpoint_is_read_when_asked(tmp_path, monkeypatch):
    """--checkpoint last: the probabilities as acquired are the last checkpoint's ``classify``, not the best's."""
    run = _tiny_run(tmp_path, monkeypatch)
    perturb_last(run)
    cohort = tmp_path / "cohort"
    write_lesion_study(cohort, "S2", "tumor", "glioma", np.random.default_rng(1))
    out = tmp_path / "lr.json"
    monkeypatch.setattr(sys, "argv", ["lesion_reliance.py", str(run), "--cohort", str(cohort), "--shared",
                                      str(tmp_path / "no_shared"), "--variants", "glioma", "--checkpoint", "last",
                                      "--out", str(out)])
    bench.main()
    res = json.loads(out.read_text(encoding="utf-8"))
    last = last_checkpoint_p(run, {s: str(cohort / "S2" / f"{s}.nii.gz") for s in ("dwi", "flair")}, "tumor")
    assert res["checkpoint"] == "last" and res["runs"][str(run)]["p_true"][0] == pytest.approx(last, abs=1e-4)


def test_twins_compare_each_study_with_its_lesion_free_twin(tmp_path, monkeypatch):
    run = _tiny_run(tmp_path, monkeypatch)
    rng = np.random.default_rng(2)
    cohort = tmp_path / "cohort"
    write_lesion_study(cohort, "S1", "others", "wmh", rng)
    write_lesion_study(cohort, "S2", "others", "wmh", rng)  # no twin: left out
    _normal_study(cohort, "T1", rng)
    gt = json.loads((cohort / "T1" / "ground_truth.json").read_text(encoding="utf-8"))
    (cohort / "T1" / "ground_truth.json").write_text(json.dumps({**gt, "twin_of": "S1"}), encoding="utf-8")
    items, twins = bench.twin_items(cohort, ["wmh"], ["flair"])
    assert [it["case"] for it in items] == ["S1"]
    assert twins == [{"flair": str(cohort / "T1" / "flair.nii.gz")}]  # FLAIR alone, as asked
    out = tmp_path / "tw.json"
    monkeypatch.setattr(sys, "argv", ["lesion_reliance.py", str(run), "--cohort", str(cohort), "--twins",
                                      "--variants", "wmh", "--sequences", "flair", "--out", str(out)])
    bench.main()
    res = json.loads(out.read_text(encoding="utf-8"))
    r = res["runs"][str(run)]
    assert res["twins"] is True and res["studies"] == ["S1"]  # no real case, no study without a twin
    import medalign

    m = medalign.load(run)
    own, twin = m.classify([{"flair": str(cohort / "S1" / "flair.nii.gz")}, {"flair": str(cohort / "T1" / "flair.nii.gz")}])
    assert r["p_true"][0] == pytest.approx(own["probabilities"]["others"], abs=1e-4)
    assert r["p_true_erased"][0] == pytest.approx(twin["probabilities"]["others"], abs=1e-4)  # the twin, not an erasure
    ch = r["summary"]["synthetic others/wmh"]["class_change"]
    assert ch["tumor"] == pytest.approx(twin["probabilities"]["tumor"] - own["probabilities"]["tumor"], abs=1e-4)
    monkeypatch.setattr(sys, "argv", ["lesion_reliance.py", str(run), "--twins"])
    with pytest.raises(SystemExit, match="--twins needs --cohort"):
        bench.main()


def test_class_changes_say_where_the_lesion_evidence_goes():
    as_is = [{"probabilities": {"others": 0.2, "tumor": 0.7, "normal": 0.1}},
             {"probabilities": {"others": 0.4, "tumor": 0.4, "normal": 0.2}}]
    erased = [{"probabilities": {"others": 0.3, "tumor": 0.2, "normal": 0.5}},
              {"probabilities": {"others": 0.4, "tumor": 0.2, "normal": 0.4}}]
    ch = bench.class_changes(["g", "g"], as_is, erased)["g"]
    assert ch == pytest.approx({"others": 0.05, "tumor": -0.35, "normal": 0.3})  # the lesion had fed "tumor"


def _flair_with_unmasked_region(root: Path) -> tuple[Path, Path]:
    """A FLAIR (0.5 x 0.5 x 5 mm) with a masked lesion and a larger bright region the mask leaves out."""
    rng = np.random.default_rng(4)
    x = np.zeros((6, 100, 100), np.float32)  # (z, y, x)
    x[:, 5:95, 5:95] = 100 + rng.normal(0, 2, (6, 90, 90))
    m = np.zeros(x.shape, np.uint8)
    m[1:5, 20:40, 20:40] = 1
    x[m > 0] = 200  # masked lesion, median 200
    x[2:4, 60:85, 60:85] = 260  # 2 x 25 x 25 voxels = 1.56 ml, outside the mask
    x[3, 10, 80] = 400  # one bright voxel: noise, not a region
    root.mkdir(parents=True, exist_ok=True)
    flair, mask = root / "flair.nii.gz", root / "mask.nii.gz"
    sitk.WriteImage(_image(x, spacing=(0.5, 0.5, 5.0)), str(flair))
    sitk.WriteImage(_image(m, spacing=(0.5, 0.5, 5.0)), str(mask))
    return flair, mask


def test_unmasked_bright_finds_what_the_mask_leaves_out(tmp_path):
    flair, mask = _flair_with_unmasked_region(tmp_path / "case")
    out = tmp_path / "beyond.nii.gz"
    assert bench.unmasked_bright(str(flair), str(mask), str(out))
    r = sitk.GetArrayFromImage(sitk.ReadImage(str(out))) > 0
    assert r[2:4, 60:85, 60:85].all()  # the region, grown in-plane
    assert not r[:, 20:40, 20:40].any() and not r[3, 10, 80] and not r[0].any() and not r[5].any()
    assert r[2:4].sum() < 2 * 35 * 35  # grown by 3 voxels each way at most
    assert not bench.unmasked_bright(str(flair), str(mask), str(tmp_path / "none.nii.gz"), min_ml=2.0)  # 1.56 ml < 2
    assert not (tmp_path / "none.nii.gz").exists()


def test_erase_beyond_on_a_tiny_run(tmp_path, monkeypatch):
    run = _tiny_run(tmp_path, monkeypatch)
    flair, mask = _flair_with_unmasked_region(tmp_path / "shared" / "real_dev" / "wmh_1")
    cases = [{"case": "wmh_1", "class": "others", "files": {"flair": "flair.nii.gz", "mask": "mask.nii.gz"}}]
    (tmp_path / "shared" / "real_dev" / "cases.json").write_text(json.dumps(cases), encoding="utf-8")
    for mode in ("beyond", "both"):
        out = tmp_path / f"{mode}.json"
        monkeypatch.setattr(sys, "argv", ["lesion_reliance.py", str(run), "--shared", str(tmp_path / "shared"),
                                          "--erase", mode, "--out", str(out)])
        bench.main()
        res = json.loads(out.read_text(encoding="utf-8"))
        r = res["runs"][str(run)]
        assert res["erase"] == mode and res["studies"] == ["real_dev/wmh_1"]
        assert list(r["summary"]) == [f"real others ({mode})"] and len(r["called"]) == len(r["called_erased"]) == 1
    import medalign

    m = medalign.load(run)
    as_is = m.classify([{"flair": str(flair)}])[0]
    assert r["p_true"][0] == pytest.approx(as_is["probabilities"]["others"], abs=1e-4) and r["called"] == [as_is["label"]]
    (tmp_path / "shared" / "real_dev" / "wmh_1" / "flair.nii.gz").unlink()
    sitk.WriteImage(_image(np.full((6, 100, 100), 100, np.float32), spacing=(0.5, 0.5, 5.0)), str(flair))
    monkeypatch.setattr(sys, "argv", ["lesion_reliance.py", str(run), "--shared", str(tmp_path / "shared"), "--erase", "beyond"])
    with pytest.raises(SystemExit, match="no real WMH case has bright tissue outside its mask"):
        bench.main()
