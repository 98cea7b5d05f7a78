"""``randomise.DomainOptions``, ``synth brain --skull-strip`` and ``--sharpen-sequences`` (issue 20)."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from medalign.data.synth import randomise as R
from medalign.data.synth.brain import generate_brain_cohort, plan_cohort
from medalign.errors import MedAlignError


def _stripped(plans: list[dict]) -> set[str]:
    return {t["study_id"] for t in plans if t["domain"]["skull_stripped"]}


def test_skull_strip_share_changes_only_the_stripped_flag_on_the_same_draw(monkeypatch):
    base = plan_cohort(60, 4)
    assert base == plan_cohort(60, 4, domain=R.DomainOptions(skull_strip=R.SKULL_STRIP_P))
    plans = {p: plan_cohort(60, 4, domain=R.DomainOptions(skull_strip=p)) for p in (0.0, 0.7, 1.0)}
    sinus = {t["study_id"] for t in base if any(f.get("variant") == "sinus" for f in t["findings"])}
    assert _stripped(plans[0.0]) == set() and _stripped(plans[1.0]) == {t["study_id"] for t in base} - sinus
    assert _stripped(base) < _stripped(plans[0.7]) < _stripped(plans[1.0])  # one draw: a higher share adds studies
    for a, b in zip(base, plans[0.7]):  # nothing else moves
        a, b = json.loads(json.dumps(a)), json.loads(json.dumps(b))
        a["domain"].pop("skull_stripped"), b["domain"].pop("skull_stripped")
        assert a == b
    monkeypatch.setattr(R, "SKULL_STRIP_P", 0.7)  # the option is the generator's constant, per cohort
    assert plan_cohort(60, 4) == plans[0.7]


def test_options_resolve_check_and_record():
    o = R.DomainOptions()
    assert o.resolved() == R.DomainOptions(None, None, 0.0, R.CLINICAL_NOISE_P, R.SHARPEN_P, R.SKULL_STRIP_P,
                                           R.INFARCT_TERRITORY_P, R.SHARPEN_SEQUENCES, R.INFARCT_WATERSHED_P,
                                           R.GLIOMA_CORES_P, R.INFARCT_MISMATCH_P, R.OTHERS_SVD_P, R.GLIOMA_BRIGHT_P,
                                           R.INFARCT_ONSET_P, R.LESION_FLAIR_SPREAD_P, R.GLIOMA_SITES_P, None,
                                           R.METASTASES_P)
    assert o.record() == {"clinical_noise": R.CLINICAL_NOISE_P, "skull_strip": R.SKULL_STRIP_P, "sharpen": R.SHARPEN_P,
                          "sharpen_sequences": ["flair"], "glioma_sites": R.GLIOMA_SITES_P}
    assert R.DomainOptions(wm_shine=(0.0, 0.5), sharpen=0.3, skull_strip=0.0, sharpen_sequences=("all",)).record() == {
        "wm_shine": [0.0, 0.5], "clinical_noise": R.CLINICAL_NOISE_P, "sharpen": 0.3, "glioma_sites": R.GLIOMA_SITES_P}
    o.check(randomise=False)  # the defaults need nothing
    R.DomainOptions(skull_strip=0.0, clinical_noise=0.0).check(randomise=False)  # off is off either way
    with pytest.raises(MedAlignError, match=r"--skull-strip must be a probability in \[0, 1\], got 1.5"):
        R.DomainOptions(skull_strip=1.5).check(randomise=True)
    with pytest.raises(MedAlignError, match="--skull-strip needs domain randomisation"):
        R.DomainOptions(skull_strip=0.5).check(randomise=False)


def test_skull_strip_option_from_the_command_line(tmp_path, capsys):
    from medalign.cli import main

    base = ["synth", "brain", "--n", "20", "--seed", "4", "--shape-mode", "small", "--workers", "1", "--paraphrases", "0"]
    assert main([*base, "--out", str(tmp_path / "a"), "--skull-strip", "1"]) == 0
    info = json.loads((tmp_path / "a" / "cohort.json").read_text())
    assert info["skull_strip"] == 1.0 and info["clinical_noise"] == R.CLINICAL_NOISE_P
    for gt in (tmp_path / "a").glob("*/ground_truth.json"):
        t = json.loads(gt.read_text())
        assert t["domain"]["skull_stripped"] != any(f.get("variant") == "sinus" for f in t["findings"])
    assert main([*base, "--no-randomise", "--out", str(tmp_path / "b"), "--skull-strip", "0.5"]) != 0
    assert "--skull-strip needs domain randomisation: drop --no-randomise" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
    generate_brain_cohort(tmp_path / "c", n=20, seed=4, shape_mode="small", workers=1, randomise=False)
    assert "skull_strip" not in json.loads((tmp_path / "c" / "cohort.json").read_text())


def test_sharpen_sequences_filter_only_those_series_on_the_same_draw():
    """With ``sharpen_sequences`` the named series get the amount every series gets without it, the
    others 0 (recorded, not absent), and no other draw moves."""
    every, flair = (plan_cohort(40, 4, domain=R.DomainOptions(sharpen=0.5, sharpen_sequences=q)) for q in (("all",), ("flair",)))
    on = 0
    for t_all, t in zip(every, flair):
        a_all = {s: g.pop("sharpen") for s, g in t_all["domain"]["acquisition"].items()}
        a = {s: g.pop("sharpen") for s, g in t["domain"]["acquisition"].items()}
        assert t == t_all and a["flair"] == a_all["flair"]
        assert {v for s, v in a.items() if s != "flair"} == {0.0}
        on += a["flair"] > 0
    assert 0 < on < 40
    assert R.DomainOptions(sharpen=0.3, sharpen_sequences=("flair",)).record()["sharpen_sequences"] == ["flair"]
    assert "sharpen_sequences" not in R.DomainOptions(sharpen=0.0, sharpen_sequences=("flair",)).record()  # off: nothing to say
    with pytest.raises(MedAlignError, match="--sharpen-sequences: unknown sequence 'flar'; choose from all, dwi, adc"):
        R.DomainOptions(sharpen=0.3, sharpen_sequences=("flar",)).check(randomise=True)
    with pytest.raises(MedAlignError, match="--sharpen-sequences needs domain randomisation"):
        R.DomainOptions(sharpen_sequences=("flair",)).check(randomise=False)


def test_sharpen_sequences_from_the_command_line(tmp_path, capsys):
    """`--sharpen 1 --sharpen-sequences flair` changes every study's FLAIR and leaves its other series
    and masks byte for byte as without the filter; a misspelt sequence is one line and writes nothing."""
    from medalign.cli import main

    base = ["synth", "brain", "--n", "20", "--seed", "4", "--shape-mode", "small", "--workers", "1", "--paraphrases", "0"]
    assert main([*base, "--out", str(tmp_path / "a"), "--sharpen", "0"]) == 0
    assert main([*base, "--out", str(tmp_path / "b"), "--sharpen", "1", "--sharpen-sequences", "flair"]) == 0
    assert json.loads((tmp_path / "b" / "cohort.json").read_text())["sharpen_sequences"] == ["flair"]
    for study in sorted(p.parent for p in (tmp_path / "b").glob("*/ground_truth.json")):
        for f in sorted(study.glob("*.nii.gz")):
            a = np.asanyarray(nib.load(tmp_path / "a" / study.name / f.name).dataobj)
            same = np.array_equal(a, np.asanyarray(nib.load(f).dataobj))
            assert same == (not f.name.startswith("flair")), (study.name, f.name)
    capsys.readouterr()  # the progress bars so far
    assert main([*base, "--out", str(tmp_path / "c"), "--sharpen", "1", "--sharpen-sequences", "flair,dw"]) != 0
    err = capsys.readouterr().err
    assert "--sharpen-sequences: unknown sequence 'dw'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "c").exists()


def test_every_probability_option_is_a_synth_brain_parameter_of_its_name():
    """``synth brain`` hands its probability options to ``DomainOptions`` by name: each must exist there."""
    import typer

    from medalign.cli import app

    brain = typer.main.get_command(app).commands["synth"].commands["brain"]
    params = {p.name for p in brain.params}
    assert set(R.DomainOptions.PROBABILITIES) <= params, set(R.DomainOptions.PROBABILITIES) - params
