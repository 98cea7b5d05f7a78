"""Large glioma cores of drawn FLAIR signal (``synth brain --glioma-cores P``, issue 20): who gets one, that
nothing else in the plan moves, that the study's contrast table changes the core's FLAIR signal only, that the
drawn FLAIR is heterogeneous inside the tumour as the real BraTS FLAIRs are, and the CLI."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from medalign.data.realism_compare import _robust_sd
from medalign.data.synth import randomise as R
from medalign.data.synth.brain import plan_cohort, synthesize_study
from medalign.data.synth.flair_drawn import GLIOMA_CORE_FLAIR, GLIOMA_CORE_RADIUS
from medalign.data.synth.sequences import SEQUENCES

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plan_checks import added_keys, only_flair_moves, option_cli  # noqa: E402

KW = dict(seed=6, studies_per_patient="1-3", paraphrases=0)


def _necrotic(t: dict) -> list[dict]:
    return [f for f in t["findings"] if f.get("variant") == "glioma" and f.get("necrosis")]


@pytest.fixture(scope="module")
def plans() -> dict:
    return {p: plan_cohort(200, domain=R.DomainOptions(glioma_cores=p), **KW) for p in (0.0, 0.5, 1.0)}


def test_plan_gives_necrotic_gliomas_a_core_and_changes_nothing_else(plans):
    base = plan_cohort(200, **KW)
    assert plans[0.0] == base  # off: the plan unchanged
    necrotic = {t["study_id"] for t in base if _necrotic(t)}
    got = {p: {t["study_id"] for t in plans[p] if any("core_flair" in f for f in t["findings"])} for p in (0.5, 1.0)}
    assert got[1.0] == necrotic and len(necrotic) > 10
    assert got[0.5] < got[1.0] and 0.2 < len(got[0.5]) / len(necrotic) < 0.8  # one draw: a share, nested
    added, cores = added_keys(base, plans[1.0], necrotic), {}  # other studies, non-necrotic gliomas included: unchanged
    for before, t in zip(base, plans[1.0]):
        for f0, extra in zip(before["findings"], added.get(t["study_id"], [])):
            if f0 in _necrotic(before):
                assert set(extra) == {"core_radius", "core_flair"}
                assert GLIOMA_CORE_RADIUS[0] <= extra["core_radius"] <= GLIOMA_CORE_RADIUS[1]
                assert GLIOMA_CORE_FLAIR[0] <= extra["core_flair"] <= GLIOMA_CORE_FLAIR[1]
                cores.setdefault(t["patient_id"], set()).add((extra["core_radius"], extra["core_flair"]))
            else:
                assert not extra
        if t["study_id"] in necrotic:
            assert t["report"] == before["report"]  # "a necrotic centre" was already reported
    assert all(len(v) == 1 for v in cores.values())  # follow-ups keep the core
    flairs = [c[1] for v in cores.values() for c in v]
    assert min(flairs) < 0.3 and max(flairs) > 0.5  # from dark to bright


def test_the_contrast_table_moves_the_core_flair_only():
    t = next(t for t in plan_cohort(60, 2, domain=R.DomainOptions(glioma_cores=1.0)) if _necrotic(t))
    dom, f = t["domain"], _necrotic(t)[0]
    plain, cored = R.study_contrast(dom), R.study_contrast(dom, t["findings"])
    fi = SEQUENCES.index("flair")
    assert R.study_contrast(dom, []) == plain
    only_flair_moves(plain, cored, "tumor_necrosis")
    darker = dict(f, core_flair=0.1)
    brighter = dict(f, core_flair=0.7)
    lo = R.study_contrast(dom, [darker])["lesion"]["tumor_necrosis"][fi]
    hi = R.study_contrast(dom, [brighter])["lesion"]["tumor_necrosis"][fi]
    assert lo < dom["contrast"]["flair"]["wm"] < hi  # CSF-like below WM, oedema-like above it


def _flair_spread(truth: dict) -> float:
    out = synthesize_study(truth, shape_mode="small")
    x, m = np.asarray(out["flair"][0], float), np.asarray(out["mask"][0]) > 0
    head = x > 0.25 * np.percentile(x, 99)
    return _robust_sd(x[m]) / _robust_sd(x[head])


def test_a_dark_core_makes_the_tumour_heterogeneous_on_flair():
    t1 = next(t for t in plan_cohort(80, 1, domain=R.DomainOptions(glioma_cores=1.0))
              if _necrotic(t) and _necrotic(t)[0]["core_flair"] < 0.3)
    t0 = next(t for t in plan_cohort(80, 1) if t["study_id"] == t1["study_id"])
    a, b = _flair_spread(t0), _flair_spread(t1)
    assert b > 1.3 * a, (a, b)


def test_the_core_is_drawn_at_its_radius():
    from medalign.data.synth.anatomy import _tissues, load_anatomy
    from medalign.data.synth.lesions import _lesions

    anat = load_anatomy(4)

    def core_and_mask(t: dict) -> tuple[float, float]:
        comps, mask, _ = _lesions(anat, t, _tissues(anat, t)[0], np.random.default_rng(t["anatomy_seed"] + [5]))
        return sum(float(c.sum()) for name, c in comps if name == "tumor_necrosis"), float((mask > 0.5).sum())

    t1 = next(t for t in plan_cohort(80, 1, domain=R.DomainOptions(glioma_cores=1.0))
              if _necrotic(t) and _necrotic(t)[0]["core_radius"] > 0.8)
    t0 = next(t for t in plan_cohort(80, 1) if t["study_id"] == t1["study_id"])
    (c0, m0), (c1, m1) = core_and_mask(t0), core_and_mask(t1)
    assert m1 == m0  # the lesion mask is the tumour's, core or not
    ratio = (_necrotic(t1)[0]["core_radius"] / 0.55) ** 3  # a blob's volume goes with its radius cubed
    assert 0.6 * ratio < c1 / c0 < 1.4 * ratio, (c1 / c0, ratio)


def test_the_option_from_the_command_line(tmp_path, capsys):
    option_cli(tmp_path, capsys, "--glioma-cores")