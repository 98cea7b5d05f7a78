"""The study rule t1c_by_order: the later of two identical T1 series without contrast evidence is
post-contrast when another acquisition lies between them, and a repeat never becomes t1c."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from ingest_fakes import axial_affine, phantom

from medalign.data.dicom_identify import POST_BY_ORDER, acquisition_order, contrast_by_order, identify
from medalign.data.ingest import ingest
from medalign.data.synth.dicom_export import _base, write_series

T1 = dict(scanning_sequence=["SE"], te=12.0, tr=550.0, ti=None, flip=90.0)
T2 = dict(scanning_sequence=["SE"], te=100.0, tr=4500.0, ti=None, flip=150.0)
MPRAGE = dict(scanning_sequence=["GR", "IR"], te=2.5, tr=2000.0, ti=900.0, flip=8.0, acq_type="3D", plane="sagittal")


def _h(n: int, physics: dict, description: str = "", **kw) -> dict:
    h = dict(description=description, protocol="", image_type=["ORIGINAL", "PRIMARY", "M", "ND"], scanning_sequence=[],
             sequence_variant=[], te=None, tr=None, ti=None, flip=None, acq_type="2D", contrast="", bvalues=[],
             plane="axial", series_number=n, series_time=f"1020{n:02d}", acquisition_time="")
    h.update(physics)
    h.update(kw)
    return h


def _run(headers: list[dict]) -> list[tuple[str, str]]:
    return contrast_by_order(headers, [identify(h) for h in headers])


def test_later_identical_t1_with_an_acquisition_between_is_t1c() -> None:
    out = _run([_h(3, T1, "t1_se_tra"), _h(4, T2, "t2_tse_tra"), _h(5, T1, "Series 5")])
    assert [s for s, _ in out] == ["t1", "t2", "t1c"]
    assert POST_BY_ORDER in out[2][1] and "series 3 pre" in out[2][1] and "pre-contrast" in out[0][1]


@pytest.mark.parametrize("headers, why", [
    ([_h(3, T1, "t1_se_tra"), _h(4, T1, "Series 4"), _h(5, T2)], "back to back"),          # immediate repeat
    ([_h(3, T1, "Ax T1 SE"), _h(4, T2), _h(5, T1, "Ax T1 SE")], "same description"),         # same name
    ([_h(3, T1, "t1_se_tra"), _h(4, T2), _h(5, T1, "t1_se_tra_rpt")], "says repeat"),        # named a repeat
])
def test_a_repeat_never_becomes_t1c(headers, why) -> None:
    out = _run(headers)
    assert "t1c" not in [s for s, _ in out]
    later = max((i for i, h in enumerate(headers) if h["tr"] == 550.0), key=lambda i: headers[i]["series_number"])
    assert "taken as a repeat" in out[later][1] and why in out[later][1] and POST_BY_ORDER not in out[later][1]


def test_rule_stays_off_when_it_cannot_tell() -> None:
    # the study already has a t1c (agent recorded): a second plain T1 is a repeat, not another post
    out = _run([_h(3, T1, "t1_se_tra"), _h(4, T2), _h(5, T1, "Series 5"), _h(6, T1, "Series 6", contrast="Gadovist")])
    assert [s for s, _ in out] == ["t1", "t2", "t1", "t1c"]
    # different protocols (2D SE vs 3D MPRAGE) are not a pre/post pair
    assert [s for s, _ in _run([_h(3, T1, "t1_se_tra"), _h(4, T2), _h(5, MPRAGE, "Series 5")])] == ["t1", "t2", "t1"]
    # stripped physics on one of them: cannot show they are alike
    stripped = _h(5, dict(te=None, tr=None, flip=None, scanning_sequence=["SE"]), "t1_se_tra")
    assert [s for s, _ in _run([_h(3, T1, "Series 3"), _h(4, T2), stripped])] == ["t1", "t2", "t1"]
    # three identical T1 series: which one is post? left alone
    three = [_h(3, T1, "a"), _h(4, T2), _h(5, T1, "b"), _h(6, T2, "c"), _h(7, T1, "d")]
    assert [s for s, _ in _run(three)] == ["t1", "t2", "t1", "t2", "t1"]
    # only a derived series between them (a reformat of the first): still back to back
    mpr = _h(4, T1, "t1_se_tra_MPR", image_type=["DERIVED", "SECONDARY", "MPR"])
    assert "t1c" not in [s for s, _ in _run([_h(3, T1, "t1_se_tra"), mpr, _h(5, T1, "Series 5")])]


def test_acquisition_time_beats_series_number() -> None:
    # series 9 was acquired first (renumbered on export): it is the pre-contrast one
    hs = [_h(3, T1, "Series 3", acquisition_time="103000"), _h(9, T1, "t1_se_tra", acquisition_time="100500.25"),
          _h(5, T2, acquisition_time="101500")]
    assert acquisition_order(hs) == [1, 2, 0]
    assert [s for s, _ in _run(hs)] == ["t1c", "t1", "t2"]
    # a series without a time cannot be placed by time: SeriesNumber decides
    hs[0]["acquisition_time"] = hs[0]["series_time"] = ""
    assert acquisition_order(hs) == [0, 2, 1]


# ---- through ingest: series.csv records the decision, and the choice follows it -------------------
STUDY = {"study_uid": "1.2.826.0.1.3680043.8.498.7", "frame_uid": "1.2.826.0.1.3680043.8.498.8",
         "patient_name": "DOE^JOHN", "mrn": "MRN1", "birth_date": "19600101", "accession": "ACC1"}


def _export(root: Path, plan: list[tuple[str, int, str | None]]) -> None:
    rng = np.random.default_rng(0)
    for kind, n, describe in plan:
        fields = _base(STUDY, f"{STUDY['study_uid']}.{n}", n, kind, "siemens", rng, False, describe)
        write_series(root, fields, phantom(rng), axial_affine(), vendor="siemens",
                     names=iter(f"s{n}/im{i:03d}" for i in range(100)))


@pytest.mark.parametrize("plan, t1c", [
    ([("t1", 3, None), ("t2", 4, None), ("t1", 5, "Series 5")], 5),   # pre, T2, post without any contrast tag
    ([("t1", 3, None), ("t1", 4, None), ("t2", 5, None)], None),      # a back-to-back repeat (same name)
])
def test_ingest_records_the_study_rule(tmp_path, plan, t1c) -> None:
    _export(tmp_path / "dicom", plan)
    ingest(tmp_path / "dicom", tmp_path / "cohort")
    sr = pd.read_csv(tmp_path / "cohort" / "series.csv").set_index("series_number")
    chosen = {r.sequence: n for n, r in sr.iterrows() if r.chosen}
    if t1c is None:
        assert "t1c" not in set(sr["sequence"]) and chosen["t1"] == 4  # the latest repeat, as the choice rule says
        assert "taken as a repeat" in sr.loc[4, "reason"]
    else:
        assert sr.loc[t1c, "sequence"] == "t1c" and POST_BY_ORDER in sr.loc[t1c, "reason"]
        assert chosen == {"t1": 3, "t2": 4, "t1c": 5}
        m = pd.read_csv(tmp_path / "cohort" / "manifest.csv")
        assert m.loc[0, "image_t1c"].endswith("t1c.nii.gz") and m.loc[0, "image_t1"].endswith("t1.nii.gz")
