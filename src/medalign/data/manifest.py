"""The cohort manifest: one row per study; validation, patient-grouped splits, leakage checks.

Columns (see DESIGN.md): ``study_id``, ``patient_id`` (required); ``split``, ``label``,
``report``, ``report_paraphrases`` (a JSON list of other wordings of the report, e.g.
``["Acute left MCA infarct.", "..."]``: training-only text views), ``mask``, ``omics``, ``bag``
(optional); ``image_<seq>`` for ``seq`` in ``schema.KNOWN_SEQUENCES`` (a path, empty =
missing). Other columns are kept untouched.
Relative paths are relative to the manifest file's folder. Errors name the row (1-based data
row, the header is not counted) and the column.
"""
from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from medalign.data.schema import (CLASSES, IMAGE_PREFIX, KNOWN_SEQUENCES, PARAPHRASES_COLUMN, REQUIRED_COLUMNS,
                                  SPLITS, SEQUENCE_ALIASES, canonical_sequence, image_column)
from medalign.errors import CohortError

PATH_COLUMNS_EXTRA = ("mask", "omics", "bag")
TEXT_COLUMNS = ("study_id", "patient_id", "split", "label", "report", PARAPHRASES_COLUMN)


def empty_cell(v: object) -> bool:
    """A manifest cell left empty: None, NaN, or blank text."""
    return v is None or (isinstance(v, float) and np.isnan(v)) or (isinstance(v, str) and v.strip() == "")


def parse_paraphrases(value: object, *, row: int | None = None, study_id: str | None = None) -> list[str]:
    """A ``report_paraphrases`` cell -> its texts; empty cell -> []. Anything but a JSON list of
    strings is a :class:`CohortError` naming the row (1-based data row) and the column."""
    if empty_cell(value):
        return []
    try:
        texts = json.loads(str(value))
    except ValueError as e:
        raise CohortError(f"not a JSON list of texts ({e}); write e.g. "
                          '["Acute left MCA infarct.", "Left MCA territory infarct."]',
                          study_id=study_id, row=row, column=PARAPHRASES_COLUMN) from None
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise CohortError(f"expected a JSON list of texts, got {type(texts).__name__}"
                          + (" with a non-text item" if isinstance(texts, list) else ""),
                          study_id=study_id, row=row, column=PARAPHRASES_COLUMN)
    return [t for t in texts if t.strip()]


def manifest_sequences(df: pd.DataFrame) -> list[str]:
    """Sequences with an ``image_<seq>`` column, in ``KNOWN_SEQUENCES`` order."""
    return [s for s in KNOWN_SEQUENCES if image_column(s) in df.columns]


def path_columns(df: pd.DataFrame) -> list[str]:
    return [image_column(s) for s in manifest_sequences(df)] + [c for c in PATH_COLUMNS_EXTRA if c in df.columns]


def study_ground_truths(df: pd.DataFrame, base: str | Path | None = None) -> list[dict | None]:
    """Per row, the ``ground_truth.json`` a synthetic brain cohort writes in each study's folder
    (found beside any of the row's images or mask; relative paths against ``base``), or None where
    there is none. An unreadable one is a :class:`CohortError` naming the study and the file."""
    cols = [c for c in path_columns(df) if c not in ("omics", "bag")]  # an omics cohort's truth is per cohort
    root = Path(base) if base is not None else Path.cwd()
    out: list[dict | None] = []
    for _, row in df.iterrows():
        files = [Path(_absolute(str(row[c]), root)) for c in cols if not empty_cell(row[c])]
        gt = next((f.parent / "ground_truth.json" for f in files if (f.parent / "ground_truth.json").is_file()), None)
        try:
            out.append(json.loads(gt.read_text(encoding="utf-8")) if gt is not None else None)
        except (OSError, ValueError) as e:
            raise CohortError(f"study {row['study_id']}: cannot read {gt} ({type(e).__name__})") from None
    return out


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV or Parquet manifest as strings (empty cells -> ""), without validation."""
    path = Path(path)
    if not path.is_file():
        raise CohortError("manifest not found", path=str(path))
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            df = pd.read_parquet(path)
        else:
            try:
                path.read_bytes().decode("utf-8")
                bad_utf8 = False
            except UnicodeDecodeError:
                bad_utf8 = True
            # Undecodable bytes become U+FFFD; validation then names the row and column.
            df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8", encoding_errors="replace")
            df.attrs["non_utf8"] = bad_utf8
    except pd.errors.ParserError as e:
        raise CohortError(f"malformed table ({str(e).strip()})", path=str(path)) from None
    except pd.errors.EmptyDataError:
        raise CohortError("manifest is empty", path=str(path)) from None
    except (OSError, ValueError) as e:
        raise CohortError(f"cannot read manifest ({e})", path=str(path)) from None
    df.columns = [str(c).strip() for c in df.columns]
    for c in df.columns:
        if df[c].dtype == object or c in TEXT_COLUMNS or c in path_columns(df):
            df[c] = df[c].map(_cell_to_str)
    df.attrs["manifest_path"] = str(path.resolve())
    return df


def _cell_to_str(v: object) -> object:
    if empty_cell(v):
        return ""
    if isinstance(v, bytes):
        return v.decode("utf-8", errors="surrogateescape")
    if isinstance(v, str):
        return v
    return str(v)


def load_manifest(path: str | Path, *, check_files: bool = True, absolute_paths: bool = True) -> pd.DataFrame:
    """Read and validate a manifest (CSV or Parquet); paths made absolute unless told not to."""
    df = canonical_image_columns(read_table(path))
    base = Path(path).resolve().parent
    resolved = resolve_paths(df, base)
    validate_manifest(resolved, check_files=check_files)
    out = resolved if absolute_paths else df
    out.attrs["manifest_path"] = str(Path(path).resolve())
    return out


def canonical_image_columns(df: pd.DataFrame) -> pd.DataFrame:
    """``image_swi`` -> ``image_t2s``, ``image_T1ce`` -> ``image_t1c`` (:data:`SEQUENCE_ALIASES`);
    two columns naming one sequence are an error naming both. Unknown names are left for
    :func:`validate_manifest` to refuse."""
    rename: dict[str, str] = {}
    for c in df.columns:
        if isinstance(c, str) and c.lower().startswith(IMAGE_PREFIX):
            canon = canonical_sequence(c[len(IMAGE_PREFIX):])
            if canon is not None and image_column(canon) != c:
                rename[c] = image_column(canon)
    if not rename:
        return df
    targets = Counter([rename.get(c, c) for c in df.columns])
    dup = [c for c in df.columns if targets[rename.get(c, c)] > 1 and c in rename]
    if dup:
        both = sorted(c for c in df.columns if rename.get(c, c) == rename[dup[0]])
        raise CohortError(f"columns {both} name the same sequence '{rename[dup[0]][len(IMAGE_PREFIX):]}'", column=dup[0])
    return df.rename(columns=rename)


def resolve_paths(df: pd.DataFrame, base: str | Path) -> pd.DataFrame:
    """Copy of ``df`` with relative paths in path columns made absolute against ``base``."""
    out = df.copy()
    base = Path(base)
    for c in path_columns(out):
        out[c] = ["" if empty_cell(v) else _absolute(str(v), base) for v in out[c]]
    return out


def _absolute(v: str, base: Path) -> str:
    p = Path(v.strip()).expanduser()
    return str(p if p.is_absolute() else base / p)


def validate_manifest(df: pd.DataFrame, *, check_files: bool = True) -> None:
    """Raise :class:`CohortError` naming row and column at the first problem found."""
    cols = list(df.columns)
    for c in REQUIRED_COLUMNS:
        if c not in cols:
            raise CohortError(f"missing required column '{c}' (columns present: {', '.join(cols)})", column=c)
    dup_cols = [c for c, n in Counter(cols).items() if n > 1]
    if dup_cols:
        raise CohortError("column appears more than once", column=dup_cols[0])
    for c in cols:
        if c.startswith(IMAGE_PREFIX) and c[len(IMAGE_PREFIX):] not in KNOWN_SEQUENCES:
            raise CohortError(f"unknown sequence '{c[len(IMAGE_PREFIX):]}'; known: {', '.join(KNOWN_SEQUENCES)} "
                              f"(aliases: {', '.join(sorted(SEQUENCE_ALIASES))})",
                              column=c)
    img_cols = [image_column(s) for s in manifest_sequences(df)]
    if not img_cols:
        raise CohortError(f"no image column; expected some of {', '.join(image_column(s) for s in KNOWN_SEQUENCES)}")
    if len(df) == 0:
        raise CohortError("manifest has no rows")

    strict_failed = bool(df.attrs.get("non_utf8", False))
    seen: dict[str, int] = {}
    for i, row in enumerate(df.itertuples(index=False), start=1):
        r = dict(zip(cols, row))
        sid = r["study_id"]
        if empty_cell(sid):
            raise CohortError("empty study_id", row=i, column="study_id")
        sid = str(sid).strip()
        for c in cols:
            v = r[c]
            if isinstance(v, str) and _not_utf8(v, strict_failed):
                raise CohortError("text is not valid UTF-8", study_id=sid, row=i, column=c)
        if sid in seen:
            raise CohortError(f"duplicate study_id (also in row {seen[sid]})", study_id=sid, row=i, column="study_id")
        seen[sid] = i
        if empty_cell(r["patient_id"]):
            raise CohortError("empty patient_id", study_id=sid, row=i, column="patient_id")
        if "split" in cols and not empty_cell(r["split"]) and str(r["split"]).strip() not in SPLITS:
            raise CohortError(f"unknown split '{r['split']}'; allowed: {', '.join(SPLITS)}",
                              study_id=sid, row=i, column="split")
        if "label" in cols and not empty_cell(r["label"]) and str(r["label"]).strip() not in CLASSES:
            raise CohortError(f"unknown label '{r['label']}'; allowed: {', '.join(CLASSES)}",
                              study_id=sid, row=i, column="label")
        if "report" in cols and empty_cell(r["report"]):
            raise CohortError("empty report", study_id=sid, row=i, column="report")
        if PARAPHRASES_COLUMN in cols:
            parse_paraphrases(r[PARAPHRASES_COLUMN], row=i, study_id=sid)
        if all(empty_cell(r[c]) for c in img_cols):
            raise CohortError(f"no image path in any of {', '.join(img_cols)}", study_id=sid, row=i)
        if check_files:
            for c in path_columns(df):
                v = r[c]
                if not empty_cell(v) and not Path(str(v)).exists():
                    raise CohortError("file not found", study_id=sid, row=i, column=c, path=str(v))
    if "split" in cols:
        check_leakage(df)


def _not_utf8(s: str, file_failed: bool) -> bool:
    """Undecodable bytes: lone surrogates (surrogateescape) or, in a file that failed strict
    UTF-8 decoding, the U+FFFD replacement character."""
    return any("\udc80" <= ch <= "\udcff" for ch in s) or (file_failed and "\ufffd" in s)


def check_leakage(df: pd.DataFrame) -> None:
    """Refuse a patient whose studies sit in more than one split (error names patient and studies)."""
    if "split" not in df.columns:
        return
    splits: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for sid, pid, sp in zip(df["study_id"], df["patient_id"], df["split"]):
        if not empty_cell(sp):
            splits[str(pid)][str(sp)].append(str(sid))
    for pid, by in splits.items():
        if len(by) > 1:
            where = "; ".join(f"{sp}: {', '.join(ids)}" for sp, ids in sorted(by.items()))
            raise CohortError(f"patient leakage: patient {pid} is in {len(by)} splits ({where})", column="split")


def make_splits(df: pd.DataFrame, *, counts: Mapping[str, int] | Sequence[int] | None = None,
                fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0,
                stratify: str | None = "label") -> pd.DataFrame:
    """Copy of ``df`` with a ``split`` column: patient-grouped, stratified, deterministic by seed.

    Targets are study counts per split (``counts``, summing to the number of studies, e.g. the
    paper's 211/24/27) or ``fractions``. Each class (a patient's majority label when
    ``stratify`` is a column) gets its share of every split (controlled rounding, so the totals
    are exact when every patient has one study); patients, shuffled by ``seed`` and largest
    first, go to a split whose total target they still fit, preferring the largest remaining
    deficit of their class.
    """
    n = len(df)
    if counts is not None:
        vals = [int(counts[s]) for s in SPLITS] if isinstance(counts, Mapping) else [int(c) for c in counts]
        if len(vals) != 3 or min(vals) < 0 or sum(vals) != n:
            raise CohortError(f"split counts {vals} must be 3 non-negative numbers summing to the {n} studies")
        target = np.asarray(vals, float)
    else:
        fr = np.asarray([float(f) for f in fractions], float)
        if len(fr) != 3 or (fr < 0).any() or fr.sum() <= 0:
            raise CohortError(f"split fractions {list(fractions)} must be 3 non-negative numbers")
        target = fr / fr.sum() * n
    rng = np.random.default_rng(seed)
    strat = (df[stratify].map(lambda v: "" if empty_cell(v) else str(v)) if stratify and stratify in df.columns
             else pd.Series([""] * n, index=df.index))
    patients: dict[str, list[int]] = defaultdict(list)
    for pos, pid in enumerate(df["patient_id"].astype(str)):
        patients[pid].append(pos)
    pclass = {p: Counter(strat.iloc[idx]).most_common(1)[0][0] for p, idx in patients.items()}
    classes = sorted(set(pclass.values()))
    size_c = np.asarray([sum(len(patients[p]) for p in patients if pclass[p] == c) for c in classes], float)

    # Integer targets T[c, s]: rows sum to class sizes, columns to the split targets.
    col = round_preserving(target)
    prop = np.outer(size_c, col) / max(n, 1)
    T = np.floor(prop).astype(int)
    rem = prop - T
    row_def = size_c.astype(int) - T.sum(1)
    col_def = col - T.sum(0)
    for ci, si in sorted(np.ndindex(*T.shape), key=lambda cs: -rem[cs]):
        if row_def[ci] > 0 and col_def[si] > 0:
            T[ci, si] += 1
            row_def[ci] -= 1
            col_def[si] -= 1
    for ci in range(len(classes)):
        for si in range(3):
            k = min(row_def[ci], col_def[si])
            if k > 0:
                T[ci, si] += k
                row_def[ci] -= k
                col_def[si] -= k

    # Patients largest first (shuffled among equal sizes); each goes to a split where it still
    # fits the total target, preferring the largest deficit of its class, then of the total.
    cidx = {c: i for i, c in enumerate(classes)}
    order = list(patients)
    rng.shuffle(order)
    order.sort(key=lambda p: -len(patients[p]))
    split_of = np.empty(n, dtype=object)
    got = np.zeros_like(T)
    total = np.zeros(3, int)
    for p in order:
        k, ci = len(patients[p]), cidx[pclass[p]]
        cdef, gdef = T[ci] - got[ci], col - total
        fits = [s for s in range(3) if gdef[s] >= k]
        if fits:
            si = max(fits, key=lambda s: (cdef[s], gdef[s], -s))
        else:
            si = max(range(3), key=lambda s: (gdef[s], cdef[s], -s))
        got[ci, si] += k
        total[si] += k
        split_of[patients[p]] = SPLITS[si]
    out = df.copy()
    out["split"] = list(split_of)
    return out


def round_preserving(x: np.ndarray) -> np.ndarray:
    """Round to ints keeping the total (largest remainder)."""
    total = int(round(float(x.sum())))
    f = np.floor(x).astype(int)
    for i in np.argsort(-(x - f))[: total - f.sum()]:
        f[i] += 1
    return f


def save_manifest(df: pd.DataFrame, path: str | Path) -> Path:
    """Write CSV or Parquet (by suffix) atomically."""
    from medalign.utils import atomic_path

    path = Path(path)
    parquet = path.suffix.lower() in (".parquet", ".pq")
    with atomic_path(path, suffix=path.suffix) as tmp:
        if parquet:
            df.to_parquet(tmp, index=False)
        else:
            df.to_csv(tmp, index=False)
    return path


def split_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Studies per (split, label) as a small table (for printing)."""
    lab = df["label"] if "label" in df.columns else pd.Series([""] * len(df), index=df.index)
    return pd.crosstab(df.get("split", pd.Series([""] * len(df), index=df.index)), lab, margins=True)
