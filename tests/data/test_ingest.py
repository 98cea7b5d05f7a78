"""`medalign ingest`: identification rules, the choice rule, a small vendor-mixed export, privacy,
resume, workers, reports, and pydicom's own test files."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from ingest_fakes import export

from medalign.data.dicom_identify import choose, identify
from medalign.data.ingest import ingest


def _h(**kw) -> dict:
    base = dict(description="", protocol="", image_type=["ORIGINAL", "PRIMARY", "M", "ND"], scanning_sequence=[],
                sequence_variant=[], te=None, tr=None, ti=None, flip=None, acq_type="2D", contrast="", bvalues=[])
    base.update(kw)
    return base


@pytest.mark.parametrize("header, expected, rule", [
    (_h(image_type=["ORIGINAL", "PRIMARY", "LOCALIZER"], scanning_sequence=["GR"], te=5, tr=9), "other", "localizer"),
    (_h(orthogonal_planes=True, n_orientations=3, scanning_sequence=["GR"], te=5, tr=9), "other", "localizer_planes"),
    (_h(scanning_sequence=["EP"], te=89, tr=5200, bvalues=[0, 1000]), "dwi", "dwi_b"),
    (_h(scanning_sequence=["EP"], te=89, tr=5200, bvalues=[0], image_type=["ORIGINAL", "PRIMARY", "DIFFUSION"]), "other", "b0"),
    (_h(image_type=["DERIVED", "PRIMARY", "DIFFUSION", "ADC"], scanning_sequence=["EP"], te=89, tr=5200), "adc", "adc_type"),
    (_h(image_type=["DERIVED", "SECONDARY"], description="Apparent Diffusion Coefficient (mm2/s)", bvalues=[1000]), "adc", "adc_derived"),
    (_h(scanning_sequence=["GR"], te=20, tr=650, flip=20, description="Series 7"), "t2s", "t2s_gre"),
    (_h(scanning_sequence=["GR"], te=20, tr=28, flip=15, acq_type="3D", description="t2_swi_tra_p2_Mag"), "other", "gre3d_long_te"),
    (_h(image_type=["ORIGINAL", "PRIMARY", "P", "ND"], scanning_sequence=["GR"], te=20, tr=28), "other", "phase"),
    (_h(image_type=["DERIVED", "PRIMARY", "M", "SWI"], scanning_sequence=["GR"], te=20, tr=28), "swi", "swi_type"),
    (_h(image_type=["DERIVED", "PRIMARY", "MNIP"], scanning_sequence=["GR"], te=20, tr=28), "other", "min_max_projection"),
    (_h(scanning_sequence=["SE", "IR"], te=85, tr=9000, ti=2500, description=""), "flair", "flair"),
    (_h(image_type=["DERIVED", "SECONDARY", "MPR"], scanning_sequence=["SE", "IR"], te=390, tr=5000, ti=1800), "other", "reformat"),
    (_h(scanning_sequence=["GR", "IR"], te=2.5, tr=2000, ti=900, acq_type="3D"), "t1", "t1_ir"),
    (_h(scanning_sequence=["SE"], te=12, tr=550), "t1", "t1_short"),
    (_h(scanning_sequence=["SE"], te=12, tr=550, contrast="Gadovist", description="Series 12"), "t1c", "t1_short"),
    (_h(scanning_sequence=["SE"], te=12, tr=550, description="Ax T1 +C"), "t1c", "t1_short"),
    (_h(scanning_sequence=["SE"], te=100, tr=4500, description="WIP"), "t2", "t2_long"),
    (_h(scanning_sequence=["SE"], te=15, tr=3000), "other", "pd"),
    # physics stripped by an anonymiser: the description decides
    (_h(description="t2_tirm_tra_dark-fluid"), "flair", "desc_flair"),
    (_h(description="Ax T2 FLAIR"), "flair", "desc_flair"),
    (_h(description="FLAIR_TRA"), "flair", "desc_flair"),
    (_h(description="T2*_FFE"), "t2s", "desc_t2s"),
    (_h(description="t2_fl2d_tra_hemo"), "t2s", "desc_t2s"),
    (_h(description="Ax T2 FSE"), "t2", "desc_t2"),
    (_h(description="T1W_SE_GD"), "t1c", "desc_t1"),
    (_h(description="t1_se_tra"), "t1", "desc_t1"),
    (_h(description="Series 7"), "other", None),
])
def test_identify_rule_table(header, expected, rule) -> None:
    seq, reason = identify(header)
    assert seq == expected, reason
    assert (f"rule {rule}:" in reason) if rule else reason.startswith("no rule fired")


def test_physics_beats_a_misleading_description() -> None:
    seq, reason = identify(_h(scanning_sequence=["SE", "IR"], te=85, tr=9000, ti=2500, description="t2_tse_tra"))
    assert seq == "flair" and reason.startswith("physics rule flair")


def _cand(**kw) -> dict:
    return {"plane": "axial", "image_type": ["ORIGINAL"], "n_positions": 20, "series_number": 5, "series_time": "", **kw}


def test_choice_rule_order() -> None:
    ax, sag = _cand(series_number=3), _cand(plane="sagittal", n_positions=176, series_number=9)
    assert choose([sag, ax])[0] is ax  # axial beats a sagittal with more slices
    orig, mpr = _cand(series_number=4), _cand(image_type=["DERIVED", "SECONDARY", "MPR"], series_number=8, n_positions=40)
    assert choose([mpr, orig])[0] is orig  # original beats derived
    few, many = _cand(n_positions=18, series_number=9), _cand(n_positions=24, series_number=2)
    assert choose([few, many])[0] is many  # more slices
    first, repeat = _cand(series_number=4), _cand(series_number=11)
    assert choose([repeat, first])[0] is repeat  # the latest repeat


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("ingest")
    truth = export(root / "dicom", 3)
    reports = root / "reports.csv"
    pd.DataFrame({"accession_number": [f"ACC{900000 + i}" for i in range(3)],
                  "report": ["Acute infarct.", "Normal study.", "Enhancing tumor."]}).to_csv(reports, index=False)
    lines: list[str] = []
    summary = ingest(root / "dicom", root / "cohort", reports=reports, log=lines.append)
    return {"root": root, "truth": pd.DataFrame(truth), "summary": summary, "log": lines}


def test_small_export_identified_and_chosen(small) -> None:
    from medalign.data.manifest import load_manifest

    got = pd.read_csv(small["root"] / "cohort" / "series.csv")
    m = small["truth"].merge(got, on="series_uid", how="left")
    assert len(m) == len(got) == len(small["truth"]) and set(m["vendor"]) == {"siemens", "ge", "philips"}
    wrong = m[m["truth"] != m["sequence"]]
    assert wrong.empty, wrong[["kind", "truth", "sequence", "reason"]].to_string()
    assert m.loc[m["wanted"], "chosen"].all() and not m.loc[~m["wanted"], "chosen"].any()
    assert m["reason"].str.contains("rule ").all()
    df = load_manifest(small["root"] / "cohort" / "manifest.csv")  # validates, files exist
    assert len(df) == 3 and (df["image_flair"] != "").all() and (df["image_t1c"] != "").all()
    assert small["summary"]["skipped"] == {"non-image object (SR)": 3} and not small["summary"]["errors"]
    assert sorted(df["report"]) == ["Acute infarct.", "Enhancing tumor.", "Normal study."]


def test_no_phi_in_outputs_and_mapping_is_separate(small) -> None:
    cohort = small["root"] / "cohort"
    texts = [(cohort / "manifest.csv").read_text(), (cohort / "series.csv").read_text(), "\n".join(small["log"])]
    texts += [p.read_text() for p in cohort.glob("studies/*/ingest.json")]
    for t in texts:
        for phi in ("DOE", "JANE", "MRN700000", "ACC90000", "19500101", "19510101"):
            assert phi not in t
    mapping = json.loads((cohort / "id_map.json").read_text())
    assert set(mapping["patients"]) == {"MRN7000000", "MRN7000001", "MRN7000002"}
    df = pd.read_csv(cohort / "manifest.csv")
    assert set(df["patient_id"]) == set(mapping["patients"].values())


def test_resume_keeps_ids_after_the_mapping_is_deleted(small, tmp_path) -> None:
    cohort = tmp_path / "cohort"
    shutil.copytree(small["root"] / "cohort", cohort)
    before = pd.read_csv(cohort / "manifest.csv")
    (cohort / "id_map.json").unlink()
    s = ingest(small["root"] / "dicom", cohort, reports=small["root"] / "reports.csv")
    assert s["resumed"] == 3
    after = pd.read_csv(cohort / "manifest.csv")
    assert list(after["study_id"]) == list(before["study_id"])


def test_workers_give_the_same_series_table(small, tmp_path) -> None:
    s = ingest(small["root"] / "dicom", tmp_path / "c2", workers=2)
    a = pd.read_csv(small["root"] / "cohort" / "series.csv").sort_values("series_uid")
    b = pd.read_csv(tmp_path / "c2" / "series.csv").sort_values("series_uid")
    assert s["resumed"] == 0 and "report" not in pd.read_csv(tmp_path / "c2" / "manifest.csv").columns
    cols = ["series_uid", "sequence", "chosen", "reason", "n_files"]
    assert a[cols].reset_index(drop=True).equals(b[cols].reset_index(drop=True))


def test_pydicom_test_files_go_through(tmp_path) -> None:
    from pydicom.data import get_testdata_files

    files = [f for f in get_testdata_files() if Path(f).is_file()]
    assert len(files) > 50
    for i, f in enumerate(files):
        shutil.copy(f, tmp_path / f"f{i:03d}")
    s = ingest(tmp_path, tmp_path / "out")
    sr = pd.read_csv(tmp_path / "out" / "series.csv")
    assert s["files"] == len(files) == sum(s["skipped"].values()) + int(sr["n_files"].sum())
    assert all("\n" not in e for e in s["errors"])
    assert s["skipped"].get("non-MR modality (CT)", 0) > 0


def test_cli_command(small, tmp_path) -> None:
    import typer
    from typer.testing import CliRunner

    from medalign.data.ingest_commands import register

    app = typer.Typer()
    register(app, typer.Typer())
    res = CliRunner().invoke(app, [str(small["root"] / "dicom"), "--out", str(tmp_path / "c"), "--workers", "1"])
    assert res.exit_code == 0, res.output
    assert "chosen per sequence: adc 3, dwi 3, flair 3, swi 3, t1 3, t1c 3, t2 3, t2s 3" in res.output
    assert "3 non-image object (SR)" in res.output
