"""benchmarks/neighbour_vote.py: the nearest training studies' vote against the prompts on a held-out cohort,
on the same embeddings; the vote's pure parts on hand-made embeddings, the script on a tiny run."""
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

bench = load_benchmark("neighbour_vote")


def test_vote_calls_take_the_majority_of_the_k_nearest_by_cosine():
    train = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [0.2, 0.8]])  # (N, E)
    labels = ["tumor", "tumor", "others", "others", "others"]
    test = np.array([[5.0, 0.2], [0.1, 1.0]])  # length does not matter, direction does
    assert bench.vote_calls(train, labels, test, 2) == ["tumor", "others"]
    assert bench.vote_calls(train, labels, test, 5) == ["others", "others"]  # every training study votes
    zs = (["tumor", "others"], np.array([[0.1, 0.9], [0.7, 0.3]]))  # zero-shot against the vote on both
    assert bench.vote_calls(train, labels, test, 2, 0.25, zs) == ["others", "tumor"]  # 0.25 x 1 < 0.75 x 0.9, ...
    assert bench.vote_calls(train, labels, test, 2, 0.75, zs) == ["tumor", "others"]  # ... and the vote outweighs it
    s = bench.scored(["tumor", "others", "others"], ["tumor", "tumor", "others"])
    assert (s["k"], s["n"]) == (2, 3) and s["per_class"] == {"others": [1, 1], "tumor": [1, 2]}


def _set_split(study: Path, split: str) -> None:
    gt = json.loads((study / "ground_truth.json").read_text(encoding="utf-8"))
    (study / "ground_truth.json").write_text(json.dumps({**gt, "split": split}), encoding="utf-8")


def test_per_class_counts_pool_over_runs():
    assert bench.pooled_per_class([{"tumor": [1, 2], "others": [0, 1]}, {"tumor": [2, 2], "infarct": [1, 3]}]) == \
        {"infarct": [1, 3], "others": [0, 1], "tumor": [3, 4]}


def test_script_on_a_tiny_run(tmp_path, monkeypatch):
    """Every training study voting (k = 3 of the train split's 3; the val study left out) calls every held-out
    study by the training majority, whatever the embeddings; zero-shot is classify's own call on the files."""
    import medalign

    run = _tiny_run(tmp_path, monkeypatch)
    rng = np.random.default_rng(5)
    train, held = tmp_path / "train", tmp_path / "held"
    write_lesion_study(train, "T1", "others", "wmh", rng)
    write_lesion_study(train, "T2", "others", "wmh", rng)
    _normal_study(train, "T3", rng)
    write_lesion_study(train, "V1", "tumor", "glioma", rng)
    for sid in ("T1", "T2", "T3"):
        _set_split(train / sid, "train")
    _set_split(train / "V1", "val")
    write_lesion_study(held, "H1", "others", "wmh", rng)
    _normal_study(held, "H2", rng)
    (held / "H2" / "dwi.nii.gz").unlink()  # FLAIR only: read in the FLAIR-alone view, not the full one
    out = tmp_path / "vote.json"
    monkeypatch.setattr(sys, "argv", ["neighbour_vote.py", str(run), "--train-cohort", str(train), "--heldout", str(held),
                                      "--k", "3", "--alone", "flair", "--out", str(out)])
    bench.main()
    res = json.loads(out.read_text(encoding="utf-8"))
    rows = res["runs"][str(run)]
    assert rows["full"]["n"] == 1 and rows["full"]["n_train"] == 3  # H2 lacks DWI; V1 is not in the train split
    alone = rows["flair alone"]
    assert alone["n"] == 2 and alone["vote"]["per_class"] == {"normal": [0, 1], "others": [1, 1]}
    m = medalign.load(run)
    direct = m.classify([{"flair": str(held / s / "flair.nii.gz")} for s in ("H1", "H2")])
    right = sum(d["label"] == y for d, y in zip(direct, ("others", "normal")))
    assert alone["zero_shot"]["k"] == right
    assert res["mean"]["flair alone"] == {"vote": 0.5, "zero_shot": right / 2}
    assert res["per_class"]["flair alone"]["vote"] == {"normal": [0, 1], "others": [1, 1]}  # pooled per class
    assert sum(r for r, _ in res["per_class"]["flair alone"]["zero_shot"].values()) == right
    monkeypatch.setattr(sys, "argv", ["neighbour_vote.py", str(run), "--train-cohort", str(train), "--heldout", str(held),
                                      "--splits", "test"])
    with pytest.raises(SystemExit, match=r"no study with any of .* in splits \['test'\]"):
        bench.main()
