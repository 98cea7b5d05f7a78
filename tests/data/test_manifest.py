"""Manifest loading (CSV/Parquet, relative paths), patient-grouped stratified splits, leakage."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medalign.cli import main
from medalign.data.manifest import (check_leakage, load_manifest, make_splits, manifest_sequences, save_manifest)
from medalign.data.schema import CLASSES
from medalign.errors import CohortError


def _touch(p: Path) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"x")
    return p


def _table(tmp_path: Path, n: int = 6) -> pd.DataFrame:
    rows = []
    for i in range(n):
        _touch(tmp_path / f"s{i}" / "flair.nii.gz")
        rows.append({"study_id": f"s{i}", "patient_id": f"p{i // 2}", "label": CLASSES[i % 5],
                     "report": f"Report {i}.", "image_flair": f"s{i}/flair.nii.gz", "image_dwi": "",
                     "note": "kept"})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_load_resolves_relative_paths(tmp_path, suffix):
    df = _table(tmp_path)
    p = save_manifest(df, tmp_path / f"manifest{suffix}")
    m = load_manifest(p)
    assert manifest_sequences(m) == ["dwi", "flair"]
    assert m.loc[0, "image_flair"] == str(tmp_path / "s0" / "flair.nii.gz")
    assert m.loc[0, "image_dwi"] == ""
    assert m.loc[0, "note"] == "kept"  # extra columns survive
    raw = load_manifest(p, absolute_paths=False)
    assert raw.loc[0, "image_flair"] == "s0/flair.nii.gz"


def _cohort(n_per_class=(40, 50, 60, 62, 50), multi=0, seed=0) -> pd.DataFrame:
    rows, k = [], 0
    rng = np.random.default_rng(seed)
    for c, n in zip(CLASSES, n_per_class):
        for i in range(n):
            rows.append({"study_id": f"s{k}", "patient_id": f"p{k}", "label": c, "image_flair": "x"})
            k += 1
    df = pd.DataFrame(rows)
    if multi:  # give `multi` patients a second and third study (same label)
        for j in rng.choice(len(df), multi, replace=False):
            df.loc[(j + 1) % len(df), "patient_id"] = df.loc[j, "patient_id"]
            df.loc[(j + 1) % len(df), "label"] = df.loc[j, "label"]
    return df


def test_split_counts_exact_and_stratified():
    df = _cohort()
    assert len(df) == 262
    out = make_splits(df, counts=(211, 24, 27), seed=3)
    assert out["split"].value_counts().to_dict() == {"train": 211, "val": 24, "test": 27}
    tab = pd.crosstab(out["label"], out["split"])
    frac = tab["train"] / tab.sum(axis=1)
    assert (abs(frac - 211 / 262) < 0.06).all()  # every class ~80 % train
    assert (tab["val"] >= 3).all() and (tab["test"] >= 3).all()


def test_split_groups_patients_deterministic_by_seed():
    df = _cohort(multi=40)
    a = make_splits(df, fractions=(0.8, 0.1, 0.1), seed=1)
    b = make_splits(df, fractions=(0.8, 0.1, 0.1), seed=1)
    c = make_splits(df, fractions=(0.8, 0.1, 0.1), seed=2)
    assert a["split"].tolist() == b["split"].tolist()
    assert a["split"].tolist() != c["split"].tolist()
    assert (a.groupby("patient_id")["split"].nunique() == 1).all()  # no patient in two splits
    check_leakage(a)
    counts = a["split"].value_counts()
    assert abs(counts["train"] - 0.8 * len(df)) <= 4


def test_split_bad_counts():
    with pytest.raises(CohortError, match="summing to the 262 studies"):
        make_splits(_cohort(), counts=(200, 24, 27))


def test_leakage_names_patient_and_studies():
    df = pd.DataFrame({"study_id": ["a", "b", "c"], "patient_id": ["p1", "p1", "p2"],
                       "split": ["train", "test", "val"]})
    with pytest.raises(CohortError) as e:
        check_leakage(df)
    msg = str(e.value)
    assert "patient p1" in msg and "train: a" in msg and "test: b" in msg


def test_cli_split(tmp_path):
    df = _table(tmp_path, n=10)
    p = save_manifest(df, tmp_path / "m.csv")
    out = tmp_path / "m_split.csv"
    assert main(["split", str(p), "--out", str(out), "--counts", "6,2,2", "--seed", "0"]) == 0
    m = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert m["split"].value_counts().to_dict() == {"train": 6, "val": 2, "test": 2}
    assert m.loc[0, "image_flair"] == "s0/flair.nii.gz"  # relative paths kept
    assert (m.groupby("patient_id")["split"].nunique() == 1).all()
    assert main(["split", str(p), "--counts", "1,2"]) == 2  # one-line user error
