"""Small vessel disease instead of another "others" finding (``synth brain --others-svd P``, issue 20): who gets it, that
the class balance and everything else in the plan stay, that the converted study is graded, drawn and reported as small
vessel disease, and the CLI."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from collections import Counter

import numpy as np
import pytest

from medalign.data.synth import randomise as R
from medalign.data.synth.brain import plan_cohort, synthesize_study

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plan_checks import option_cli  # noqa: E402

KW = dict(seed=5, studies_per_patient="1-3", paraphrases=0)  # follow-ups: a patient's visits must agree


def _variant(t: dict) -> str | None:
    return next((f["variant"] for f in t["findings"] if f["kind"] == "others"), None)


@pytest.fixture(scope="module")
def plans() -> dict:
    return {p: plan_cohort(800, domain=R.DomainOptions(others_svd=p), **KW) for p in (0.0, 0.5, 1.0)}


def test_a_share_of_the_other_findings_becomes_small_vessel_disease(plans):
    base = plan_cohort(800, **KW)
    assert plans[0.0] == base  # P = 0 draws nothing
    others = [t for t in base if t["label"] == "others"]
    assert {_variant(t) for t in others} == {"atrophy", "wmh", "demyelination", "sinus"}
    assert all(_variant(t) == "wmh" for t in plans[1.0] if t["label"] == "others")
    n_other = len({t["patient_id"] for t in others if _variant(t) != "wmh"})  # a patient's draw: count patients
    n_half = len({b["patient_id"] for a, b in zip(base, plans[0.5]) if _variant(a) != _variant(b)})
    assert n_other >= 30 and 0.25 * n_other < n_half < 0.75 * n_other, (n_half, n_other)
    assert [t["label"] for t in plans[0.5]] == [t["label"] for t in base]  # the class balance is the plan's
    visits = {}
    for t0, t1 in zip(base, plans[0.5]):
        visits.setdefault(t1["patient_id"], set()).add(_variant(t1))
        if _variant(t0) == _variant(t1):
            assert t0 == t1  # studies that keep their finding are byte-identical
            continue
        assert _variant(t0) != "wmh" and t1["label"] == "others"
        f = next(f for f in t1["findings"] if f["kind"] == "others")
        assert f["fazekas"] in (1, 2, 3) and f["region"] == "periventricular and deep" and f["side"] == "bilateral"
        assert "locations" not in f and f["size_mm"] is None and 0.7 <= f["severity"] <= 1.0
        if _variant(t0) == "atrophy":  # the class's 0.7-1.0 gives way to the age's atrophy
            assert t0["domain"]["patient"]["atrophy_base"] >= 0.7 > t1["domain"]["patient"]["atrophy_base"]
        same = {k for k in t0 if t0[k] == t1[k]}
        assert same >= set(t0) - {"findings", "report", "atrophy", "domain"}
        assert t1["domain"]["contrast"] == t0["domain"]["contrast"]  # the scanner's draws do not move
    assert all(len(v) == 1 for v in visits.values())  # follow-ups keep the patient's finding


def test_the_report_names_small_vessel_disease(plans):
    changed = [b for a, b in zip(plans[0.0], plans[0.5]) if _variant(a) != _variant(b)]
    assert changed
    for t in changed:
        text = t["report"].lower()
        assert "fazekas" in text or "small vessel" in text or "leukoaraiosis" in text or "microangiopath" in text, t["report"]
        assert "atrophy" not in text.split("conclusion")[-1] and "demyelinat" not in text and "sinus" not in text


def test_the_converted_study_is_drawn_as_white_matter_disease():
    plan0 = plan_cohort(60, 2)
    plan1 = plan_cohort(60, 2, domain=R.DomainOptions(others_svd=1.0))
    t0, t1 = next((a, b) for a, b in zip(plan0, plan1) if _variant(a) == "sinus" and _variant(b) == "wmh")
    a, b = synthesize_study(t0, shape_mode="small"), synthesize_study(t1, shape_mode="small")
    ma, mb = np.asarray(a["mask"][0]) > 0.5, np.asarray(b["mask"][0]) > 0.5
    assert ma.any() and mb.any() and not np.array_equal(ma, mb)  # sinus mucosa vs caps and foci
    x = np.asarray(b["flair"][0], float)
    assert np.median(x[mb]) > np.median(x[~mb & (x > 0.25 * np.percentile(x, 99))])  # bright on FLAIR


def test_the_option_from_the_command_line(tmp_path, capsys):
    out = option_cli(tmp_path, capsys, "--others-svd")
    gts = [json.loads(p.read_text()) for p in sorted(out.glob("S*/ground_truth.json"))]
    assert Counter(_variant(t) for t in gts if t["label"] == "others") == Counter({"wmh": 4})
