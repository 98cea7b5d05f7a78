"""Territorial infarcts drawn by their arterial territory (``synth brain --infarct-territory P``,
issue 20): the cone primitive, who gets the shape, that nothing else in the plan moves, that the
drawn lesion is a wedge of its own hemisphere reaching the cortex, and the CLI."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from medalign.data.synth import randomise as R
from medalign.data.synth.brain import plan_cohort
from medalign.data.synth.lesions import TERRITORY_TAN_HALF
from medalign.data.synth.shapes import wedge

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plan_checks import option_cli  # noqa: E402


def _shaped(t: dict) -> list[dict]:
    return [f for f in t["findings"] if f.get("shape") == "territory"]


def test_wedge_is_a_cone_from_its_apex_past_its_tip():
    rng = np.random.default_rng(0)
    w = wedge((40, 40, 40), np.array([5.0, 20, 20]), np.array([25.0, 20, 20]), 0.5, rng, irregular=0.0, beyond=5)
    assert w.dtype == np.float32 and 0.0 <= w.min() and w.max() <= 1.0
    assert w[4, 20, 20] < 0.5 and w[6, 20, 20] > 0.5  # starts at the apex
    assert w[28, 20, 20] > 0.5 and w[32, 20, 20] < 0.5  # runs ``beyond`` voxels past the tip, then stops
    width = [(w[x, :, 20] > 0.5).sum() for x in (10, 15, 20, 25)]
    assert width == sorted(width) and width[0] < width[-1]  # widens with depth
    assert abs(width[-1] - 2 * 20 * 0.5) <= 3  # half-width = depth x tan_half (20 voxels deep at x = 25)
    assert w[25, 20 + 15, 20] < 0.5  # outside the side
    assert not wedge((40, 40, 40), np.array([5.0, 20, 20]), np.array([5.2, 20, 20]), 0.5, rng).any()  # no axis


def test_plan_marks_territorial_infarcts_only_and_changes_nothing_else():
    kw = dict(seed=8, studies_per_patient="1-3", paraphrases=1)
    base = plan_cohort(200, **kw)
    assert plan_cohort(200, domain=R.DomainOptions(infarct_territory=0.0), **kw) == base  # off: the plan unchanged
    plans = {p: plan_cohort(200, domain=R.DomainOptions(infarct_territory=p), **kw) for p in (0.5, 1.0)}
    territorial = {t["study_id"] for t in base if any(f.get("variant") == "territorial" for f in t["findings"])}
    got = {p: {t["study_id"] for t in v if _shaped(t)} for p, v in plans.items()}
    assert got[1.0] == territorial and len(territorial) > 10
    assert got[0.5] < got[1.0] and 0.2 < len(got[0.5]) / len(territorial) < 0.8  # one draw: a share, nested
    by_patient: dict[str, set] = {}
    n_studies: dict[str, int] = {}
    for before, t in zip(base, plans[1.0]):
        after = json.loads(json.dumps(t))
        for f in after["findings"]:
            if f.pop("shape", None):
                assert TERRITORY_TAN_HALF[0] <= f.pop("tan_half") <= TERRITORY_TAN_HALF[1]
        assert after == json.loads(json.dumps(before))  # nothing else moves, the report included
        if _shaped(t):
            by_patient.setdefault(t["patient_id"], set()).add(tuple((f["shape"], f["tan_half"]) for f in _shaped(t)))
            n_studies[t["patient_id"]] = n_studies.get(t["patient_id"], 0) + 1
    assert max(n_studies.values()) > 1 and all(len(v) == 1 for v in by_patient.values())  # follow-ups keep it


def _draw(t: dict) -> tuple[dict, np.ndarray, dict]:
    """The study's lesion-mask map and components on the template grid (4 mm), and the grid."""
    from medalign.data.synth.anatomy import _tissues, load_anatomy
    from medalign.data.synth.lesions import _lesions

    anat = load_anatomy(4)
    comps, mask, _ = _lesions(anat, t, _tissues(anat, t)[0], np.random.default_rng(t["anatomy_seed"] + [5]))
    return anat, mask, dict(comps)


def test_the_drawn_infarct_is_a_wedge_of_its_hemisphere_reaching_the_cortex():
    import scipy.ndimage as ndi

    plans = plan_cohort(120, 3, domain=R.DomainOptions(infarct_territory=1.0))
    picked = {}
    for t in plans:  # one acute and one chronic MCA infarct
        f = (_shaped(t) or [None])[0]
        if f and f["region"] == "MCA" and f["age"] not in picked:
            picked[f["age"]] = t
    assert set(picked) == {"acute", "chronic"}
    for age, t in picked.items():
        anat, mask, comps = _draw(t)
        m = mask > 0.5
        x_mm = (anat["affine"][0, 0] * np.arange(m.shape[0]) + anat["affine"][0, 3])[np.nonzero(m)[0]]
        side = 1 if t["findings"][0]["side"] == "right" else -1
        assert m.sum() > 100 and np.mean(side * x_mm > 0) > 0.98  # its own hemisphere
        surface = (anat["mask"] > 0.5) & ~ndi.binary_erosion(anat["mask"] > 0.5, iterations=2)
        assert (m & surface).sum() > 10  # reaches the brain's surface: cortex included
        blob = json.loads(json.dumps(t))
        for f in blob["findings"]:
            f.pop("shape"), f.pop("tan_half")
        b = _draw(blob)[1] > 0.5
        assert (m & b).sum() / (m | b).sum() < 0.7  # not the ellipsoid it replaces
        if age == "chronic":  # a CSF-like cavity inside a gliotic rim, which holds the lesion's edge
            core = comps["infarct_chronic"] > 0.5
            assert core.sum() > 0.2 * m.sum() and not (core & ~ndi.binary_erosion(m)).any()
        else:
            assert "infarct_chronic" not in comps and np.array_equal(comps["infarct_acute"], mask)


def test_the_option_from_the_command_line(tmp_path, capsys):
    out = option_cli(tmp_path, capsys, "--infarct-territory")
    shaped = [f for gt in out.glob("*/ground_truth.json")
              for f in json.loads(gt.read_text())["findings"] if f.get("variant") == "territorial"]
    assert shaped and all(f["shape"] == "territory" for f in shaped)
