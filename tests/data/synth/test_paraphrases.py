"""Generator paraphrases (issue 16): other reports of the same truth, training families only, on
their own random streams, so every file of the cohort and its ``report`` column stay the same."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from medalign.data.reports import label_reports
from medalign.data.schema import PARAPHRASES_COLUMN
from medalign.data.synth import report_grammar
from medalign.data.synth.brain import generate_brain_cohort, plan_cohort
from medalign.errors import MedAlignError

KW = dict(n=20, seed=3, shape_mode="small", label_noise=0.1, studies_per_patient="1-3", heldout_phrasing=True,
          workers=1)


def test_paraphrases_keep_the_class_and_never_use_the_heldout_family(monkeypatch):
    calls: list[bool] = []
    real = report_grammar.generate_report

    def spy(truth, rng, heldout=False):
        calls.append(bool(heldout))
        return real(truth, rng, heldout=heldout)

    monkeypatch.setattr(report_grammar, "generate_report", spy)
    plans = plan_cohort(100, 4, heldout_phrasing=True, paraphrases=3, randomise=False)
    n_test = sum(p["split"] == "test" for p in plans)
    assert n_test > 0 and sum(calls) == n_test  # only the test split's own reports are held-out family
    assert len(calls) >= 100 + 3 * 100  # every paraphrase went through generate_report(heldout=False)
    texts, truth = [], []
    for p in plans:
        para = p[PARAPHRASES_COLUMN]
        assert 1 <= len(para) <= 3 and len(set(para)) == len(para) and p["report"] not in para
        texts += para
        truth += [p["label"]] * len(para)
    assert sum(len(p[PARAPHRASES_COLUMN]) == 3 for p in plans) >= 90
    assert label_reports(texts) == truth  # of the study's class per the labeller


def test_plan_is_unchanged_apart_from_the_paraphrases():
    for randomise in (False, True):
        base = plan_cohort(40, 2, heldout_phrasing=True, randomise=randomise)
        more = plan_cohort(40, 2, heldout_phrasing=True, randomise=randomise, paraphrases=4)
        assert [{k: v for k, v in t.items() if k != PARAPHRASES_COLUMN} for t in more] == base
        assert all(PARAPHRASES_COLUMN not in t for t in base)
        again = plan_cohort(40, 2, heldout_phrasing=True, randomise=randomise, paraphrases=4)
        assert [t[PARAPHRASES_COLUMN] for t in again] == [t[PARAPHRASES_COLUMN] for t in more]  # deterministic
    fewer = plan_cohort(40, 2, randomise=False, paraphrases=2)
    assert all(t[PARAPHRASES_COLUMN] == m[PARAPHRASES_COLUMN][:2] for t, m in  # draw j is the same for any K
               zip(fewer, plan_cohort(40, 2, randomise=False, paraphrases=4)) if len(t[PARAPHRASES_COLUMN]) == 2)
    with pytest.raises(MedAlignError, match="--paraphrases"):
        plan_cohort(20, 0, paraphrases=-1)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_cohort_files_are_byte_identical_and_the_column_is_added(tmp_path):
    m0 = generate_brain_cohort(tmp_path / "k0", paraphrases=0, **KW)
    m3 = generate_brain_cohort(tmp_path / "k3", paraphrases=3, **KW)
    f0, f3 = _files(m0.parent), _files(m3.parent)
    assert set(f0) == set(f3)
    changed = sorted(k for k in f0 if f0[k] != f3[k])
    assert changed == ["cohort.json", "manifest.csv"]  # images, masks, ground_truth.json: byte-identical
    assert json.loads(f3["cohort.json"]) == {**json.loads(f0["cohort.json"]), "paraphrases": 3}
    d0 = pd.read_csv(m0, dtype=str, keep_default_na=False)
    d3 = pd.read_csv(m3, dtype=str, keep_default_na=False)
    assert list(d3.columns) == [*d0.columns[:5], PARAPHRASES_COLUMN, *d0.columns[5:]]  # next to the report
    assert d3.drop(columns=[PARAPHRASES_COLUMN]).to_csv(index=False).encode() == f0["manifest.csv"]
    for _, row in d3.iterrows():
        para = json.loads(row[PARAPHRASES_COLUMN])
        assert 1 <= len(para) <= 3 and "\n" not in row[PARAPHRASES_COLUMN]  # one line per cell
        truth = json.loads((m3.parent / row["study_id"] / "ground_truth.json").read_text(encoding="utf-8"))
        assert PARAPHRASES_COLUMN not in truth
        assert set(label_reports(para)) == {truth["label"]}
    from medalign.data.manifest import load_manifest

    assert len(load_manifest(m3)) == 20


def test_cli_paraphrases_option(tmp_path, capsys):
    from medalign.cli import main

    args = ["synth", "brain", "--n", "20", "--seed", "1", "--shape-mode", "small", "--workers", "1", "--no-randomise"]
    assert main([*args, "--out", str(tmp_path / "a"), "--paraphrases", "2"]) == 0
    df = pd.read_csv(tmp_path / "a" / "manifest.csv", dtype=str, keep_default_na=False)
    assert all(1 <= len(json.loads(v)) <= 2 for v in df[PARAPHRASES_COLUMN])
    assert main([*args, "--out", str(tmp_path / "b"), "--paraphrases", "0"]) == 0  # none
    assert PARAPHRASES_COLUMN not in pd.read_csv(tmp_path / "b" / "manifest.csv").columns
    assert main([*args, "--out", str(tmp_path / "c"), "--paraphrases", "21"]) != 0
