"""Extra training studies acquired as FLAIR alone (``synth brain --flair-alone``, issue 20): appended
after the cohort from their own streams, drawn and written as FLAIR alone, read as studies without
their other series."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from medalign.data.schema import CLASSES
from medalign.data.synth.brain import plan_cohort, synthesize_study
from medalign.data.synth.sequences import SEQUENCES
from medalign.errors import MedAlignError

nib = pytest.importorskip("nibabel")


def test_the_plan_appends_new_training_patients_and_leaves_the_cohort_alone():
    base = plan_cohort(60, 3, twins=0.5)
    plans = plan_cohort(60, 3, twins=0.5, flair_alone=25)
    assert plans[:len(base)] == base  # the cohort and its twins are untouched
    extra = plans[len(base):]
    assert len(extra) == 25 and len({p["study_id"] for p in plans}) == len(plans)
    assert all(p["series"] == ["flair"] and p["split"] == "train" for p in extra)
    assert not any("series" in p for p in base)
    assert not {p["patient_id"] for p in extra} & {p["patient_id"] for p in base}  # new patients
    assert Counter(p["label"] for p in extra) == {c: 5 for c in CLASSES}  # balanced like a training split
    # their own streams: no study repeats one of the cohort's draws
    assert not {json.dumps(p["seed"]) for p in extra} & {json.dumps(p["seed"]) for p in base}
    assert not {json.dumps(p["domain"], sort_keys=True) for p in extra} & {json.dumps(p["domain"], sort_keys=True)
                                                                          for p in base}
    techniques = [p["report"] for p in extra if "Technique" in p["report"]]
    assert all("Technique: axial FLAIR only." in r for r in techniques)
    assert not any("FLAIR only" in p["report"] for p in base)
    with pytest.raises(MedAlignError, match="--flair-alone"):
        plan_cohort(40, 0, flair_alone=-1)


def test_the_flair_alone_studies_can_have_their_own_class_shares():
    """``flair_alone_weights`` shares the extras among the classes (the cohort and its twins untouched, and the
    extras drawn from the same streams); without it they follow the cohort's ``class_weights``; misuse is a one-line
    error naming the option."""
    base = plan_cohort(40, 3, twins=0.5, flair_alone=20)
    mix = plan_cohort(40, 3, twins=0.5, flair_alone=20,
                      flair_alone_weights={"others": 1.5, "normal": 1.5, "infarct": 0.5, "hemorrhage": 0.5})
    n = len(base) - 20
    assert mix[:n] == base[:n]
    assert Counter(p["label"] for p in mix[n:]) == {"others": 6, "normal": 6, "tumor": 4, "infarct": 2, "hemorrhage": 2}
    assert all(p["series"] == ["flair"] for p in mix[n:])
    inherited = plan_cohort(40, 3, flair_alone=20, class_weights={"others": 3})
    assert Counter(p["label"] for p in inherited[40:])["others"] == 8  # 3 of 7 shares: the cohort's weights
    own = plan_cohort(40, 3, flair_alone=20, class_weights={"others": 3}, flair_alone_weights={})
    assert Counter(p["label"] for p in own[40:]) == {c: 4 for c in CLASSES}  # {} = balanced, not the cohort's
    with pytest.raises(MedAlignError, match="--flair-alone-class-weights applies to the FLAIR-alone studies"):
        plan_cohort(40, 3, flair_alone_weights={"others": 2})
    with pytest.raises(MedAlignError, match="--flair-alone-class-weights: unknown class 'stroke'"):
        plan_cohort(40, 3, flair_alone=5, flair_alone_weights={"stroke": 2})


def test_a_flair_alone_study_is_the_flair_of_the_full_study_drawn_alone():
    plans = plan_cohort(40, 1, flair_alone=5)
    t = next(p for p in plans[40:] if p["label"] == "tumor")
    alone = synthesize_study(t, shape_mode="small")
    assert set(alone) == {"acquisition", "flair", "mask", "lesion_volume_ml"} and list(alone["acquisition"]) == ["flair"]
    full_truth = {k: v for k, v in t.items() if k != "series"}
    full = synthesize_study(full_truth, shape_mode="small")
    assert set(SEQUENCES) <= set(full)
    # the same anatomy, lesion and FLAIR grid; only the noise draws that the other series used differ
    assert np.allclose(alone["flair"][1], full["flair"][1])
    assert (alone["mask"][0] == full["mask"][0]).all() and alone["mask"][0].any()
    corr = np.corrcoef(alone["flair"][0].ravel().astype(float), full["flair"][0].ravel().astype(float))[0, 1]
    assert corr > 0.9
    with pytest.raises(MedAlignError, match="lack flair"):
        synthesize_study({**t, "series": ["dwi"]}, shape_mode="small")


def test_cli_writes_flair_alone_studies_that_read_as_missing_series(tmp_path, capsys):
    from medalign.cli import main
    from medalign.data.imaging import PreprocessConfig, preprocess_study
    from medalign.data.manifest import load_manifest

    out, ref = tmp_path / "fa", tmp_path / "ref"
    common = ["synth", "brain", "--n", "20", "--seed", "2", "--shape-mode", "small", "--workers", "1", "--paraphrases", "1"]
    assert main([*common, "--out", str(ref)]) == 0
    assert main([*common, "--out", str(out), "--flair-alone", "3", "--flair-alone-territory", "1",
                 "--flair-alone-class-weights", "tumor=0,normal=2"]) == 0
    assert "wrote 23 studies" in capsys.readouterr().out
    info = json.loads((out / "cohort.json").read_text(encoding="utf-8"))
    assert info["flair_alone"] == 3 and info["flair_alone_territory"] == 1.0  # the extras' own infarct shapes, recorded
    assert info["flair_alone_class_weights"] == {"infarct": 1.0, "tumor": 0.0, "hemorrhage": 1.0, "normal": 2.0,
                                                 "others": 1.0}  # and their own class shares
    assert "tumor" not in set(pd.read_csv(out / "manifest.csv").label.iloc[20:])
    assert "flair_alone" not in json.loads((ref / "cohort.json").read_text(encoding="utf-8"))
    df, df_ref = pd.read_csv(out / "manifest.csv"), pd.read_csv(ref / "manifest.csv")
    pd.testing.assert_frame_equal(df.iloc[:20], df_ref)  # the cohort's rows are unchanged
    for row in df.iloc[20:].itertuples():
        sdir = out / row.study_id
        assert sorted(f.name for f in sdir.iterdir()) == ["flair.nii.gz", "ground_truth.json", "lesion_mask.nii.gz"]
        gt = json.loads((sdir / "ground_truth.json").read_text(encoding="utf-8"))
        assert gt["series"] == ["flair"] and list(gt["acquisition"]) == ["flair"] and row.split == "train"
        assert nib.load(sdir / "flair.nii.gz").shape == nib.load(sdir / "lesion_mask.nii.gz").shape
    for sid in df_ref.study_id[:3]:  # byte for byte the same files
        assert (out / sid / "flair.nii.gz").read_bytes() == (ref / sid / "flair.nii.gz").read_bytes()
    row = load_manifest(out / "manifest.csv").set_index("study_id").loc[df.study_id.iloc[-1]]
    cfg = PreprocessConfig(shape=(8, 32, 32))  # the preset's series: dwi, t2s, flair
    pre = preprocess_study({s: row[f"image_{s}"] for s in cfg.sequences}, cfg, study_id=row.name, mask_path=row["mask"])
    assert pre.sequence_mask.tolist() == [s == "flair" for s in cfg.sequences]  # read as a FLAIR alone
    assert np.abs(pre.image[list(cfg.sequences).index("flair")]).sum() > 0
    # the DICOM export writes whole protocols: a FLAIR-alone study is named, not half-written
    from medalign.data.synth.dicom_export import export_cohort

    df.iloc[20:].to_csv(out / "extras.csv", index=False)
    with pytest.raises(MedAlignError, match=f"study {df.study_id.iloc[20]} has no dwi series"):
        export_cohort(out / "extras.csv", tmp_path / "dcm")


def test_the_flair_alone_studies_can_draw_their_territorial_infarcts_apart():
    from medalign.data.synth.randomise import DomainOptions

    def shapes(plans):  # territorial infarct shapes: "territory" (the wedge) or None (an ellipsoid)
        return [f.get("shape") for p in plans for f in p["findings"] if f.get("variant") == "territorial"]

    half = DomainOptions(infarct_territory=0.5)
    split = DomainOptions(infarct_territory=0.5, flair_alone_territory=1.0)
    both, apart = plan_cohort(60, 4, flair_alone=120, domain=half), plan_cohort(60, 4, flair_alone=120, domain=split)
    assert apart[:60] == both[:60]  # the full studies keep --infarct-territory's draw
    assert {None, "territory"} <= set(shapes(both[60:]))  # without it, the extras draw both shapes
    assert {None, "territory"} <= set(shapes(apart[:60]))
    assert shapes(apart[60:]) and set(shapes(apart[60:])) == {"territory"}  # with it, wedges only
    assert split.record()["flair_alone_territory"] == 1.0 and "flair_alone_territory" not in half.record()
    assert DomainOptions(infarct_territory=0.5, flair_alone_territory=0.0).record()["flair_alone_territory"] == 0.0
    ellipsoids = DomainOptions(infarct_territory=1.0, flair_alone_territory=0.0)
    assert set(shapes(plan_cohort(60, 4, flair_alone=120, domain=ellipsoids)[60:])) == {None}
    with pytest.raises(MedAlignError, match="--flair-alone-territory applies to the FLAIR-alone studies"):
        plan_cohort(40, 0, domain=split)
    with pytest.raises(MedAlignError, match="--flair-alone-territory must be a probability"):
        DomainOptions(flair_alone_territory=1.5).check(randomise=True)
