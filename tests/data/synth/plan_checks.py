"""A check shared by the tests of the ``synth brain`` finding options (issue 20): an option that adds keys to chosen
findings of chosen studies changes nothing else in the plan."""
from __future__ import annotations


def added_keys(base: list[dict], plan: list[dict], changed: set[str]) -> dict[str, list[dict]]:
    """The keys ``plan`` adds to each finding of the studies in ``changed`` ({study id: [added keys per finding]}),
    after asserting that every other study is byte for byte the ``base`` one and that, in the changed studies, each
    finding is the planned one plus those keys and every other key of the truth (report included) is unchanged."""
    out: dict[str, list[dict]] = {}
    for before, t in zip(base, plan, strict=True):
        if t["study_id"] not in changed:
            assert t == before
            continue
        out[t["study_id"]] = []
        for f0, f in zip(before["findings"], t["findings"], strict=True):
            assert {k: v for k, v in f.items() if k in f0} == f0
            out[t["study_id"]].append({k: v for k, v in f.items() if k not in f0})
        assert {k: v for k, v in t.items() if k != "findings"} == {k: v for k, v in before.items() if k != "findings"}
    return out


def option_cli(tmp_path, capsys, flag: str):
    """``synth brain FLAG 1`` on a tiny cohort records the option's share in ``cohort.json``, and ``FLAG 0.5`` with
    ``--no-randomise`` is refused with one line and writes nothing. Returns the folder of the cohort written."""
    import json

    from medalign.cli import main

    base = ["synth", "brain", "--n", "20", "--seed", "4", "--shape-mode", "small", "--workers", "1", "--paraphrases", "0"]
    assert main([*base, "--out", str(tmp_path / "a"), flag, "1"]) == 0
    assert json.loads((tmp_path / "a" / "cohort.json").read_text())[flag[2:].replace("-", "_")] == 1.0
    assert main([*base, "--no-randomise", "--out", str(tmp_path / "b"), flag, "0.5"]) != 0
    assert f"{flag} needs domain randomisation: drop --no-randomise" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
    return tmp_path / "a"


def only_flair_moves(plain: dict, drawn: dict, component: str | None = None) -> None:
    """Two ``randomise.study_contrast`` tables differ only on FLAIR, and there only in ``component``'s signal (None:
    any component's): a finding option that draws one part's FLAIR moves nothing else."""
    from medalign.data.synth.sequences import SEQUENCES

    fi = SEQUENCES.index("flair")
    for name in plain["lesion"]:
        for i, (a, b) in enumerate(zip(plain["lesion"][name], drawn["lesion"][name])):
            assert a == b or (i == fi and component in (None, name)), (name, i)
