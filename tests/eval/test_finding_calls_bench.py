"""benchmarks/finding_calls.py: groups by finding (Fazekas grade apart), counts calls per group, and on a
tiny run classifies each study as `classify` does, alone as a one-series study, and from its report."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nibabel")

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_lesion_reliance import _normal_study, _tiny_run  # noqa: E402  (dwi+flair studies; a tiny CLIP run)
from tiny_volumes import write_lesion_study  # noqa: E402
from tiny_runs import last_checkpoint_p, load_benchmark, perturb_last  # noqa: E402

bench = load_benchmark("finding_calls")


def test_finding_group_names_class_variant_and_fazekas_grade():
    assert bench.finding_group({"label": "normal", "findings": []}) == "normal"
    assert bench.finding_group({"label": "tumor", "findings": [{"variant": "glioma"}]}) == "tumor/glioma"
    assert bench.finding_group({"label": "others", "findings": [{"variant": "wmh", "fazekas": 2}]}) == \
        "others/wmh, Fazekas 2"


def test_summarise_counts_right_calls_and_mean_probabilities_per_group():
    studies = [{"group": "others/wmh", "label": "others"}, {"group": "others/wmh", "label": "others"},
               {"group": "normal", "label": "normal"}]
    classes = ["normal", "others", "tumor"]
    p = np.array([[0.1, 0.3, 0.6], [0.2, 0.7, 0.1], [0.5, 0.4, 0.1]])  # (N, C)
    s = bench.summarise(studies, classes, p)
    assert s["others/wmh"] == {"n": 2, "right": 1, "p_true": pytest.approx(0.5), "calls": {"tumor": 1, "others": 1},
                               "p_mean": {"normal": pytest.approx(0.15), "others": pytest.approx(0.5),
                                          "tumor": pytest.approx(0.35)}}
    assert s["normal"] == {"n": 1, "right": 1, "p_true": pytest.approx(0.5), "calls": {"normal": 1},
                           "p_mean": {"normal": pytest.approx(0.5), "others": pytest.approx(0.4), "tumor": pytest.approx(0.1)}}


def _with_report(root: Path, sid: str, report: str) -> None:
    gt = root / sid / "ground_truth.json"
    t = json.loads(gt.read_text(encoding="utf-8"))
    gt.write_text(json.dumps({**t, "report": report}), encoding="utf-8")


def test_script_on_a_tiny_run(tmp_path, monkeypatch):
    run = _tiny_run(tmp_path, monkeypatch)
    rng = np.random.default_rng(2)
    cohort = tmp_path / "cohort"
    write_lesion_study(cohort, "S1", "others", "wmh", rng)
    write_lesion_study(cohort, "S2", "tumor", "glioma", rng)
    _normal_study(cohort, "S3", rng)
    (cohort / "S3" / "dwi.nii.gz").unlink()  # a FLAIR-only study: in the whole-study and FLAIR views only
    for sid, text in (("S1", "Impression: moderate small vessel disease."), ("S2", "Impression: left frontal glioma."),
                      ("S3", "Impression: normal study.")):
        _with_report(cohort, sid, text)
    out = tmp_path / "calls.json"
    monkeypatch.setattr(sys, "argv", ["finding_calls.py", str(run), "--cohort", str(cohort), "--alone", "flair,dwi",
                                      "--out", str(out)])
    bench.main()
    views = json.loads(out.read_text(encoding="utf-8"))["runs"][str(run)]

    import medalign

    m = medalign.load(run)
    whole = "+".join(m.sequences)
    assert set(views) == {whole, "flair alone", "dwi alone", "reports"}
    assert sorted(views[whole]) == ["normal", "others/wmh", "tumor/glioma"]
    assert sum(g["n"] for g in views["dwi alone"].values()) == 2  # S3 has no DWI
    # the whole-study view is `classify` on the study's files; "flair alone" is `classify` on its FLAIR
    files = {s: str(cohort / "S2" / f"{s}.nii.gz") for s in ("dwi", "flair")}
    for view, item in ((whole, files), ("flair alone", {"flair": files["flair"]})):
        direct = m.classify([item])[0]
        g = views[view]["tumor/glioma"]
        assert g["p_true"] == pytest.approx(direct["probabilities"]["tumor"], abs=1e-3)
        assert g["calls"] == {direct["label"]: 1}
    # the reports view: the report through the text tower, scored against the same prompt bank
    classes, p = m.zero_shot_probabilities(m.encode_report(["Impression: left frontal glioma."]))
    assert views["reports"]["tumor/glioma"]["p_true"] == pytest.approx(p[0, classes.index("tumor")], abs=1e-3)
    assert views["reports"]["tumor/glioma"]["p_true"] != pytest.approx(views[whole]["tumor/glioma"]["p_true"], abs=1e-6)


def test_zero_shot_probabilities_is_what_classify_reports(tmp_path, monkeypatch):
    run = _tiny_run(tmp_path, monkeypatch)
    cohort = tmp_path / "cohort"
    write_lesion_study(cohort, "S1", "others", "wmh", np.random.default_rng(3))
    import medalign

    m = medalign.load(run)
    item = {s: str(cohort / "S1" / f"{s}.nii.gz") for s in ("dwi", "flair")}
    classes, p = m.zero_shot_probabilities(m.encode_image([item]))
    direct = m.classify([item])[0]
    assert p.shape == (1, len(classes)) and p.sum() == pytest.approx(1.0)
    assert direct["probabilities"] == pytest.approx({c: float(p[0, j]) for j, c in enumerate(classes)}, abs=1e-6)


def test_a_cohort_without_the_runs_sequences_is_refused(tmp_path, monkeypatch):
    run = _tiny_run(tmp_path, monkeypatch)
    (tmp_path / "empty" / "S1").mkdir(parents=True)
    (tmp_path / "empty" / "S1" / "ground_truth.json").write_text(json.dumps({"study_id": "S1", "label": "normal"}))
    monkeypatch.setattr(sys, "argv", ["finding_calls.py", str(run), "--cohort", str(tmp_path / "empty")])
    with pytest.raises(SystemExit, match="no study with any of"):
        bench.main()


def test_splits_keep_only_the_studies_asked_for(tmp_path):
    rng = np.random.default_rng(6)
    cohort = tmp_path / "cohort"
    for sid, split in (("S1", "train"), ("S2", "val"), ("S3", "test")):
        _normal_study(cohort, sid, rng)
        gt = cohort / sid / "ground_truth.json"
        gt.write_text(json.dumps({**json.loads(gt.read_text(encoding="utf-8")), "split": split}), encoding="utf-8")
    assert [s["study"] for s in bench.cohort_studies(cohort, ["flair"])] == ["S1", "S2", "S3"]
    assert [s["study"] for s in bench.cohort_studies(cohort, ["flair"], {"train", "val"})] == ["S1", "S2"]


def test_last_checkpoint_is_read_when_asked(tmp_path, monkeypatch):
    run = _tiny_run(tmp_path, monkeypatch)
    perturb_last(run)  # one epoch: best = last; perturbed, they differ
    cohort = tmp_path / "cohort"
    write_lesion_study(cohort, "S1", "tumor", "glioma", np.random.default_rng(7))
    out = tmp_path / "calls.json"
    monkeypatch.setattr(sys, "argv", ["finding_calls.py", str(run), "--cohort", str(cohort), "--alone", "",
                                      "--checkpoint", "last", "--out", str(out)])
    bench.main()
    res = json.loads(out.read_text(encoding="utf-8"))
    import medalign

    last = last_checkpoint_p(run, {s: str(cohort / "S1" / f"{s}.nii.gz") for s in ("dwi", "flair")}, "tumor")  # != best
    assert res["checkpoint"] == "last"
    got = res["runs"][str(run)]["+".join(medalign.load(run, checkpoint="last").sequences)]["tumor/glioma"]["p_true"]
    assert got == pytest.approx(last, abs=1e-3)  # rounded to 3 places


def test_readout_reads_as_classify_with_the_runs_own_readout(tmp_path, monkeypatch):
    run = _tiny_run(tmp_path, monkeypatch)
    cohort = tmp_path / "cohort"
    write_lesion_study(cohort, "S1", "tumor", "glioma", np.random.default_rng(4))
    files = {s: str(cohort / "S1" / f"{s}.nii.gz") for s in ("dwi", "flair")}

    import medalign

    m = medalign.load(run)
    monkeypatch.setattr(m, "readout", lambda neighbours=None, k=None, mirror=None: (0.0, 20, True))  # a mirrored run
    classes, p = bench.image_probabilities(m, [files], readout=True)
    direct = m.classify([files], mirror=True)[0]["probabilities"]
    assert p[0] == pytest.approx([direct[c] for c in classes], abs=1e-6)
    zs_classes, zs = bench.image_probabilities(m, [files])  # zero-shot: the plain embedding, no mirror
    assert zs_classes == classes and np.abs(zs[0] - p[0]).max() > 1e-5
