"""Every kind of bad input gives one clear error naming the study/row/column and the file."""
from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from medalign.cli import main
from medalign.data.cache import CohortCache, preprocess_cohort
from medalign.data.imaging import PreprocessConfig
from medalign.data.manifest import load_manifest
from medalign.data.volume_io import read_volume
from medalign.errors import CohortError


def _vol(shape=(12, 14, 8), seed=0) -> np.ndarray:
    idx = np.indices(shape).astype(float)
    d = sum(((idx[i] - (s - 1) / 2) / (s * 0.35)) ** 2 for i, s in enumerate(shape))
    rng = np.random.default_rng(seed)
    return (np.where(d <= 1, 100.0, 0.0) + rng.normal(0, 1, shape)).astype(np.float32)


def _nii(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, np.diag([2.0, 2.0, 3.0, 1.0])), str(path))
    return path


def _manifest(tmp_path: Path, n: int = 3, text: str | None = None) -> Path:
    rows = []
    for i in range(n):
        _nii(tmp_path / f"s{i}" / "flair.nii.gz", _vol(seed=i))
        rows.append({"study_id": f"s{i}", "patient_id": f"p{i}", "label": "normal", "report": f"Normal study {i}.",
                     "image_flair": f"s{i}/flair.nii.gz"})
    p = tmp_path / "manifest.csv"
    if text is None:
        pd.DataFrame(rows).to_csv(p, index=False)
    else:
        p.write_text(text)
    return p


def _err(fn, *a, **kw) -> str:
    with pytest.raises(CohortError) as e:
        fn(*a, **kw)
    msg = str(e.value)
    assert "\n" not in msg  # one line
    return msg


# ------------------------------------------------------------------------------- image files
def test_truncated_gz_names_study_and_file(tmp_path):
    p = _nii(tmp_path / "good.nii.gz", _vol())
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])
    msg = _err(read_volume, bad, study_id="s7")
    assert "study s7" in msg and str(bad) in msg


def test_corrupt_nifti_header(tmp_path):
    bad = tmp_path / "junk.nii.gz"
    bad.write_bytes(gzip.compress(b"not a nifti file at all" * 20))
    msg = _err(read_volume, bad, study_id="s8")
    assert "study s8" in msg and "junk.nii.gz" in msg


def test_nan_inf_voxels(tmp_path):
    a = _vol()
    a[3, 3, 3] = np.nan
    a[4, 4, 4] = np.inf
    msg = _err(read_volume, _nii(tmp_path / "nan.nii.gz", a), study_id="s1")
    assert "2 NaN/inf voxel(s)" in msg and "study s1" in msg and "nan.nii.gz" in msg


def test_2d_refused(tmp_path):
    msg = _err(read_volume, _nii(tmp_path / "flat.nii.gz", _vol()[:, :, :1]), study_id="s2")
    assert "2D image" in msg and "flat.nii.gz" in msg
    msg = _err(read_volume, _nii(tmp_path / "two.nii.gz", _vol()[:, :, 0]), study_id="s2")
    assert "2D image" in msg


def test_missing_file(tmp_path):
    msg = _err(read_volume, tmp_path / "nope.nii.gz", study_id="s3")
    assert "file not found" in msg and "study s3" in msg


# ----------------------------------------------------------------------------- manifest
def _rows(tmp_path, **changes):
    _nii(tmp_path / "a.nii.gz", _vol())
    base = {"study_id": ["s0", "s1"], "patient_id": ["p0", "p1"], "label": ["normal", "tumor"],
            "report": ["ok.", "mass."], "image_flair": ["a.nii.gz", "a.nii.gz"]}
    base.update(changes)
    p = tmp_path / "m.csv"
    pd.DataFrame({k: v for k, v in base.items() if v is not None}).to_csv(p, index=False)
    return p


@pytest.mark.parametrize("changes, expect", [
    ({"patient_id": None}, "missing required column 'patient_id'"),
    ({"image_flair": None, "image_foo": ["a.nii.gz", "a.nii.gz"]}, "column 'image_foo': unknown sequence 'foo'"),
    ({"study_id": ["s0", "s0"]}, "study s0, row 2, column 'study_id': duplicate study_id (also in row 1)"),
    ({"label": ["normal", "stroke"]}, "study s1, row 2, column 'label': unknown label 'stroke'"),
    ({"report": ["ok.", "  "]}, "study s1, row 2, column 'report': empty report"),
    ({"image_flair": ["a.nii.gz", "gone.nii.gz"]}, "study s1, row 2, column 'image_flair', file "),
    ({"split": ["train", "dev"]}, "column 'split': unknown split 'dev'"),
    ({"patient_id": ["p0", "p0"], "split": ["train", "test"]}, "patient leakage: patient p0"),
    ({"image_flair": ["a.nii.gz", ""]}, "study s1, row 2: no image path"),
])
def test_manifest_errors_name_row_and_column(tmp_path, changes, expect):
    msg = _err(load_manifest, _rows(tmp_path, **changes))
    assert expect in msg


def test_manifest_non_utf8_report(tmp_path):
    _nii(tmp_path / "a.nii.gz", _vol())
    p = tmp_path / "m.csv"
    p.write_bytes(b"study_id,patient_id,report,image_flair\n"
                  b"s0,p0,fine,a.nii.gz\n"
                  b"s1,p1,caf\xe9 latin-1,a.nii.gz\n")
    msg = _err(load_manifest, p)
    assert "study s1, row 2, column 'report': text is not valid UTF-8" in msg


def test_manifest_mismatched_columns(tmp_path):
    p = tmp_path / "m.csv"
    p.write_text("study_id,patient_id,image_flair\ns0,p0,a.nii.gz\ns1,p1,b.nii.gz,extra,fields\n")
    msg = _err(load_manifest, p)
    assert "malformed table" in msg and "m.csv" in msg


# ------------------------------------------------------------------------- cohort / cache
def test_keep_going_processes_others_and_leaves_nothing_half_written(tmp_path, capsys):
    m = _manifest(tmp_path, n=4)
    good = tmp_path / "s1" / "flair.nii.gz"
    good.write_bytes(good.read_bytes()[:200])  # truncate s1
    cfg = PreprocessConfig(sequences=("flair",), shape=(4, 8, 8), register=False)
    cache = tmp_path / "cache"
    msg = _err(preprocess_cohort, m, cfg, cache, workers=1, progress=False)
    assert "study s1" in msg and "s1/flair.nii.gz" in msg
    s = preprocess_cohort(m, cfg, cache, workers=1, keep_going=True, progress=False)
    assert s["failed"] == 1 and s["errors"][0]["study_id"] == "s1" and s["processed"] + s["cached"] == 3
    c = CohortCache(cache)
    assert c.study_ids() == ["s0", "s2", "s3"]
    files = sorted(f.name for f in (cache / "studies").iterdir())
    assert len(files) == 6 and not any(f.startswith(".") for f in files)  # 3 x (npy + json), no temp files
    # CLI: --keep-going prints a summary naming the failure and exits 1; without it, exit 2 + one line.
    assert main(["preprocess", str(m), "--cache", str(cache), "--keep-going", "--workers", "1", "--no-progress",
                 "--shape", "4,8,8", "--sequences", "flair", "--no-register"]) == 1
    err = capsys.readouterr().err
    assert "failed: study s1" in err
    assert main(["preprocess", str(m), "--cache", str(tmp_path / "c2"), "--workers", "1", "--no-progress",
                 "--shape", "4,8,8", "--sequences", "flair", "--no-register"]) == 2
    assert "study s1" in capsys.readouterr().err


def test_unknown_sequence_in_config():
    with pytest.raises(CohortError, match="unknown sequence"):
        PreprocessConfig(sequences=("flair", "pd"))


def test_bad_preprocess_config_yaml(tmp_path, capsys):
    m = _manifest(tmp_path, n=1)
    y = tmp_path / "p.yaml"
    y.write_text("preprocess:\n  shape: [4, 8, 8]\n  colour: blue\n")
    assert main(["preprocess", str(m), "--cache", str(tmp_path / "c"), "--config", str(y), "--no-progress"]) == 2
    assert "unknown key(s) ['preprocess.colour']" in capsys.readouterr().err
