"""Background small vessel disease beside an infarct, a bleed or a tumour (``synth brain
--comorbid-svd P``, issue 20): who gets it and how often, that nothing else in the plan moves,
that the report names it, that it is drawn but kept out of the class's lesion mask, and the CLI."""
from __future__ import annotations

import copy
import json
import re

import numpy as np
import pytest

from medalign.data.reports import label_reports
from medalign.data.synth import randomise as R
from medalign.data.synth.brain import plan_cohort, synthesize_study


def _comorbid(t: dict) -> list[dict]:
    return [f for f in t["findings"] if f.get("comorbid")]


def test_plan_adds_it_to_eligible_patients_only_and_changes_nothing_else():
    kw = dict(seed=8, studies_per_patient="1-3", paraphrases=2)
    base = plan_cohort(300, **kw)
    assert plan_cohort(300, domain=R.DomainOptions(comorbid_svd=0.0), **kw) == base  # off: the plan unchanged
    plans = plan_cohort(300, domain=R.DomainOptions(comorbid_svd=0.7), **kw)
    eligible = hits = 0
    by_patient: dict[str, set] = {}
    for before, t in zip(base, plans):
        co = _comorbid(t)
        ok = t["label"] in R.COMORBID_CLASSES and t["age_years"] >= R.COMORBID_MIN_AGE
        eligible += ok
        hits += bool(co)
        if not co:
            assert t == before  # every study without it planned exactly as before
            continue
        assert ok and len(co) == 1 and t["label"] == before["label"] and t["manifest_label"] == before["manifest_label"]
        f = co[0]
        assert f["class"] == "others" and f["variant"] == "wmh" and f["fazekas"] in (1, 2, 3)
        assert t["findings"][:-1] == before["findings"] and t["domain"] == before["domain"]
        grade = re.compile(rf"Fazekas (grade )?{f['fazekas']}")
        for text in [t["report"], *t["report_paraphrases"]]:  # every family names the drawn grade
            assert grade.search(text), text
        by_patient.setdefault(t["patient_id"], set()).add(f["fazekas"])
    assert 0.55 < hits / eligible < 0.85, (hits, eligible)  # p = 0.7 (binomial sd ~0.04 here)
    assert all(len(g) == 1 for g in by_patient.values())  # a patient's follow-ups keep their grade
    # the background finding does not take the report's class: the labeller reads it as the main one
    co = [t for t in plans if _comorbid(t)][:40]
    texts = [x for t in co for x in (t["report"], *t["report_paraphrases"])]
    assert label_reports(texts) == [t["label"] for t in co for _ in range(1 + len(t["report_paraphrases"]))]


def test_drawn_on_flair_but_not_in_the_lesion_mask():
    t = next(copy.deepcopy(t) for t in plan_cohort(60, seed=4) if t["label"] == "tumor")
    f = R.comorbid_svd_finding({**t, "age_years": 70.0}, 1.0)
    assert f is not None and R.comorbid_svd_finding({**t, "age_years": 40.0}, 1.0) is None
    assert R.comorbid_svd_finding({**t, "label": "normal", "age_years": 70.0}, 1.0) is None
    f["fazekas"] = 3
    with_svd = copy.deepcopy(t)
    with_svd["findings"].append(f)
    a, b = synthesize_study(t, shape_mode="small"), synthesize_study(with_svd, shape_mode="small")
    assert np.array_equal(a["mask"][0], b["mask"][0]) and a["lesion_volume_ml"] == b["lesion_volume_ml"]
    assert np.array_equal(a["flair"][1], b["flair"][1])  # same grid
    brighter = (b["flair"][0] - a["flair"][0]) > 0.1 * np.percentile(a["flair"][0], 99)
    outside = brighter & (a["mask"][0] == 0)
    # white-matter hyperintensities drawn outside the tumour's mask (scattered since stop 43: few voxels of
    # the 4 mm small-mode grid; without the finding none)
    assert outside.sum() > 20, outside.sum()


def test_cli_option_recorded_and_bad_values_fail_in_one_line(tmp_path, capsys):
    from medalign.cli import main

    rc = main(["synth", "brain", "--n", "20", "--seed", "3", "--shape-mode", "small", "--workers", "1",
               "--paraphrases", "0", "--out", str(tmp_path / "c"), "--comorbid-svd", "1"])
    assert rc == 0
    assert json.loads((tmp_path / "c" / "cohort.json").read_text())["comorbid_svd"] == 1.0
    gts = [json.loads(p.read_text()) for p in (tmp_path / "c").glob("*/ground_truth.json")]
    want = [g["study_id"] for g in gts if g["label"] in R.COMORBID_CLASSES and g["age_years"] >= R.COMORBID_MIN_AGE]
    assert want and sorted(want) == sorted(g["study_id"] for g in gts if _comorbid(g))  # p = 1: every eligible one
    rc = main(["synth", "brain", "--n", "20", "--shape-mode", "small", "--no-randomise",
               "--out", str(tmp_path / "d"), "--comorbid-svd", "0.5"])
    err = capsys.readouterr().err
    assert rc != 0 and "drop --no-randomise" in err and not (tmp_path / "d").exists()
    from medalign.data.synth.brain import generate_brain_cohort
    from medalign.errors import MedAlignError

    with pytest.raises(MedAlignError, match="probability"):
        generate_brain_cohort(tmp_path / "e", n=5, domain=R.DomainOptions(comorbid_svd=1.5))
