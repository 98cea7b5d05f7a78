"""benchmarks/bright_reliance.py: capping / stretching a sequence's bright tail, and the whole script
on a tiny CLIP run (a two-study cohort written here; the real cases when ../shared/data is present)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT / ".." / "shared" / "data"
sys.path.insert(0, str(ROOT / "tests"))
from tiny_runs import load_benchmark, make_tiny_runs  # noqa: E402
from tiny_volumes import head_with_lesion, write_nifti  # noqa: E402

bench = load_benchmark("bright_reliance")


def test_perturb_changes_only_the_tail_above_the_threshold():
    x = np.array([-2.0, 0.0, 1.5, 2.0, 4.0], np.float32)
    out = bench.perturb(x, 1.5, 2.0)
    assert out["capped"].tolist() == [-2.0, 0.0, 1.5, 1.5, 1.5]
    assert out["stretched"].tolist() == [-2.0, 0.0, 1.5, 2.5, 6.5]  # 1.5 + 2 x (value - 1.5)
    assert out["capped"].dtype == np.float32 and x.tolist() == [-2.0, 0.0, 1.5, 2.0, 4.0]  # the input is untouched


def _cohort(root: Path) -> Path:
    rng = np.random.default_rng(3)
    for i, (sid, label, variant) in enumerate([("S1", "others", "wmh"), ("S2", "tumor", "glioma")]):
        d = root / sid
        d.mkdir(parents=True)
        write_nifti(d / "flair.nii.gz", head_with_lesion(i, rng))
        write_nifti(d / "dwi.nii.gz", head_with_lesion(i, rng))
        gt = {"study_id": sid, "label": label, "findings": [{"variant": variant}]}
        (d / "ground_truth.json").write_text(json.dumps(gt), encoding="utf-8")
    return root


def test_script_on_a_tiny_run(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDALIGN_CACHE", str(tmp_path / "medalign_cache"))
    run = make_tiny_runs(tmp_path / "runs", ("clip",))["clip"]
    cohort = _cohort(tmp_path / "cohort")
    out = tmp_path / "br.json"
    shared = SHARED if SHARED.is_dir() else tmp_path / "no_shared"
    monkeypatch.setattr(sys, "argv", ["bright_reliance.py", str(run), "--cohort", str(cohort), "--shared", str(shared),
                                      "--threshold", "0.5", "--out", str(out)])
    bench.main()
    res = json.loads(out.read_text(encoding="utf-8"))["runs"][str(run)]
    assert {"S1", "S2"} <= set(res["studies"])
    import medalign

    m = medalign.load(run)
    i = res["studies"].index("S2")
    direct = m.classify({"flair": str(cohort / "S2" / "flair.nii.gz")})[0]  # FLAIR alone, the default view
    assert res["p_true"][i] == pytest.approx(direct["probabilities"]["tumor"], abs=1e-4)  # as acquired = classify
    image, mask = m._one({"flair": str(cohort / "S2" / "flair.nii.gz")})
    c = list(m.sequences).index("flair")
    capped = image.numpy().copy()
    capped[c] = np.minimum(capped[c], 0.5)
    classes, p = m.zero_shot_probabilities(m.encode_image(capped, mask.numpy()))
    assert res["capped"]["p_true"][i] == pytest.approx(float(p[0, classes.index("tumor")]), abs=1e-4)
    assert res["capped"]["p_true"] != res["p_true"] and res["stretched"]["p_true"] != res["p_true"]
    s = res["capped"]["summary"]["synthetic tumor/glioma"]
    assert s["n"] == 1 and s["change"]["value"] == pytest.approx(res["capped"]["p_true"][i] - res["p_true"][i], abs=1e-4)
    assert sum(s["class_change"].values()) == pytest.approx(0.0, abs=1e-6)  # probabilities move, their sum does not
    if SHARED.is_dir():
        assert res["capped"]["summary"]["real others"]["n"] == 3
    monkeypatch.setattr(sys, "argv", ["bright_reliance.py", str(run), "--sequence", "t2s", "--shared", str(shared)])
    with pytest.raises(SystemExit, match="does not read t2s"):
        bench.main()
    monkeypatch.setattr(sys, "argv", ["bright_reliance.py", str(run), "--threshold", "-1", "--shared", str(shared)])
    with pytest.raises(SystemExit, match="must be > 0"):
        bench.main()
