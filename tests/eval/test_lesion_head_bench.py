"""benchmarks/lesion_head.py: the per-cell readout of the lesion head is exact on a head whose
lesion-ness is the image's brightness, and the script runs end to end on a tiny lesion_aux run."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("SimpleITK")
pytest.importorskip("nibabel")
torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
spec = importlib.util.spec_from_file_location("lesion_head", ROOT / "benchmarks" / "lesion_head.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)
from test_lesion_reliance import _normal_study  # noqa: E402  (2-sequence studies with and without a lesion)
from tiny_volumes import write_lesion_study  # noqa: E402


class _FirstChannel(torch.nn.Module):
    """An "encoder" whose local map is the dwi channel at full resolution."""

    def forward(self, image, sequence_mask=None):
        return {"local": image[:, :1]}  # (B, 1, D, H, W)


@pytest.fixture(scope="module")
def tiny_aux_run(tmp_path_factory):
    from tiny_runs import make_tiny_runs, run_config

    from medalign.train.loop import fit

    root = tmp_path_factory.mktemp("lesion_head")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDALIGN_CACHE", str(root / "medalign_cache"))
        made = make_tiny_runs(root, recipes=())
        cfg = run_config("clip", made["manifest"], root)
        cfg["recipe"]["lesion_aux"] = 0.5
        fit(cfg, root / "run")
        cohort = root / "cohort_lr"
        rng = np.random.default_rng(0)
        write_lesion_study(cohort, "S1", "others", "wmh", rng)
        write_lesion_study(cohort, "S2", "tumor", "glioma", rng)
        _normal_study(cohort, "S3", rng)
        yield root / "run", cohort



def test_readout_of_a_head_that_sees_brightness(tiny_aux_run):
    import medalign

    run, cohort = tiny_aux_run
    m = medalign.load(run)
    head = torch.nn.Conv3d(1, 6, kernel_size=1)
    with torch.no_grad():  # "no lesion" falls and "tumour" rises above z = 4 (the lesion, not the noise); the rest stay at 0
        head.weight.zero_()
        head.bias.zero_()
        head.weight[0, 0], head.bias[0] = -10.0, 40.0
        head.weight[2, 0], head.bias[2] = 10.0, -40.0
    m.recipe.image_encoder = _FirstChannel()
    m.recipe.lesion_head = head
    d = cohort / "S2"
    r = bench.head_readout(m, {"dwi": str(d / "dwi.nii.gz"), "flair": str(d / "flair.nii.gz")}, str(d / "lesion_mask.nii.gz"))
    assert r["auc"] > 0.95  # the bright lesion cells rank above the rest of the head
    assert int(np.argmax(r["at_lesion"])) == 2 and r["at_lesion"].sum() == pytest.approx(1.0, abs=1e-5)
    # the top 1/16 of the 1024 cells holds the 32 lesion voxels and as many others: half lesion, all tumour
    assert r["evidence"].shape == (12,) and 0.45 < r["evidence"][6] < 0.55 and int(np.argmax(r["evidence"][7:])) == 1
    # study level: the lesion study carries more lesion load than the normal one of the cohort
    normals = bench.normal_items(cohort, ["dwi", "flair"])
    assert [it["case"] for it in normals] == ["S3"]
    assert bench.study_load(m, {"dwi": str(d / "dwi.nii.gz")}) > bench.study_load(m, normals[0]["files"])


def test_vs_normal_auc_is_the_rank_separation_of_the_loads():
    assert bench.vs_normal_auc([0.3, 0.4], [0.1, 0.2]) == 1.0
    assert bench.vs_normal_auc([0.1], [0.1, 0.3]) == pytest.approx(0.25)  # a tie counts half
    assert np.isnan(bench.vs_normal_auc([0.2], []))


def test_script_on_a_tiny_lesion_aux_run(tiny_aux_run, tmp_path, monkeypatch):
    run, cohort = tiny_aux_run
    out = tmp_path / "lh.json"
    monkeypatch.setenv("MEDALIGN_CACHE", str(tmp_path / "medalign_cache"))
    monkeypatch.setattr(sys, "argv", ["lesion_head.py", str(run), "--cohort", str(cohort), "--shared", str(tmp_path / "none"),
                                      "--sequences", "dwi,flair", "--out", str(out)])
    bench.main()
    res = json.loads(out.read_text(encoding="utf-8"))
    s = res["runs"][str(run)]["summary"]
    assert set(s) == {"synthetic others/wmh", "synthetic tumor/glioma"}
    for g in s.values():
        assert g["n"] == 1 and 0.0 <= g["auc"] <= 1.0
        assert sum(g["p_at_lesion"].values()) == pytest.approx(1.0, abs=2e-3)
        assert all(0.0 <= v <= 1.0 for v in g["load"] + g["top_mix_true"])
        assert 0.0 <= g["vs_normal_auc"] <= 1.0
    assert len(res["runs"][str(run)]["normal_loads"]) == 1
