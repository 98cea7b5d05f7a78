"""benchmarks/occlusion.py: hiding one in-plane column at a time, the lesion's share per column, and the
whole script on a tiny CLIP run (a synthetic study written here; the real cases when ../shared/data is
present)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("nibabel")
pytest.importorskip("SimpleITK")

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT / ".." / "shared" / "data"
sys.path.insert(0, str(ROOT / "tests"))
from tiny_runs import last_checkpoint_p, load_benchmark, make_tiny_runs, perturb_last  # noqa: E402
from tiny_volumes import write_lesion_study  # noqa: E402

bench = load_benchmark("occlusion")


def test_each_column_is_hidden_alone_with_the_head_median():
    """Columns tile the plane (ceil(H / w) x ceil(W / w)); inside its column a head voxel takes its sequence's
    head median, the background and an absent sequence stay 0, everything outside the column is unchanged."""
    torch.manual_seed(0)
    image = torch.zeros(2, 3, 10, 9)  # (C, D, H, W), the second sequence absent
    image[0, :, 1:9, 1:8] = torch.rand(3, 8, 7) + 1.0
    present = torch.tensor([True, False])
    cols, batch = bench.occluded(image, present, 4)
    assert cols == [(y, x) for y in (0, 4, 8) for x in (0, 4, 8)] and batch.shape == (9, 2, 3, 10, 9)
    head = image[0] != 0
    med = image[0][head].median()
    for (y, x), im in zip(cols, batch):
        inside = torch.zeros_like(head)
        inside[:, y:y + 4, x:x + 4] = True
        assert torch.equal(im[:, ~inside], image[:, ~inside])  # outside the column: as acquired
        assert (im[0][inside & head] == med).all() and (im[0][inside & ~head] == 0).all()
        assert (im[1] == 0).all()
    with pytest.raises(ValueError, match="window"):
        bench.occluded(image, present, 0)


def test_lesion_shares_per_column():
    lesion = torch.zeros(2, 8, 8, dtype=torch.bool)
    lesion[0, 1:3, 1:3] = True  # 4 voxels in the first column
    lesion[1, 5, 6] = True  # 1 in the last
    cols = [(0, 0), (0, 4), (4, 0), (4, 4)]
    assert bench.lesion_shares(lesion, cols, 4).tolist() == pytest.approx([0.8, 0.0, 0.0, 0.2])
    assert bench.lesion_shares(torch.zeros_like(lesion), cols, 4).tolist() == [0.0] * 4


def test_script_on_a_tiny_run(tmp_path, monkeypatch):
    """As acquired = `classify`; the drop is p(target) as acquired minus with the column hidden; the lesion is
    found on the model's grid and its shares add up to one; the top column's probabilities are recorded."""
    monkeypatch.setenv("MEDALIGN_CACHE", str(tmp_path / "medalign_cache"))
    run = make_tiny_runs(tmp_path / "runs", ("clip",))["clip"]
    cohort = tmp_path / "cohort"
    write_lesion_study(cohort, "S1", "others", "wmh", np.random.default_rng(0))
    out = tmp_path / "occ.json"
    shared = SHARED if SHARED.is_dir() else tmp_path / "no_shared"
    monkeypatch.setattr(sys, "argv", ["occlusion.py", str(run), "--cohort", str(cohort), "--shared", str(shared),
                                      "--sequences", "dwi,flair", "--case", "S1", "--target", "others", "--window", "8",
                                      "--top", "3", "--out", str(out)])
    bench.main()
    res = json.loads(out.read_text(encoding="utf-8"))
    assert res["studies"] == ["S1"] and res["window"] == 8
    r = res["runs"][str(run)][0]
    import medalign

    direct = medalign.load(run).classify([{s: str(cohort / "S1" / f"{s}.nii.gz") for s in ("dwi", "flair")}])[0]
    assert r["probabilities"]["others"] == pytest.approx(direct["probabilities"]["others"], abs=1e-4)
    assert r["called"] == direct["label"] and r["target"] == "others"
    assert len(r["columns"]) == len(r["drop"]) == len(r["lesion_share"]) > 1
    assert sum(r["lesion_share"]) == pytest.approx(1.0, abs=1e-3) and max(r["lesion_share"]) < 1.0
    assert len(r["top"]) == 3 and r["top"][0]["drop"] == pytest.approx(max(r["drop"]), abs=1e-4)
    assert sum(r["top_hidden"].values()) == pytest.approx(1.0, abs=1e-3)
    assert r["top_hidden"]["others"] == pytest.approx(r["probabilities"]["others"] - r["top"][0]["drop"], abs=1e-3)


def test_last_checkpoint_is_read_when_asked(tmp_path, monkeypatch):
    """--checkpoint last: the study as acquired is scored by the last checkpoint, not the best."""
    monkeypatch.setenv("MEDALIGN_CACHE", str(tmp_path / "medalign_cache"))
    run = make_tiny_runs(tmp_path / "runs", ("clip",))["clip"]
    perturb_last(run)
    cohort = tmp_path / "cohort"
    write_lesion_study(cohort, "S1", "others", "wmh", np.random.default_rng(0))
    out = tmp_path / "occ.json"
    monkeypatch.setattr(sys, "argv", ["occlusion.py", str(run), "--cohort", str(cohort), "--shared", str(tmp_path / "none"),
                                      "--sequences", "dwi,flair", "--target", "others", "--window", "8",
                                      "--checkpoint", "last", "--out", str(out)])
    bench.main()
    res = json.loads(out.read_text(encoding="utf-8"))
    last = last_checkpoint_p(run, {s: str(cohort / "S1" / f"{s}.nii.gz") for s in ("dwi", "flair")}, "others")
    assert res["checkpoint"] == "last"
    assert res["runs"][str(run)][0]["probabilities"]["others"] == pytest.approx(last, abs=1e-4)
