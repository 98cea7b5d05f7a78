"""Synthetic brain cohort: determinism, files, shapes/affines, balance, masks, noise, patients, CLI."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medalign.data.schema import CLASSES
from medalign.data.synth.brain import generate_brain_cohort, plan_cohort, split_counts_for
from medalign.data.synth.lesions import sample_truth
from medalign.data.synth.sequences import POST_CONTRAST, SEQUENCES
from medalign.errors import MedAlignError

nib = pytest.importorskip("nibabel")

N = 20
NOISE = 0.1
ALL = (*SEQUENCES, *POST_CONTRAST)  # what a study holds: the six + t1c


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("brain")
    return generate_brain_cohort(out, n=N, seed=3, shape_mode="small", label_noise=NOISE,
                                 studies_per_patient="1-3", heldout_phrasing=True, workers=1)


def _truth(manifest: Path, sid: str) -> dict:
    return json.loads((manifest.parent / sid / "ground_truth.json").read_text(encoding="utf-8"))


def test_manifest_columns_and_paths(cohort):
    df = pd.read_csv(cohort, keep_default_na=False)
    expected = ["study_id", "patient_id", "split", "label", "report", "report_paraphrases",  # paraphrases by default
                *[f"image_{s}" for s in ALL], "mask"]
    assert list(df.columns) == expected
    assert len(df) == N and df["study_id"].is_unique
    for _, row in df.iterrows():
        for c in [*[f"image_{s}" for s in ALL], "mask"]:
            p = Path(row[c])
            assert not p.is_absolute()  # relative to the manifest folder
            assert (cohort.parent / p).exists(), row[c]
        assert row["report"].strip()


def test_files_readable_shapes_and_affines(cohort):
    df = pd.read_csv(cohort, keep_default_na=False)
    row = df.iloc[0]
    gt = _truth(cohort, row["study_id"])
    for s in ALL:
        img = nib.load(cohort.parent / row[f"image_{s}"])
        acq = gt["acquisition"][s]
        assert img.shape == tuple(acq["shape"]) == (32, 32, 8)
        assert np.allclose(img.header.get_zooms()[:3], acq["spacing"], atol=1e-3)
        assert "".join(nib.aff2axcodes(img.affine)) == acq["orientation"]
        data = np.asarray(img.dataobj)
        assert data.dtype == np.int16 and np.isfinite(data).all() and data.max() > 0
    mask = nib.load(cohort.parent / row["mask"])
    flair = nib.load(cohort.parent / row["image_flair"])
    assert mask.shape == flair.shape and np.allclose(mask.affine, flair.affine)


def test_sequences_are_not_voxel_aligned(cohort):
    """Small rigid offsets between sequences: co-registration must matter."""
    gt = _truth(cohort, "S00001")
    motions = {tuple(gt["acquisition"][s]["motion_mm"]) for s in ("t2s", "flair", "t1", "t2", "t1c")}
    assert len(motions) == 5
    assert gt["acquisition"]["adc"] == gt["acquisition"]["dwi"]  # ADC is computed from DWI


def test_deterministic_by_seed(cohort, tmp_path):
    again = generate_brain_cohort(tmp_path / "b", n=N, seed=3, shape_mode="small", label_noise=NOISE,
                                  studies_per_patient="1-3", heldout_phrasing=True, workers=2)
    assert cohort.read_text(encoding="utf-8") == again.read_text(encoding="utf-8")
    for sid in ("S00001", "S00007"):
        for name in ("flair.nii.gz", "dwi.nii.gz", "t1c.nii.gz", "lesion_mask.nii.gz", "ground_truth.json"):
            assert (cohort.parent / sid / name).read_bytes() == (again.parent / sid / name).read_bytes(), (sid, name)
    other = plan_cohort(N, seed=4)
    assert [t["report"] for t in other] != pd.read_csv(cohort)["report"].tolist()


def test_class_balance_and_default_split():
    plans = plan_cohort(262, seed=0)
    splits = Counter(t["split"] for t in plans)
    assert splits == {"train": 211, "val": 24, "test": 27}
    per_class = Counter(t["label"] for t in plans)
    assert max(per_class.values()) - min(per_class.values()) <= 2
    for split in ("train", "val", "test"):
        c = Counter(t["label"] for t in plans if t["split"] == split)
        assert set(c) == set(CLASSES) and max(c.values()) - min(c.values()) <= 1
    assert split_counts_for(262) == {"train": 211, "val": 24, "test": 27}


def test_masks_nonempty_for_lesions_empty_for_normal(cohort):
    df = pd.read_csv(cohort, keep_default_na=False)
    seen = set()
    for _, row in df.iterrows():
        gt = _truth(cohort, row["study_id"])
        m = np.asarray(nib.load(cohort.parent / row["mask"]).dataobj)
        seen.add(gt["label"])
        if gt["label"] == "normal":
            assert m.sum() == 0 and gt["lesion_volume_ml"] == 0
        else:
            assert m.sum() > 0, (row["study_id"], gt["label"], gt["findings"])
    assert seen == set(CLASSES)


def test_label_noise_fraction_and_truth_kept(cohort):
    df = pd.read_csv(cohort, keep_default_na=False)
    flipped = 0
    for _, row in df.iterrows():
        gt = _truth(cohort, row["study_id"])
        assert gt["manifest_label"] == row["label"]
        if row["label"] != gt["label"]:
            flipped += 1
            assert gt["label_noise"]
    assert flipped == round(NOISE * N)
    plans = plan_cohort(500, seed=1, label_noise=0.2)
    assert sum(t["manifest_label"] != t["label"] for t in plans) == 100


def test_patients_with_several_studies_grouped(cohort):
    df = pd.read_csv(cohort, keep_default_na=False)
    counts = df.groupby("patient_id").size()
    assert (counts >= 2).any()
    assert (df.groupby("patient_id")["split"].nunique() == 1).all()  # no leakage
    for pid, g in df.groupby("patient_id"):
        labels = {_truth(cohort, s)["label"] for s in g["study_id"]}
        assert len(labels) == 1  # follow-ups of one disease
    plans = plan_cohort(100, seed=2, studies_per_patient=2)
    assert Counter(Counter(t["patient_id"] for t in plans).values()).keys() <= {1, 2}


def test_heldout_phrasing_only_on_test(cohort):
    df = pd.read_csv(cohort, keep_default_na=False)
    for _, row in df.iterrows():
        fam = _truth(cohort, row["study_id"])["report_family"]
        assert fam == ("heldout" if row["split"] == "test" else "standard")


def test_truth_records_findings():
    rng = np.random.default_rng(0)
    for label in CLASSES:
        t = sample_truth(label, rng)
        assert t["label"] == label and 0 <= t["atrophy"] <= 1
        if label == "normal":
            assert t["findings"] == []
        else:
            f = t["findings"][0]
            assert {"variant", "side", "region", "count", "age", "size_mm"} <= set(f)


@pytest.mark.parametrize("kwargs, msg", [
    ({"n": 5}, "--n must be between 20 and 10000"),
    ({"n": 20, "label_noise": 1.5}, "--label-noise"),
    ({"n": 20, "studies_per_patient": "3-1"}, "--studies-per-patient"),
    ({"n": 20, "studies_per_patient": "x"}, "--studies-per-patient"),
    ({"n": 20, "seed": -1}, "--seed"),
])
def test_bad_options(kwargs, msg):
    with pytest.raises(MedAlignError, match=msg):
        plan_cohort(**kwargs)


def test_bad_shape_mode(tmp_path):
    with pytest.raises(MedAlignError, match="shape-mode"):
        generate_brain_cohort(tmp_path, n=20, shape_mode="huge")


def test_cli_round_trip(tmp_path, capsys):
    from medalign.cli import main

    out = tmp_path / "cli"
    assert main(["synth", "brain", "--n", "20", "--out", str(out), "--seed", "1", "--shape-mode", "small",
                 "--label-noise", "0.1", "--studies-per-patient", "1-2", "--heldout-phrasing", "--workers", "1"]) == 0
    manifest = out / "manifest.csv"
    assert manifest.exists()
    labels = tmp_path / "labels.csv"
    assert main(["label-reports", str(manifest), "--out", str(labels)]) == 0
    text = capsys.readouterr().out
    assert "accuracy vs ground truth" in text and "accuracy vs manifest label" in text
    got = pd.read_csv(labels)
    assert len(got) == 20 and set(got["predicted_label"]) <= set(CLASSES)
    assert (got["predicted_label"] == got["true_label"]).mean() >= 0.95
    assert main(["label-reports", str(tmp_path / "missing.csv")]) == 2


def test_label_reports_bad_manifest(tmp_path, capsys):
    from medalign.cli import main

    bad = tmp_path / "bad.csv"
    bad.write_text("study_id,patient_id\nS1,P1\n")
    assert main(["label-reports", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "'report'" in err and "bad.csv" in err
    plain = tmp_path / "plain.csv"  # no ground truth, manifest labels only
    plain.write_text('study_id,patient_id,label,report\nS1,P1,normal,"No acute infarct."\nS2,P2,tumor,"Left frontal glioma."\n')
    assert main(["label-reports", str(plain)]) == 0
    assert "accuracy vs manifest label (may include label noise): 1.0000" in capsys.readouterr().out
