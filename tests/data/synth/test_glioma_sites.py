"""Gliomas centred anywhere in the white matter (``synth brain --glioma-sites P``, issue 20): who gets a drawn site, that
nothing else in the plan moves, that the sites lie in the template's supratentorial white matter of the glioma's side
and off the four lobe centres, that the report names the nearest lobe, that the drawn tumour moves with its centre,
and the CLI."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from medalign.data.synth import randomise as R
from medalign.data.synth.anatomy import _mm_to_vox, load_anatomy
from medalign.data.synth.brain import plan_cohort, synthesize_study
from medalign.data.synth.lesions import LOBES
from medalign.data.synth.sites import SITE_WM, nearest_lobe, site_candidates

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plan_checks import option_cli  # noqa: E402

KW = dict(seed=6, studies_per_patient="1-3", paraphrases=0)
OFF = R.DomainOptions(glioma_sites=0.0)  # the plan with every glioma at its lobe centre


def _glioma(t: dict) -> dict | None:
    return next((f for f in t["findings"] if f.get("variant") == "glioma"), None)


def _lobe_distance(c) -> float:
    s = -1.0 if c[0] < 0 else 1.0
    return min(float(np.linalg.norm(np.asarray(c) - np.array(v) * [s, 1, 1])) for v in LOBES.values())


@pytest.fixture(scope="module")
def plans() -> dict:
    return {p: plan_cohort(200, domain=R.DomainOptions(glioma_sites=p), **KW) for p in (0.0, 0.5, 1.0)}


def test_plan_moves_the_gliomas_and_nothing_else(plans):
    base = plans[0.0]
    assert plan_cohort(200, **KW) == plans[R.GLIOMA_SITES_P]  # the default: on for randomised cohorts
    assert plan_cohort(200, randomise=False, **KW) == plan_cohort(200, randomise=False, domain=OFF, **KW)
    gliomas = {t["study_id"] for t in base if _glioma(t)}
    got = {p: {t["study_id"] for t in plans[p] if (_glioma(t) or {}).get("site") == "drawn"} for p in (0.5, 1.0)}
    assert got[1.0] == gliomas and len(gliomas) > 10
    assert got[0.5] < got[1.0] and 0.2 < len(got[0.5]) / len(gliomas) < 0.8  # one draw: a share, nested
    sites: dict[str, set] = {}
    for before, t in zip(base, plans[1.0], strict=True):
        if t["study_id"] not in gliomas:
            assert t == before  # byte for byte
            continue
        moved = {"center_mm", "region", "site"}
        for f0, f in zip(before["findings"], t["findings"], strict=True):
            keep = moved if f0.get("variant") == "glioma" else set()
            assert {k: v for k, v in f.items() if k not in keep} == {k: v for k, v in f0.items() if k not in keep}
        assert {k: v for k, v in t.items() if k not in ("findings", "report")} == \
               {k: v for k, v in before.items() if k not in ("findings", "report")}
        g = _glioma(t)
        assert g["region"] == nearest_lobe(g["center_mm"]) and g["region"].split()[0] in t["report"].lower()
        sites.setdefault(t["patient_id"], set()).add(tuple(g["center_mm"]))
    assert all(len(v) == 1 for v in sites.values())  # follow-ups keep the site


def test_sites_lie_in_white_matter_on_the_gliomas_side_and_off_the_lobe_centres(plans):
    anat, cand = load_anatomy(4), site_candidates()
    for c in cand[::25]:  # candidates: the template's white matter, right side
        i, j, k = np.round(_mm_to_vox(anat, c)).astype(int)
        assert anat["wm"][i, j, k] >= SITE_WM and c[0] > 0
    drawn = [(t, _glioma(t)) for t in plans[1.0] if _glioma(t)]
    for _, g in drawn:
        c = g["center_mm"]
        assert (c[0] > 0) == (g["side"] == "right") and abs(c[0]) >= 10 and c[2] >= -25
        assert np.abs(cand - [abs(c[0]), c[1], c[2]]).max(1).min() <= 0.05  # a candidate, mirrored on the left
    planned = [_lobe_distance(_glioma(t)["center_mm"]) for t in plans[0.0] if _glioma(t)]
    spread = [_lobe_distance(g["center_mm"]) for _, g in drawn]
    assert max(planned) < 20 and np.median(spread) > np.median(planned) + 5 and max(spread) > 25


def test_candidates_and_nearest_lobe():
    cand = site_candidates()
    assert len(cand) > 500 and (cand[:, 0] >= 10).all()
    assert {nearest_lobe(v) for v in LOBES.values()} == set(LOBES)
    assert nearest_lobe([-46, -18, -12]) == "temporal" and nearest_lobe([-30, 32, 24]) == "frontal"  # left: x flips


def test_the_drawn_tumour_moves_with_its_centre():
    base = plan_cohort(40, 3, paraphrases=0, domain=OFF)
    moved = plan_cohort(40, 3, paraphrases=0, domain=R.DomainOptions(glioma_sites=1.0))
    a, b = next((x, y) for x, y in zip(base, moved) if x != y)
    shift = np.subtract(_glioma(b)["center_mm"], _glioma(a)["center_mm"])  # planned move, MNI mm

    def centroid_mm(t: dict) -> np.ndarray:
        m, aff = synthesize_study(t, shape_mode="small", with_t1c=False)["mask"]
        return aff[:3, :3] @ np.argwhere(np.asarray(m) > 0).mean(0) + aff[:3, 3]  # lesion centroid, world mm

    d = centroid_mm(b) - centroid_mm(a)
    assert np.linalg.norm(shift) > 15 and d @ shift / np.linalg.norm(d) / np.linalg.norm(shift) > 0.9, (shift, d)


def test_the_option_from_the_command_line(tmp_path, capsys):
    out = option_cli(tmp_path, capsys, "--glioma-sites")
    truths = [json.loads(p.read_text()) for p in out.glob("*/ground_truth.json")]
    assert all(f.get("site") == "drawn" for t in truths for f in t["findings"] if f.get("variant") == "glioma")
