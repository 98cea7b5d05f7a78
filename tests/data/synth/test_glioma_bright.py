"""Gliomas with a solid part brighter than their oedema on FLAIR (``synth brain --glioma-bright P``, issue 20): who
gets one, that nothing else in the plan moves, that the study's contrast table changes the solid part's FLAIR only and
puts it above the oedema's, that the drawn FLAIR inside the tumour is brighter, and the CLI."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from medalign.data.synth import randomise as R
from medalign.data.synth.brain import plan_cohort, synthesize_study
from medalign.data.synth.flair_drawn import GLIOMA_SOLID_FLAIR
from medalign.data.synth.sequences import SEQUENCES

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plan_checks import added_keys, only_flair_moves, option_cli  # noqa: E402

KW = dict(seed=6, studies_per_patient="1-3", paraphrases=0)


def _gliomas(t: dict) -> list[dict]:
    return [f for f in t["findings"] if f.get("variant") == "glioma"]


@pytest.fixture(scope="module")
def plans() -> dict:
    return {p: plan_cohort(200, domain=R.DomainOptions(glioma_bright=p), **KW) for p in (0.0, 0.5, 1.0)}


def test_plan_gives_gliomas_a_bright_solid_part_and_changes_nothing_else(plans):
    base = plan_cohort(200, **KW)
    assert plans[0.0] == base  # off: the plan unchanged
    gliomas = {t["study_id"] for t in base if _gliomas(t)}
    got = {p: {t["study_id"] for t in plans[p] if any("solid_flair" in f for f in t["findings"])} for p in (0.5, 1.0)}
    assert got[1.0] == gliomas and len(gliomas) > 10
    assert got[0.5] < got[1.0] and 0.2 < len(got[0.5]) / len(gliomas) < 0.8  # one draw: a share, nested
    added, drawn = added_keys(base, plans[1.0], gliomas), {}
    for t in plans[1.0]:
        for f, extra in zip(t["findings"], added.get(t["study_id"], [])):
            assert set(extra) == ({"solid_flair"} if f.get("variant") == "glioma" else set())
            if extra:
                assert GLIOMA_SOLID_FLAIR[0] <= extra["solid_flair"] <= GLIOMA_SOLID_FLAIR[1]
                drawn.setdefault(t["patient_id"], set()).add(extra["solid_flair"])
    assert all(len(v) == 1 for v in drawn.values())  # follow-ups keep the draw


def test_the_contrast_table_puts_the_solid_part_above_the_oedema_on_flair_only():
    t = next(t for t in plan_cohort(60, 2, domain=R.DomainOptions(glioma_bright=1.0)) if _gliomas(t))
    dom = t["domain"]
    plain, bright = R.study_contrast(dom), R.study_contrast(dom, t["findings"])
    fi = SEQUENCES.index("flair")
    only_flair_moves(plain, bright, "tumor_solid")
    assert plain["lesion"]["tumor_solid"][fi] < plain["lesion"]["edema"][fi] < bright["lesion"]["tumor_solid"][fi]


def test_the_drawn_tumour_is_brighter_on_flair():
    lobe = dict(glioma_sites=0.0)  # at a lobe centre: the study this check was written on (small grid, stop 62)
    t1 = next(t for t in plan_cohort(80, 1, domain=R.DomainOptions(glioma_bright=1.0, **lobe))
              if _gliomas(t) and _gliomas(t)[0]["solid_flair"] > 1.15)
    t0 = next(t for t in plan_cohort(80, 1, domain=R.DomainOptions(**lobe)) if t["study_id"] == t1["study_id"])

    def tumour_over_head(t: dict) -> float:
        out = synthesize_study(t, shape_mode="small")
        x, m = np.asarray(out["flair"][0], float), np.asarray(out["mask"][0]) > 0
        return float(np.median(x[m]) / np.median(x[x > 0.25 * np.percentile(x, 99)]))

    a, b = tumour_over_head(t0), tumour_over_head(t1)
    assert b > 1.05 * a, (a, b)


def test_the_option_from_the_command_line(tmp_path, capsys):
    option_cli(tmp_path, capsys, "--glioma-bright")