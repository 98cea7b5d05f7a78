"""Hyperacute infarcts not yet seen on FLAIR (``synth brain --infarct-mismatch P``, issue 20): who gets one, that nothing
else in the plan moves, that the study's contrast table and image change the infarct's FLAIR signal only, that the report
says what was drawn, and the CLI."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from medalign.data.synth import randomise as R
from medalign.data.synth.brain import plan_cohort, synthesize_study
from medalign.data.synth.flair_drawn import INFARCT_MISMATCH_FLAIR
from medalign.data.synth.sequences import SEQUENCES

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plan_checks import only_flair_moves, option_cli  # noqa: E402

KW = dict(seed=3, studies_per_patient="1-3", paraphrases=0)  # follow-ups: their infarcts are chronic


def _acute(t: dict) -> list[dict]:
    return [f for f in t["findings"] if f.get("class") == "infarct" and f.get("age") == "acute"
            and f.get("variant") in ("territorial", "lacunar")]


def _hyperacute(t: dict) -> bool:
    return any("mismatch_flair" in f for f in t["findings"])


@pytest.fixture(scope="module")
def plans() -> dict:
    return {p: plan_cohort(240, domain=R.DomainOptions(infarct_mismatch=p), **KW) for p in (0.0, 0.5, 1.0)}


def test_plan_marks_acute_infarcts_and_changes_nothing_else(plans):
    base = plan_cohort(240, **KW)
    assert plans[0.0] == base  # P = 0 draws nothing
    assert all(_hyperacute(t) == bool(_acute(t)) for t in plans[1.0])  # every acute territorial / lacunar infarct
    n_acute = sum(bool(_acute(t)) for t in base)
    n_half = sum(_hyperacute(t) for t in plans[0.5])
    assert n_acute >= 20 and 0.25 * n_acute < n_half < 0.75 * n_acute, (n_half, n_acute)
    for t0, t1 in zip(base, plans[0.5]):
        for f in t1["findings"]:
            if "mismatch_flair" in f:
                assert f["age"] == "acute" and f["variant"] in ("territorial", "lacunar")
                assert INFARCT_MISMATCH_FLAIR[0] <= f["mismatch_flair"] <= INFARCT_MISMATCH_FLAIR[1]
        assert [{k: v for k, v in f.items() if k != "mismatch_flair"} for f in t1["findings"]] == t0["findings"]
        same = {k for k in t0 if t0[k] == t1[k]}
        assert same == set(t0) - ({"findings", "report"} if _hyperacute(t1) else set())


def test_the_report_says_what_was_drawn(plans):
    for t in plans[0.5]:
        text = t["report"].lower()
        if _hyperacute(t):
            assert "flair" in text and ("mismatch" in text or "no flair" in text), t["report"]
            assert "early flair change" not in text
        else:
            assert "mismatch" not in text and "hyperacute" not in text


def test_the_contrast_table_moves_the_infarct_flair_only(plans):
    t = next(t for t in plans[1.0] if _acute(t))
    dom = t["domain"]
    plain, hyper = R.study_contrast(dom), R.study_contrast(dom, t["findings"])
    fi = SEQUENCES.index("flair")
    only_flair_moves(plain, hyper, "infarct_acute")
    wm, gm = dom["contrast"]["flair"]["wm"], dom["contrast"]["flair"]["gm"]
    assert plain["lesion"]["infarct_acute"][fi] > gm  # bright, as every acute infarct was drawn
    assert hyper["lesion"]["infarct_acute"][fi] < plain["lesion"]["infarct_acute"][fi]
    lo = R.study_contrast(dom, [dict(_acute(t)[0], mismatch_flair=INFARCT_MISMATCH_FLAIR[0])])["lesion"]["infarct_acute"][fi]
    assert lo == pytest.approx(wm)  # the bottom of the range is the study's own WM: iso


def test_a_hyperacute_infarct_is_bright_on_dwi_and_not_on_flair():
    t1 = next(t for t in plan_cohort(60, 1, domain=R.DomainOptions(infarct_mismatch=1.0))
              if any(f["variant"] == "territorial" for f in _acute(t)))
    t0 = next(t for t in plan_cohort(60, 1) if t["study_id"] == t1["study_id"])
    a, b = synthesize_study(t0, shape_mode="small"), synthesize_study(t1, shape_mode="small")
    np.testing.assert_array_equal(a["dwi"][0], b["dwi"][0])  # the same draw; only FLAIR's lesion signal moved

    def lesion_over_head(out: dict) -> float:
        x, m = np.asarray(out["flair"][0], float), np.asarray(out["mask"][0]) > 0.5
        head = x > 0.25 * np.percentile(x, 99)
        return float(np.median(x[m]) / np.median(x[head & ~m]))

    assert lesion_over_head(a) > 1.3 and lesion_over_head(b) < 0.85 * lesion_over_head(a), (lesion_over_head(a), lesion_over_head(b))


def test_the_option_from_the_command_line(tmp_path, capsys):
    option_cli(tmp_path, capsys, "--infarct-mismatch")