"""Gene-expression tables: TCGA loaders, patient alignment, train-only scaling, gene subsets.

Real layouts handled (see ../shared/data/README.md, tcga section):
* ``xena_<cohort>_rna.csv`` (rows = case ids, columns = genes) + ``xena_<cohort>_metadata.csv``
  (slide-level rows with ``case_id`` and ``oncotree_code``) + ``xena_signatures.csv``
  (columns = signature groups, cells = genes).
* ``mcat_tcga_<cohort>_all_clean.csv.zip``: one CSV member whose name starts with ``../``;
  read through ``zipfile`` (never extracted, so the odd name is harmless), columns
  ``*_rnaseq`` / ``*_cnv`` plus clinical columns, one row per slide.
"""
from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from medalign.errors import CohortError

XENA_COHORTS = ("blca", "coadread", "stad")


def read_table(path: str | Path, *, member: str | None = None, index_col: int | str | None = None) -> pd.DataFrame:
    """Read a CSV, or a CSV member of a ``.zip`` without extracting it (member names may start with ``../``)."""
    path = Path(path)
    if not path.exists():
        raise CohortError("file not found", path=str(path))
    try:
        if path.suffix == ".zip":
            with zipfile.ZipFile(path) as zf:
                # the MCAT archives hold one CSV whose member name is '../dataset_csv/<x>.csv.zip'
                names = [n for n in zf.namelist() if not n.endswith("/") and ".csv" in Path(n).name]
                if member is not None:
                    names = [n for n in names if n == member or Path(n).name == member]
                if len(names) != 1:
                    raise CohortError(f"expected exactly one CSV member{f' named {member}' if member else ''}, "
                                      f"found {names or zf.namelist()}", path=str(path))
                with zf.open(names[0]) as fh:  # reading a member never touches the file system
                    data = fh.read()
                if data[:2] == b"PK":  # a zipped CSV inside the zip
                    with zipfile.ZipFile(io.BytesIO(data)) as inner:
                        data = inner.read(inner.namelist()[0])
                return pd.read_csv(io.BytesIO(data), index_col=index_col)
        return pd.read_csv(path, index_col=index_col)
    except (zipfile.BadZipFile, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise CohortError(f"cannot read table: {e}", path=str(path)) from e


@dataclass
class OmicsTable:
    """Patients x features, aligned with labels. ``expression`` index = patient_id."""

    expression: pd.DataFrame
    labels: pd.Series  # class name per patient, same index
    meta: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def classes(self) -> list[str]:
        return sorted(self.labels.unique())

    def label_index(self) -> np.ndarray:
        lookup = {c: i for i, c in enumerate(self.classes)}
        return self.labels.map(lookup).to_numpy(np.int64)

    def subset_genes(self, genes: list[str]) -> "OmicsTable":
        keep = [g for g in genes if g in self.expression.columns]
        if not keep:
            raise CohortError("none of the requested genes are in the table")
        return OmicsTable(self.expression[keep], self.labels, self.meta)


def _dedupe_rows(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Duplicate case ids (several aliquots) are averaged: one row per patient."""
    if df.index.has_duplicates:
        df = df.groupby(level=0, sort=False).mean()
    if df.isna().any().any():
        bad = df.columns[df.isna().any()].tolist()[:5]
        raise CohortError(f"missing values in columns {bad}", path=str(path))
    return df


def load_xena(root: str | Path, cohorts: tuple[str, ...] = XENA_COHORTS, *, label: str = "cohort") -> OmicsTable:
    """Load and align the Xena RNA tables of several cohorts.

    label: ``"cohort"`` (cancer type = the table's cohort name, upper case) or ``"oncotree_code"``
    (subtype from metadata). Only patients present in both RNA and metadata are kept, and
    only genes shared by all cohorts.
    """
    root = Path(root)
    frames, labels, metas = [], [], []
    for c in cohorts:
        rna_p, meta_p = root / f"xena_{c}_rna.csv", root / f"xena_{c}_metadata.csv"
        rna = _dedupe_rows(read_table(rna_p, index_col=0), rna_p)
        meta = read_table(meta_p)
        if "case_id" not in meta.columns:
            raise CohortError("no 'case_id' column", path=str(meta_p))
        meta = meta.drop_duplicates("case_id").set_index("case_id")  # slide rows -> one per patient
        common = rna.index.intersection(meta.index)
        if len(common) == 0:
            raise CohortError(f"no patient is in both {rna_p.name} and {meta_p.name}", path=str(rna_p))
        frames.append(rna.loc[common])
        m = meta.loc[common]
        if label == "cohort":
            labels.append(pd.Series(c.upper(), index=common))
        elif label in m.columns:
            labels.append(m[label].astype(str))
        else:
            raise CohortError(f"no label column '{label}'", path=str(meta_p))
        metas.append(m.assign(cohort=c.upper()))
    genes = frames[0].columns
    for f in frames[1:]:
        genes = genes.intersection(f.columns)
    expr = pd.concat([f[genes] for f in frames])
    lab, meta_all = pd.concat(labels), pd.concat(metas)
    ambiguous = expr.index.duplicated(keep=False)  # a case id in two cohorts cannot be labelled: drop it
    expr, lab, meta_all = expr[~ambiguous], lab[~ambiguous], meta_all[~ambiguous]
    expr.index.name = "patient_id"
    return OmicsTable(expr.astype(np.float32), lab.rename("label"), meta_all)


def load_mcat(path: str | Path, *, kind: str = "rnaseq", label: str = "oncotree_code") -> OmicsTable:
    """Load an MCAT ``tcga_*_all_clean.csv.zip`` table: columns ``<GENE>_<kind>``, one row per patient."""
    path = Path(path)
    df = read_table(path)
    if "case_id" not in df.columns:
        raise CohortError("no 'case_id' column", path=str(path))
    df = df.drop_duplicates("case_id").set_index("case_id")
    cols = [c for c in df.columns if c.endswith(f"_{kind}")]
    if not cols:
        raise CohortError(f"no '*_{kind}' columns", path=str(path))
    expr = df[cols].rename(columns=lambda c: c[: -len(kind) - 1]).astype(np.float32)
    expr = expr.loc[:, ~expr.columns.duplicated()]
    if expr.isna().any().any():
        expr = expr.fillna(expr.median())
    expr.index.name = "patient_id"
    lab = df[label].astype(str) if label in df.columns else pd.Series("?", index=df.index)
    return OmicsTable(expr, lab.rename("label"), df.drop(columns=cols))


def read_signatures(path: str | Path) -> dict[str, list[str]]:
    """Signature CSV (one column per group, genes down the column, blanks allowed) -> group -> genes."""
    df = read_table(path)
    return {str(c): [str(g) for g in df[c].dropna().tolist()] for c in df.columns}


def signature_gene_order(genes: list[str], signatures: dict[str, list[str]], *,
                         keep_unassigned: bool = True) -> tuple[list[str], dict[str, list[str]]]:
    """Order genes group by group (first group wins for genes in several), then the rest.

    Returns (ordered genes, the groups actually used restricted to ``genes``). Feeding
    GroupMSA genes in this order makes its contiguous fragments follow signature groups.
    """
    present, seen = set(genes), set()
    order: list[str] = []
    used: dict[str, list[str]] = {}
    for name, members in signatures.items():
        g = [x for x in dict.fromkeys(members) if x in present and x not in seen]
        if g:
            used[name] = g
            order += g
            seen.update(g)
    if keep_unassigned:
        rest = [g for g in genes if g not in seen]
        if rest:
            used["unassigned"] = rest
            order += rest
    return order, used


def patient_split(labels: pd.Series, *, fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
                  seed: int = 0) -> pd.Series:
    """Stratified train/val/test split by patient (index = patient_id) -> Series of split names."""
    if abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"fractions must sum to 1, got {fractions}")
    rng = np.random.default_rng(seed)
    out = pd.Series("train", index=labels.index, name="split")
    patients = pd.Series(labels.groupby(level=0).first())
    for _, grp in patients.groupby(patients):
        ids = grp.index.to_numpy().copy()
        rng.shuffle(ids)
        n_val = int(round(fractions[1] * len(ids)))
        n_test = int(round(fractions[2] * len(ids)))
        out.loc[ids[:n_test]] = "test"
        out.loc[ids[n_test:n_test + n_val]] = "val"
    return out


class ExpressionScaler:
    """log-transform (optional) then per-gene standardisation, fitted on the train split only.

    log: ``"auto"`` applies log2(1 + x) only to non-negative data with max > 50 (raw
    counts/FPKM; Xena tables are already log2); ``True``/``False`` force it.
    """

    def __init__(self, *, log: bool | str = "auto", clip: float | None = 10.0) -> None:
        self.log, self.clip = log, clip
        self.mean_: np.ndarray | None = None
        self.std_: np.ndarray | None = None
        self.use_log_: bool = False

    def _log(self, x: np.ndarray) -> np.ndarray:
        return np.log2(1.0 + np.clip(x, 0, None)) if self.use_log_ else x

    def fit(self, x: np.ndarray) -> "ExpressionScaler":
        x = np.asarray(x, dtype=np.float64)
        self.use_log_ = bool(self.log) if self.log != "auto" else bool(x.min() >= 0 and x.max() > 50)
        lx = self._log(x)
        self.mean_ = lx.mean(0)
        std = lx.std(0)
        self.std_ = np.where(std > 1e-8, std, 1.0)  # constant genes stay 0 instead of NaN
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        if self.mean_ is None:
            raise RuntimeError("ExpressionScaler.transform before fit")
        z = (self._log(np.asarray(x, dtype=np.float64)) - self.mean_) / self.std_
        if self.clip is not None:
            z = np.clip(z, -self.clip, self.clip)
        return z.astype(np.float32)

    def fit_transform(self, x: np.ndarray) -> np.ndarray:
        return self.fit(x).transform(x)

    def state_dict(self) -> dict:
        return {"log": self.use_log_, "mean": self.mean_.tolist(), "std": self.std_.tolist(), "clip": self.clip}
