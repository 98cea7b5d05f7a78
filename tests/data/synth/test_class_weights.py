"""Training-split class weights (issue 20: more distinct white-matter-disease studies at the same
cohort size): the training split is shared in the given proportions, val and test stay balanced."""
from __future__ import annotations

import json
from collections import Counter

import pandas as pd
import pytest

from medalign.data.schema import CLASSES
from medalign.data.synth.brain import plan_cohort, weighted_class_counts
from medalign.data.synth.commands import parse_class_weights
from medalign.errors import MedAlignError


def test_counts_follow_the_weights_and_sum_to_n():
    assert weighted_class_counts(211, {"others": 2}) == {"infarct": 35, "tumor": 35, "hemorrhage": 35,
                                                         "normal": 35, "others": 71}
    assert weighted_class_counts(10, {}) == {c: 2 for c in CLASSES}
    # 7 x (1, 0, 1, 1, 3) / 6 = 1.17, 0, 1.17, 1.17, 3.5: floors sum to 6, the largest remainder takes the 7th
    assert weighted_class_counts(7, {"tumor": 0, "others": 3}) == {"infarct": 1, "tumor": 0, "hemorrhage": 1,
                                                                   "normal": 1, "others": 4}


def test_plan_weights_the_training_split_only():
    base = plan_cohort(120, 3)
    plans = plan_cohort(120, 3, class_weights={"others": 3, "normal": 0.5})
    by_split = {s: Counter(p["label"] for p in plans if p["split"] == s) for s in ("train", "val", "test")}
    base_split = {s: Counter(p["label"] for p in base if p["split"] == s) for s in ("train", "val", "test")}
    assert by_split["val"] == base_split["val"] and by_split["test"] == base_split["test"]
    n_train = sum(base_split["train"].values())
    assert dict(by_split["train"]) == {c: k for c, k in weighted_class_counts(
        n_train, {"others": 3, "normal": 0.5}).items() if k}
    assert by_split["train"]["others"] > 2.5 * by_split["train"]["tumor"] > 2.5 * by_split["train"]["normal"]
    assert plan_cohort(120, 3, class_weights=None) == base  # no weights: the cohort as before


@pytest.mark.parametrize("text, msg", [("others", "CLASS=WEIGHT"), ("others=x", "CLASS=WEIGHT"),
                                       ("stroke=2", "unknown class 'stroke'"), ("others=-1", ">= 0"),
                                       ("infarct=0,tumor=0,hemorrhage=0,normal=0,others=0", "not all 0")])
def test_bad_weights_are_named(text, msg):
    with pytest.raises(MedAlignError, match=msg):
        parse_class_weights(text)


def test_parse():
    assert parse_class_weights("") is None
    assert parse_class_weights(" others=2, normal=0.5 ") == {"others": 2.0, "normal": 0.5}


def test_cli_records_the_weights(tmp_path):
    from medalign.cli import main

    out = tmp_path / "w"
    assert main(["synth", "brain", "--n", "20", "--out", str(out), "--seed", "1", "--shape-mode", "small",
                 "--workers", "1", "--paraphrases", "0", "--class-weights", "others=4"]) == 0
    info = json.loads((out / "cohort.json").read_text(encoding="utf-8"))
    assert info["class_weights"] == {c: (4.0 if c == "others" else 1.0) for c in CLASSES}
    train = pd.read_csv(out / "manifest.csv").query("split == 'train'")
    assert (train.label == "others").sum() == weighted_class_counts(len(train), {"others": 4})["others"]
    assert main(["synth", "brain", "--n", "20", "--out", str(tmp_path / "bad"), "--shape-mode", "small",
                 "--class-weights", "stroke=1"]) != 0
