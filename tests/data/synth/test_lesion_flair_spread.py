"""Each lesion component's FLAIR conspicuity drawn apart (``synth brain --lesion-flair-spread P``, issue 20): who gets
a draw, that nothing else in the plan moves, that the contrast table moves FLAIR only and keeps a bright component bright
and a dark one dark, that the image follows, and the CLI."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from medalign.data.synth import randomise as R
from medalign.data.synth.brain import plan_cohort, synthesize_study
from medalign.data.synth.flair_drawn import LESION_FLAIR_SPREAD
from medalign.data.synth.sequences import LESION_CONTRAST, SEQUENCES, TISSUE_CONTRAST

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plan_checks import only_flair_moves, option_cli  # noqa: E402

KW = dict(seed=5, studies_per_patient="1-2", paraphrases=0)


@pytest.fixture(scope="module")
def plans() -> dict:
    return {p: plan_cohort(120, domain=R.DomainOptions(lesion_flair_spread=p), **KW) for p in (0.0, 0.5, 1.0)}


def test_plan_draws_a_factor_per_component_and_changes_nothing_else(plans):
    base = plan_cohort(120, **KW)
    assert plans[0.0] == base  # P = 0 draws nothing
    for t0, t1 in zip(base, plans[1.0]):
        k = t1["domain"]["flair_k"]
        assert set(k) == set(LESION_CONTRAST) and all(LESION_FLAIR_SPREAD[0] <= v <= LESION_FLAIR_SPREAD[1] for v in k.values())
        assert {**t1, "domain": {d: v for d, v in t1["domain"].items() if d != "flair_k"}} == t0
    half = {t["study_id"] for t in plans[0.5] if "flair_k" in t["domain"]}
    assert 0.25 * len(base) < len(half) < 0.75 * len(base)
    by_id = {t["study_id"]: t for t in plans[1.0]}
    assert all(t["domain"]["flair_k"] == by_id[t["study_id"]]["domain"]["flair_k"] for t in plans[0.5] if t["study_id"] in half)
    spread = np.array([list(t["domain"]["flair_k"].values()) for t in plans[1.0]])  # (studies, components)
    assert spread.std(0).min() > 0.2  # drawn apart per study and component, not one factor


def test_the_contrast_table_moves_flair_only_and_keeps_each_side_of_the_white_matter(plans):
    t = plans[1.0][0]
    dom, fi = t["domain"], SEQUENCES.index("flair")
    plain, spread = R.study_contrast({d: v for d, v in dom.items() if d != "flair_k"}), R.study_contrast(dom)
    wm = dom["contrast"]["flair"]["wm"]
    only_flair_moves(plain, spread)
    for name in LESION_CONTRAST:
        a, b, f = plain["lesion"][name][fi], spread["lesion"][name][fi], dom["flair_k"][name]
        assert (a > wm) == (b > wm)  # bright stays bright, dark stays dark
        assert b == pytest.approx(wm * (a / wm) ** f)  # the factor acts on the exponent
    assert LESION_CONTRAST["edema"][fi] > TISSUE_CONTRAST["flair"]["wm"]


def test_the_image_follows_the_draw():
    t = next(t for t in plan_cohort(40, 2) if any(f.get("variant") == "glioma" for f in t["findings"]))

    def tumour_over_head(factor: float) -> tuple[float, np.ndarray]:
        dom = {**t["domain"], "flair_k": dict.fromkeys(LESION_CONTRAST, factor)}
        out = synthesize_study({**t, "domain": dom}, shape_mode="small")
        x, m = np.asarray(out["flair"][0], float), np.asarray(out["mask"][0]) > 0.5
        return float(np.median(x[m]) / np.median(x[(x > 0.25 * np.percentile(x, 99)) & ~m])), out["dwi"][0]

    (lo, dwi_lo), (hi, dwi_hi) = tumour_over_head(0.5), tumour_over_head(1.5)
    np.testing.assert_array_equal(dwi_lo, dwi_hi)  # FLAIR only
    assert hi > 1.1 * lo, (lo, hi)


def test_the_option_from_the_command_line(tmp_path, capsys):
    out = option_cli(tmp_path, capsys, "--lesion-flair-spread")
    truth = json.loads(next(out.glob("S*/ground_truth.json")).read_text())
    assert set(truth["domain"]["flair_k"]) == set(LESION_CONTRAST)


def test_a_drawn_flair_signal_takes_its_component_s_factor_too():
    t = next(t for t in plan_cohort(120, domain=R.DomainOptions(lesion_flair_spread=1.0, infarct_onset=1.0), **KW)
             if any("onset_flair" in f for f in t["findings"]))
    dom, fi = t["domain"], SEQUENCES.index("flair")
    v = next(f["onset_flair"] for f in t["findings"] if "onset_flair" in f)
    wm = dom["contrast"]["flair"]["wm"]
    want = wm * (v / TISSUE_CONTRAST["flair"]["wm"]) ** (dom["conspicuity"] * dom["flair_k"]["infarct_acute"])
    assert R.study_contrast(dom, t["findings"])["lesion"]["infarct_acute"][fi] == pytest.approx(want)
