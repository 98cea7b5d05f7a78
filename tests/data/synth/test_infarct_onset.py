"""Acute infarcts drawn across the time from onset (``synth brain --infarct-onset P``, issue 20): who gets a draw, that
it spans not-yet-visible to oedema-bright on FLAIR with the hyperacute ones reported as such, that nothing else in the
plan moves, that the image's FLAIR follows the draw, and the CLI."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from medalign.data.synth import randomise as R
from medalign.data.synth.brain import plan_cohort, synthesize_study
from medalign.data.synth.flair_drawn import INFARCT_MISMATCH_FLAIR, INFARCT_ONSET_FLAIR
from medalign.data.synth.sequences import SEQUENCES

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plan_checks import only_flair_moves, option_cli  # noqa: E402

KW = dict(seed=3, studies_per_patient="1-3", paraphrases=0)


def _acute(t: dict) -> list[dict]:
    return [f for f in t["findings"] if f.get("class") == "infarct" and f.get("age") == "acute"
            and f.get("variant") in ("territorial", "lacunar")]


def _drawn(f: dict) -> float | None:
    return f.get("onset_flair", f.get("mismatch_flair"))


@pytest.fixture(scope="module")
def plans() -> dict:
    return {p: plan_cohort(240, domain=R.DomainOptions(infarct_onset=p), **KW) for p in (0.0, 0.5, 1.0)}


def test_plan_draws_every_acute_infarct_across_onset_and_changes_nothing_else(plans):
    base = plan_cohort(240, **KW)
    assert plans[0.0] == base  # P = 0 draws nothing
    n_acute = sum(bool(_acute(t)) for t in base)
    assert all(all(_drawn(f) is not None for f in _acute(t)) for t in plans[1.0]) and n_acute >= 20
    n_half = sum(any(_drawn(f) is not None for f in _acute(t)) for t in plans[0.5])
    assert 0.25 * n_acute < n_half < 0.75 * n_acute, (n_half, n_acute)
    values = []
    for t0, t1 in zip(base, plans[1.0]):
        assert [{k: v for k, v in f.items() if k not in ("onset_flair", "mismatch_flair")} for f in t1["findings"]] == t0["findings"]
        hyper = any("mismatch_flair" in f for f in t1["findings"])
        assert {k for k in t0 if t0[k] == t1[k]} == set(t0) - ({"findings", "report"} if hyper else {"findings"} if _acute(t0) else set())
        for f in _acute(t1):
            v = _drawn(f)
            assert INFARCT_ONSET_FLAIR[0] <= v <= INFARCT_ONSET_FLAIR[1]
            assert ("mismatch_flair" in f) == (v <= INFARCT_MISMATCH_FLAIR[1])  # not yet visible = the mismatch range
            values.append(v)
    assert min(values) < INFARCT_MISMATCH_FLAIR[1] < 0.9 < max(values)  # the draw spans onset to days


def test_hyperacute_draws_are_reported_as_mismatch_and_the_rest_unchanged(plans):
    base = {t["study_id"]: t for t in plan_cohort(240, **KW)}
    for t in plans[1.0]:
        if any("mismatch_flair" in f for f in t["findings"]):
            assert "mismatch" in t["report"].lower() or "no flair" in t["report"].lower(), t["report"]
        else:
            assert t["report"] == base[t["study_id"]]["report"]


def test_a_hyperacute_draw_keeps_the_mismatch_option_s_value():
    both = plan_cohort(240, domain=R.DomainOptions(infarct_mismatch=1.0, infarct_onset=1.0), **KW)
    mismatch = plan_cohort(240, domain=R.DomainOptions(infarct_mismatch=1.0), **KW)
    assert both == mismatch  # every acute infarct is already hyperacute: the onset draws nothing more


def test_the_contrast_table_and_the_image_follow_the_draw():
    t = next(t for t in plan_cohort(60, 1, domain=R.DomainOptions(infarct_onset=1.0))
             if any(f["variant"] == "territorial" and f.get("onset_flair", 1.0) < 0.8 for f in _acute(t)))
    t0 = next(x for x in plan_cohort(60, 1) if x["study_id"] == t["study_id"])
    fi = SEQUENCES.index("flair")
    plain, drawn = R.study_contrast(t["domain"]), R.study_contrast(t["domain"], t["findings"])
    only_flair_moves(plain, drawn, "infarct_acute")
    assert drawn["lesion"]["infarct_acute"][fi] < plain["lesion"]["infarct_acute"][fi]
    a, b = synthesize_study(t0, shape_mode="small"), synthesize_study(t, shape_mode="small")
    np.testing.assert_array_equal(a["dwi"][0], b["dwi"][0])  # only FLAIR's lesion signal moved

    def lesion_over_head(out: dict) -> float:
        x, m = np.asarray(out["flair"][0], float), np.asarray(out["mask"][0]) > 0.5
        return float(np.median(x[m]) / np.median(x[(x > 0.25 * np.percentile(x, 99)) & ~m]))

    assert lesion_over_head(b) < 0.9 * lesion_over_head(a), (lesion_over_head(a), lesion_over_head(b))


def test_the_option_from_the_command_line(tmp_path, capsys):
    option_cli(tmp_path, capsys, "--infarct-onset")