"""Lesion-free twins (issue 20): the same scan without its findings, reported normal, training split
only, on their own random stream so that the rest of the cohort is unchanged."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from medalign.data.reports import label_reports
from medalign.data.synth.brain import plan_cohort
from medalign.errors import MedAlignError

nib = pytest.importorskip("nibabel")


def test_twins_copy_the_scan_and_drop_the_findings():
    base = plan_cohort(120, 4, paraphrases=2)
    plans = plan_cohort(120, 4, paraphrases=2, twins=1.0)
    assert plans[:120] == base  # the planned cohort is untouched
    twins = plans[120:]
    by_id = {p["study_id"]: p for p in base}
    eligible = [p for p in base if p["split"] == "train" and p["label"] != "normal" and not p["label_noise"]
                and not any(f["variant"] == "atrophy" for f in p["findings"])]
    assert sorted(t["twin_of"] for t in twins) == sorted(p["study_id"] for p in eligible)
    assert len({t["study_id"] for t in plans}) == len(plans)  # ids continue after the planned ones
    for t in twins:
        src = by_id[t["twin_of"]]
        assert t["label"] == t["manifest_label"] == "normal" and t["findings"] == [] and t["split"] == "train"
        # one person on one scanner: what else the report could be read from is the same
        for key in ("patient_id", "anatomy_seed", "age_years", "atrophy", "domain", "incidental"):
            assert t[key] == src[key], key
        assert t["seed"] != src["seed"]  # fresh noise
    assert label_reports([t["report"] for t in twins]) == ["normal"] * len(twins)
    assert all(label_reports(t["report_paraphrases"]) == ["normal"] * len(t["report_paraphrases"]) for t in twins)


def test_twin_fraction_and_classes():
    plans = plan_cohort(200, 2, twins=0.5, twin_classes=["others"])
    twins = plans[200:]
    src = {p["study_id"]: p for p in plans[:200]}
    assert twins and {src[t["twin_of"]]["label"] for t in twins} == {"others"}
    eligible = sum(p["split"] == "train" and p["label"] == "others" and not p["label_noise"]
                   and not any(f["variant"] == "atrophy" for f in p["findings"]) for p in plans[:200])
    assert 0.2 * eligible <= len(twins) <= 0.8 * eligible
    with pytest.raises(MedAlignError, match="normal"):
        plan_cohort(40, 0, twins=0.5, twin_classes=["normal"])
    with pytest.raises(MedAlignError, match="twins"):
        plan_cohort(40, 0, twins=1.5)


def test_cli_writes_twins_without_lesions(tmp_path, capsys):
    from medalign.cli import main

    out = tmp_path / "tw"
    assert main(["synth", "brain", "--n", "20", "--out", str(out), "--seed", "3", "--shape-mode", "small",
                 "--workers", "1", "--paraphrases", "1", "--twins", "1", "--twin-classes", "tumor,others"]) == 0
    info = json.loads((out / "cohort.json").read_text(encoding="utf-8"))
    df = pd.read_csv(out / "manifest.csv")
    k = info["twins"]["n"]
    assert k > 0 and len(df) == 20 + k and f"wrote {20 + k} studies" in capsys.readouterr().out
    for row in df.iloc[20:].itertuples():
        gt = json.loads((out / row.study_id / "ground_truth.json").read_text(encoding="utf-8"))
        src = json.loads((out / gt["twin_of"] / "ground_truth.json").read_text(encoding="utf-8"))
        assert row.label == "normal" and src["label"] in ("tumor", "others") and row.split == "train"
        assert gt["lesion_volume_ml"] == 0 and src["lesion_volume_ml"] > 0
        assert np.asarray(nib.load(out / row.study_id / "lesion_mask.nii.gz").dataobj).max() == 0
        assert gt["domain"] == src["domain"] and gt["patient_id"] == src["patient_id"]
