"""``randomise.DomainOptions`` and ``synth brain --skull-strip`` (issue 20)."""
from __future__ import annotations

import json

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
                                           R.INFARCT_TERRITORY_P)
    assert o.record() == {"clinical_noise": R.CLINICAL_NOISE_P, "skull_strip": R.SKULL_STRIP_P}  # SHARPEN_P is 0
    assert R.DomainOptions(wm_shine=(0.0, 0.5), sharpen=0.3, skull_strip=0.0).record() == {
        "wm_shine": [0.0, 0.5], "clinical_noise": R.CLINICAL_NOISE_P, "sharpen": 0.3}
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
