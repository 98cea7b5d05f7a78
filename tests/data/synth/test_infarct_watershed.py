"""Border-zone (watershed) infarcts (``synth brain --infarct-watershed P``, issue 20): who gets one, that
nothing else in the plan moves, that the report names the zone and labels as an infarct, that the drawn
lesion lies in its zone (a cortical wedge, or a chain of small deep foci beside the ventricle), and the CLI."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from medalign.data.synth import randomise as R
from medalign.data.synth.brain import plan_cohort
from medalign.data.synth.lesions import WATERSHED, WATERSHED_FOCI

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plan_checks import option_cli  # noqa: E402

KW = dict(seed=8, studies_per_patient="1-3", paraphrases=1)


def _watershed(t: dict) -> list[dict]:
    return [f for f in t["findings"] if f.get("variant") == "watershed"]


@pytest.fixture(scope="module")
def plans() -> dict:
    return {p: plan_cohort(200, domain=R.DomainOptions(infarct_watershed=p), **KW) for p in (0.0, 0.5, 1.0)}


def test_plan_replaces_territorial_infarcts_only_and_changes_nothing_else(plans):
    base = plan_cohort(200, **KW)
    assert plans[0.0] == base  # off: the plan unchanged
    territorial = {t["study_id"] for t in base if any(f.get("variant") == "territorial" for f in t["findings"])}
    got = {p: {t["study_id"] for t in plans[p] if _watershed(t)} for p in (0.5, 1.0)}
    assert got[1.0] == territorial and len(territorial) > 10
    assert got[0.5] < got[1.0] and 0.2 < len(got[0.5]) / len(territorial) < 0.8  # one draw: a share, nested
    zones: dict[str, set] = {}
    for before, t in zip(base, plans[1.0]):
        if t["study_id"] not in territorial:
            assert t == before  # other studies: byte for byte, report included
            continue
        assert not any(f.get("variant") == "territorial" for f in t["findings"])
        old = next(f for f in before["findings"] if f.get("variant") == "territorial")
        ws = _watershed(t)
        assert {(f["side"], f["age"], f["class"]) for f in ws} == {(old["side"], old["age"], "infarct")}
        assert [f for f in t["findings"] if f.get("variant") != "watershed"] == \
            [f for f in before["findings"] if f.get("variant") != "territorial"]  # the rest of the truth as planned
        assert {k: v for k, v in t.items() if k not in ("findings", "report", "report_paraphrases")} == \
            {k: v for k, v in before.items() if k not in ("findings", "report", "report_paraphrases")}
        zones.setdefault(t["patient_id"], set()).add(json.dumps([f["region"] for f in ws]))
    assert all(len(v) == 1 for v in zones.values())  # follow-ups keep the zone
    assert max(len(next(iter(v))) for v in zones.values()) > 0
    assert {f["region"] for t in plans[1.0] for f in _watershed(t)} == set(WATERSHED)  # every zone drawn


def test_zones_sit_where_they_should_and_the_internal_one_is_a_chain(plans):
    for t in plans[1.0]:
        ws = _watershed(t)
        if not ws:
            continue
        side = 1 if ws[0]["side"] == "right" else -1
        centres = np.array([f["center_mm"] for f in ws])  # (n, 3) MNI mm
        assert np.all(side * centres[:, 0] > 10)  # its own hemisphere
        if ws[0]["region"] != "internal":
            assert len(ws) == 1 and ws[0]["shape"] == "territory" and ws[0]["size_mm"] <= 36
            continue
        assert WATERSHED_FOCI[0] <= len(ws) <= WATERSHED_FOCI[1] and all(f["count"] == len(ws) for f in ws)
        steps = np.diff(centres[:, 1])
        assert np.all(steps > 2) and np.ptp(centres[:, 0]) < 10 and np.ptp(centres[:, 2]) < 10  # front to back


def test_reports_name_the_zone_and_the_labeller_calls_them_infarcts(plans):
    from medalign.data.reports import label_reports

    studies = [t for t in plans[1.0] if _watershed(t)]
    texts = [t["report"] for t in studies] + [p for t in studies for p in t["report_paraphrases"]]
    low = [x.lower() for x in texts]
    assert all("watershed" in x or "border zone" in x or "border-zone" in x for x in low)
    for zone in WATERSHED:  # each zone by name somewhere
        key = {"internal": "internal", "ACA-MCA": "aca-mca", "MCA-PCA": "mca-pca"}[zone]
        assert any(key in x for x, t in zip(low, studies) if _watershed(t)[0]["region"] == zone)
    assert label_reports(texts) == ["infarct"] * len(texts)


def _draw(t: dict):
    from medalign.data.synth.anatomy import _tissues, load_anatomy
    from medalign.data.synth.lesions import _lesions

    anat = load_anatomy(4)
    tissue = _tissues(anat, t)[0]
    _, mask, _ = _lesions(anat, t, tissue, np.random.default_rng(t["anatomy_seed"] + [5]))
    return anat, tissue, mask > 0.5


def test_the_drawn_lesion_lies_in_its_zone():
    import scipy.ndimage as ndi

    picked = {}
    for t in plan_cohort(120, 3, domain=R.DomainOptions(infarct_watershed=1.0)):
        ws = _watershed(t)
        if ws and ws[0]["age"] == "acute":
            picked.setdefault(ws[0]["region"], t)
    assert set(picked) == set(WATERSHED)
    for zone, t in picked.items():
        anat, tissue, m = _draw(t)
        mm = anat["affine"][:3, :3] @ np.array(np.nonzero(m)) + anat["affine"][:3, 3:4]  # (3, n) MNI mm
        side = 1 if _watershed(t)[0]["side"] == "right" else -1
        assert m.sum() > 3 and np.mean(side * mm[0] > 0) > 0.98  # its own hemisphere
        surface = (anat["mask"] > 0.5) & ~ndi.binary_erosion(anat["mask"] > 0.5, iterations=2)
        planned = np.mean([f["center_mm"] for f in _watershed(t)], 0)
        if zone == "internal":  # separate small foci in the white matter beside the ventricle, no cortex
            assert ndi.label(m)[1] >= 2 and not (m & surface).any()
            assert (tissue["wm"][m] > 0.5).mean() > 0.8 and (anat["dist_vent"][m] * 4).mean() < 20
        else:  # one wedge that reaches the cortex, near its zone and far from the ventricles
            assert ndi.label(m)[1] == 1 and (m & surface).sum() > 10
            assert (anat["dist_vent"][m] * 4).mean() > 25
        assert np.linalg.norm(mm.mean(1) - planned) < 20


def test_the_option_from_the_command_line(tmp_path, capsys):
    out = option_cli(tmp_path, capsys, "--infarct-watershed")
    infarcts = [f for gt in out.glob("*/ground_truth.json")
                for f in json.loads(gt.read_text())["findings"] if f["class"] == "infarct"]
    assert infarcts and {f["variant"] for f in infarcts} <= {"watershed", "lacunar"}
    assert any(f["variant"] == "watershed" for f in infarcts)
