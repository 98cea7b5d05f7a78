"""benchmarks/lesion_contrast.py: per drawn finding, how far the lesion stands out on FLAIR, on two tiny cohorts of the
same plan, one with ``--infarct-onset 1``: every study with a lesion is counted under its ground truth's finding, the
acute infarcts stand out less with the option and every other study's values are the same; bad input gets one line."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: tiny_runs
from tiny_runs import load_benchmark  # noqa: E402

bench = load_benchmark("lesion_contrast")


def _cohort(root: Path, *extra: str) -> Path:
    from medalign.cli import main
    from medalign.data.cache import preprocess_cohort

    assert main(["synth", "brain", "--n", "30", "--seed", "1", "--shape-mode", "small", "--workers", "1",
                 "--paraphrases", "0", "--out", str(root), *extra]) == 0
    preprocess_cohort(root / "manifest.csv", {"sequences": ["dwi", "flair"], "shape": [8, 32, 32], "reference": "flair",
                                              "register": False}, root / ".cache", workers=1, progress=False)
    return root


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("lesion_contrast")
    out = {}
    for name, extra in (("plain", ()), ("onset", ("--infarct-onset", "1"))):
        c = _cohort(root / name, *extra)
        assert bench.main(["--cohort", str(c), "--splits", "train,val,test", "--out", str(root / f"{name}.json")]) == 0
        out[name] = (c, json.loads((root / f"{name}.json").read_text()))
    return out


def test_every_study_with_a_lesion_is_counted_under_its_finding(results):
    from medalign.data.cache import CohortCache
    from medalign.data.realism_compare import head_of

    cohort, res = results["plain"]
    cache = CohortCache(cohort / ".cache")
    with_lesion = set()
    for sid in (p.parent.name for p in cohort.glob("S*/ground_truth.json")):
        a = cache.load(sid)
        head = head_of(np.asarray(a["image"]), np.asarray(a["sequence_mask"], bool))
        if a["mask"] is not None and ((np.asarray(a["mask"]) > 0) & head).any():
            with_lesion.add(sid)
    assert {r["study_id"] for r in res["rows"]} == with_lesion and len(with_lesion) >= 15
    for r in res["rows"]:
        truth = json.loads((cohort / r["study_id"] / "ground_truth.json").read_text())
        cls, variant = r["kind"].split("/")[:2]
        assert cls == truth["label"] and any(f.get("class") == cls and f.get("variant") == variant for f in truth["findings"])
    assert sum(s["n"] for s in res["summary"].values()) == len(res["rows"])


def test_the_onset_option_lowers_the_acute_infarcts_only(results):
    (_, plain), (_, onset) = results["plain"], results["onset"]
    acute = [k for k in plain["summary"] if k.startswith("infarct/") and k.endswith("/acute")]
    assert acute
    for k in acute:
        assert onset["summary"][k]["n"] == plain["summary"][k]["n"]
        assert onset["summary"][k]["contrast_mean"] < plain["summary"][k]["contrast_mean"] - 0.1, k
    by_id = {r["study_id"]: r for r in onset["rows"]}
    others = [r for r in plain["rows"] if r["kind"] not in acute]
    assert others and all(by_id[r["study_id"]] == r for r in others)  # the same images: the same values


def test_bad_input_is_one_line(results, tmp_path, capsys):
    cohort, _ = results["plain"]
    with pytest.raises(SystemExit, match="--sequence t1: the cache .* holds"):
        bench.main(["--cohort", str(cohort), "--sequence", "t1"])
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "manifest.csv").write_text((cohort / "manifest.csv").read_text())
    with pytest.raises(SystemExit, match="no ground truth for study S0000"):
        bench.main(["--cohort", str(tmp_path / "c")])
