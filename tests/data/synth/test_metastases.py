"""Brain metastases (``synth brain --metastases P``, issue 20): who gets them, that nothing else in the plan moves, where
they lie and how they are drawn (round, necrotic from 12 mm: a ring on T1c), that every report family says metastases
with their number and the labeller reads tumour, and the CLI."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from medalign.data.reports import label_reports
from medalign.data.synth import randomise as R
from medalign.data.synth.anatomy import _mm_to_vox, load_anatomy
from medalign.data.synth.brain import plan_cohort, synthesize_study
from medalign.data.synth.metastases import (JUNCTION_WM, METASTASIS_APART_MM, METASTASIS_COUNT, METASTASIS_MM,
                                            METASTASIS_NECROTIC_MM, junction_candidates)
from medalign.data.synth.report_grammar import generate_report

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plan_checks import option_cli  # noqa: E402

KW = dict(seed=6, studies_per_patient="1-3", paraphrases=0)


def _mets(t: dict) -> list[dict]:
    return [f for f in t["findings"] if f.get("variant") == "metastasis"]


@pytest.fixture(scope="module")
def plans() -> dict:
    return {p: plan_cohort(200, domain=R.DomainOptions(metastases=p), **KW) for p in (0.0, 0.5, 1.0)}


def test_plan_replaces_the_tumours_and_nothing_else(plans):
    base = plans[0.0]
    assert plan_cohort(200, **KW) == base  # off by default
    tumours = {t["study_id"] for t in base if t["label"] == "tumor"}
    got = {p: {t["study_id"] for t in plans[p] if _mets(t)} for p in (0.5, 1.0)}
    assert got[1.0] == tumours and len(tumours) > 20
    assert got[0.5] < got[1.0] and 0.2 < len(got[0.5]) / len(tumours) < 0.8  # one draw per patient: a share, nested
    drawn: dict[str, set] = {}
    for before, t in zip(base, plans[1.0], strict=True):
        if t["study_id"] not in tumours:
            assert t == before  # byte for byte
            continue
        assert all(f["kind"] == "tumor" for f in _mets(t)) and not any(f["variant"] in ("glioma", "meningioma")
                                                                        for f in t["findings"])
        assert [f for f in t["findings"] if f["kind"] != "tumor"] == [f for f in before["findings"] if f["kind"] != "tumor"]
        assert {k: v for k, v in t.items() if k not in ("findings", "report")} == \
               {k: v for k, v in before.items() if k not in ("findings", "report")}
        drawn.setdefault(t["patient_id"], []).append(json.dumps(_mets(t)))
    assert all(len(set(v)) == 1 for v in drawn.values()) and max(map(len, drawn.values())) > 1  # follow-ups keep them


def test_where_the_metastases_lie(plans):
    anat, cand = load_anatomy(4), junction_candidates()
    for c in cand[::40]:  # candidates: the template's grey-white matter junction, each with a side
        i, j, k = np.round(_mm_to_vox(anat, c)).astype(int)
        assert JUNCTION_WM[0] <= anat["wm"][i, j, k] <= JUNCTION_WM[1] and abs(c[0]) >= 6
    groups = [_mets(t) for t in plans[1.0] if _mets(t)]
    counts, cerebellar, both = [], 0, 0
    for g in groups:
        c = np.array([f["center_mm"] for f in g])  # (n, 3) MNI mm
        assert METASTASIS_COUNT[0] <= len(g) <= METASTASIS_COUNT[1] and {f["count"] for f in g} == {len(g)}
        assert np.abs(cand[None] - c[:, None]).max(2).min(1).max() <= 0.05  # every centre a candidate
        d = np.linalg.norm(c[:, None] - c[None], axis=2) + np.eye(len(g)) * 1e3
        assert d.min() >= METASTASIS_APART_MM
        sizes = [f["size_mm"] for f in g]
        assert all(METASTASIS_MM[0] <= s <= METASTASIS_MM[1] for s in sizes) and {f["largest_mm"] for f in g} == {max(sizes)}
        assert all(f["necrosis"] == (f["size_mm"] >= METASTASIS_NECROTIC_MM) for f in g)
        assert {f["necrotic"] for f in g} == {any(f["necrosis"] for f in g)}
        sides = {"left" if x < 0 else "right" for x in c[:, 0]}
        assert {f["side"] for f in g} == {"bilateral" if len(sides) == 2 else sides.pop()}
        cb = [f["region"] == "cerebellum" for f in g]
        assert ("the cerebellum" in g[0]["where"]) == any(cb)
        cerebellar += any(cb)
        both += "both cerebral hemispheres" in g[0]["where"]
        counts.append(len(g))
    assert len(set(counts)) >= 3 and 0 < cerebellar < len(groups) and 0 < both < len(groups)


def test_drawn_round_necrotic_and_ringed_on_t1c():
    t = next(t for t in plan_cohort(40, 3, paraphrases=0, domain=R.DomainOptions(metastases=1.0)) if _mets(t))
    out = synthesize_study(t, shape_mode="small", with_t1c=True)
    m, aff = out["mask"]
    m = np.asarray(m)
    inv = np.linalg.inv(aff)
    for f in _mets(t):  # each centre inside the lesion mask (the drawn grid: world mm -> voxel)
        i, j, k = np.clip(np.round(inv[:3, :3] @ f["center_mm"] + inv[:3, 3]).astype(int), 0, np.array(m.shape) - 1)
        assert m[max(i - 1, 0):i + 2, max(j - 1, 0):j + 2, max(k - 1, 0):k + 2].max() > 0.5, f
    nec = [f["necrosis"] for f in _mets(t)]
    pattern = out["t1c_enhancement"]["pattern"]
    assert ("ring" in pattern) == any(nec) and ("solid" in pattern) == (not all(nec)), (nec, pattern)
    assert "tumor_solid" in out["t1c_enhancement"]["enhancing"]


def test_every_report_family_says_metastases_and_reads_tumour(plans):
    mets = [t for t in plans[1.0] if _mets(t)][:20]
    texts = [t["report"] for t in mets]
    for i, t in enumerate(mets):  # the radiologist family is drawn from the rng; heldout=True is its own family
        texts += [generate_report(t, np.random.default_rng([i, j]), heldout=j == 0) for j in range(6)]
    assert set(label_reports(texts)) == {"tumor"}
    low = [x.lower() for x in texts]
    assert all(any(w in x for w in ("metasta", "mets", "secondar")) for x in low)
    assert not any("glioma" in x or "meningioma" in x for x in low)
    for t in mets:  # one sentence for the group, naming its number or "multiple"
        n = _mets(t)[0]["count"]
        assert str(n) in t["report"] or "multiple" in t["report"].lower()


def test_the_option_from_the_command_line(tmp_path, capsys):
    out = option_cli(tmp_path, capsys, "--metastases")
    truths = [json.loads(p.read_text()) for p in out.glob("*/ground_truth.json")]
    tumours = [t for t in truths if t["label"] == "tumor"]
    assert tumours and all(f["variant"] == "metastasis" for t in tumours for f in t["findings"] if f["kind"] == "tumor")
