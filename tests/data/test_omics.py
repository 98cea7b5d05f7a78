"""TCGA expression loader, scaler, signatures, splits and patch-feature bags."""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from medalign.data.bags import find_bag, load_bag, pad_bags, save_bag
from medalign.data.omics import (ExpressionScaler, load_mcat, load_xena, patient_split, read_signatures, read_table,
                                 signature_gene_order)
from medalign.errors import CohortError

SHARED = Path(os.environ.get("MEDALIGN_SHARED_DATA", Path(__file__).resolve().parents[2] / ".." / "shared" / "data"))
TCGA = SHARED / "tcga"


def _mcat_zip(path: Path) -> Path:
    df = pd.DataFrame({"case_id": ["TCGA-A", "TCGA-A", "TCGA-B", "TCGA-C"], "slide_id": ["a1", "a2", "b", "c"],
                       "oncotree_code": ["LUAD", "LUAD", "LUAD", "BLCA"], "age": [60, 60, 70, 50],
                       "TP53_rnaseq": [1.0, 1.0, 2.0, 3.0], "EGFR_rnaseq": [0.5, 0.5, 0.1, 0.2], "TP53_cnv": [0, 0, 1, -1]})
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("../dataset_csv/tcga_x_all_clean.csv", df.to_csv())  # the '../' member name of the real files
    return path


def test_zip_member_with_dotdot_is_read_without_extracting(tmp_path):
    z = _mcat_zip(tmp_path / "t.csv.zip")
    before = set(tmp_path.parent.iterdir())
    t = load_mcat(z)
    assert set(tmp_path.parent.iterdir()) == before  # nothing written next to (or above) the zip
    assert list(t.expression.columns) == ["TP53", "EGFR"]
    assert list(t.expression.index) == ["TCGA-A", "TCGA-B", "TCGA-C"]  # slide rows -> one per patient
    assert t.labels.tolist() == ["LUAD", "LUAD", "BLCA"]
    assert list(load_mcat(z, kind="cnv").expression.columns) == ["TP53"]


def test_read_table_errors_name_the_file(tmp_path):
    with pytest.raises(CohortError, match="missing.csv"):
        read_table(tmp_path / "missing.csv")
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"not a zip")
    with pytest.raises(CohortError, match="bad.zip"):
        read_table(bad)


def _xena(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    for c, n in (("aaa", 6), ("bbb", 5)):
        ids = [f"{c}-{i}" for i in range(n)]
        rna = pd.DataFrame(rng.normal(size=(n, 4)), index=ids, columns=["G1", "G2", "G3", f"ONLY_{c}"])
        rna = pd.concat([rna, rna.iloc[:1] + 2.0])  # a duplicated case id: averaged
        rna.to_csv(tmp_path / f"xena_{c}_rna.csv")
        meta = pd.DataFrame({"case_id": ids[1:] + [ids[1]], "oncotree_code": [f"{c.upper()}1"] * n})  # id 0 has no metadata
        meta.to_csv(tmp_path / f"xena_{c}_metadata.csv")
    pd.DataFrame({"grpB": ["G3", "G1"], "grpA": ["G2", None]}).to_csv(tmp_path / "xena_signatures.csv", index=False)
    return tmp_path


def test_load_xena_aligns_patients_and_genes(tmp_path):
    t = load_xena(_xena(tmp_path), ("aaa", "bbb"))
    assert list(t.expression.columns) == ["G1", "G2", "G3"]  # genes shared by all cohorts
    assert len(t.expression) == 5 + 4  # patient 0 of each cohort lacks metadata
    assert not t.expression.index.has_duplicates
    assert t.classes == ["AAA", "BBB"]
    assert (t.labels.index == t.expression.index).all()
    assert load_xena(tmp_path, ("aaa",), label="oncotree_code").labels.unique().tolist() == ["AAA1"]
    with pytest.raises(CohortError, match="xena_aaa_metadata.csv"):
        load_xena(tmp_path, ("aaa",), label="nope")


def test_signature_order(tmp_path):
    sig = read_signatures(_xena(tmp_path) / "xena_signatures.csv")
    assert sig == {"grpB": ["G3", "G1"], "grpA": ["G2"]}
    order, used = signature_gene_order(["G1", "G2", "G3", "X"], sig)
    assert order == ["G3", "G1", "G2", "X"] and used["unassigned"] == ["X"]


def test_scaler_uses_train_statistics_only():
    train = np.array([[0.0, 1.0], [2.0, 1.0]])
    test = np.array([[100.0, 5.0]])
    s = ExpressionScaler(log=False, clip=None).fit(train)
    assert np.allclose(s.transform(train), [[-1, 0], [1, 0]])  # constant gene -> 0, not NaN
    assert np.allclose(s.transform(test), [[99.0, 4.0]])  # test values do not move the statistics
    raw = np.array([[0.0], [1023.0]])
    s2 = ExpressionScaler(log="auto").fit(raw)
    assert s2.use_log_ and np.allclose(s2.transform(raw), [[-1], [1]])


def test_patient_split_is_stratified_and_disjoint():
    labels = pd.Series(["a"] * 20 + ["b"] * 10, index=[f"p{i}" for i in range(30)])
    sp = patient_split(labels, fractions=(0.6, 0.2, 0.2), seed=0)
    assert sp.value_counts().to_dict() == {"train": 18, "val": 6, "test": 6}
    assert (labels[sp == "test"] == "b").sum() == 2


@pytest.mark.parametrize("suffix", [".pt", ".npy", ".h5"])
def test_bags_round_trip_all_formats(tmp_path, suffix):
    feats = np.random.default_rng(0).normal(size=(7, 5)).astype(np.float32)
    coords = np.arange(14).reshape(7, 2)
    sub = {".pt": "pt_files", ".h5": "h5_files", ".npy": ""}[suffix]
    save_bag(tmp_path / sub / f"slide1{suffix}", feats, coords)
    p = find_bag(tmp_path, "slide1")
    got, c = load_bag(p, with_coords=True)
    assert np.allclose(got, feats) and got.dtype == np.float32
    if suffix != ".npy":
        assert np.array_equal(c, coords)


def test_bag_errors_name_study_and_file(tmp_path):
    with pytest.raises(CohortError, match="study s9.*nothere.h5"):
        load_bag(tmp_path / "nothere.h5", study_id="s9")
    torch.save({"feats": torch.zeros(2, 3)}, tmp_path / "x.pt")
    with pytest.raises(CohortError, match="x.pt"):
        load_bag(tmp_path / "x.pt", study_id="s1")
    (tmp_path / "c.npy").write_bytes(b"garbage")
    with pytest.raises(CohortError, match="c.npy"):
        load_bag(tmp_path / "c.npy", study_id="s2")
    with pytest.raises(CohortError, match="study s3"):
        find_bag(tmp_path, "s3")


def test_pad_bags_mask():
    x, m = pad_bags([torch.ones(2, 3), torch.ones(4, 3)])
    assert x.shape == (2, 4, 3) and m.sum(1).tolist() == [2, 4] and x[0, 2:].abs().sum() == 0


@pytest.mark.skipif(not (TCGA / "xena_blca_rna.csv").exists(), reason="shared TCGA data absent (../shared/data/tcga)")
def test_real_xena_and_mcat():
    t = load_xena(TCGA)
    assert t.classes == ["BLCA", "COADREAD", "STAD"]
    assert t.expression.shape[1] > 1000 and not t.expression.index.has_duplicates
    counts = t.labels.value_counts().to_dict()
    assert counts["BLCA"] == 359 and counts["STAD"] == 318  # README: RNA x metadata overlap
    m = load_mcat(TCGA / "mcat_tcga_blca_all_clean.csv.zip")
    assert m.expression.shape[1] > 2000 and len(m.expression) > 300
