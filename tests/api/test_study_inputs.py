"""A study-level (attention fusion) model end to end: trained on a tiny 3-sequence NIfTI cohort, it
embeds any subset of its sequences, skips sequences it has no embedding for (one warning), reads
aliases, and refuses duplicates, empty studies and ambiguous 4D files with a clear message."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medalign.cli import main
from medalign.data.schema import CLASSES

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny_volumes import head_with_lesion, write_nifti  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "tiny" / "clip_tiny.yaml"
SEQS = ("dwi", "flair", "t1")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> dict:
    """6 studies, dwi + flair + t1 (32x32x8), one of them without t1; preprocessed without registration."""
    from medalign.data.cache import preprocess_cohort
    from medalign.data.imaging import PreprocessConfig

    root = tmp_path_factory.mktemp("study_cohort")
    rng = np.random.default_rng(1)
    rows = []
    for i in range(6):
        sid, label = f"s{i:02d}", CLASSES[i % 5]
        (root / sid).mkdir()
        vol = head_with_lesion(i, rng)
        row = {"study_id": sid, "patient_id": f"p{i}", "split": "train" if i < 4 else "val", "label": label,
               "report": f"{label} study.", "image_dwi": write_nifti(root / sid / "dwi.nii.gz", vol),
               "image_flair": write_nifti(root / sid / "flair.nii.gz", vol * 0.5 + 0.2)}
        row["image_t1"] = "" if i == 5 else write_nifti(root / sid / "t1.nii.gz", 1.5 - vol * 0.3)
        rows.append(row)
    manifest = root / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    cache = root / "cache"
    preprocess_cohort(manifest, PreprocessConfig(sequences=SEQS, shape=(8, 32, 32), register=False), cache,
                      workers=1, progress=False)
    return {"root": root, "manifest": manifest, "cache": cache}


@pytest.fixture(scope="module")
def model(cohort, tmp_path_factory):
    import medalign

    rd = tmp_path_factory.mktemp("study_run") / "r"
    rc = main(["train", str(TINY), f"data.manifest={cohort['manifest']}", f"data.cache_dir={cohort['cache']}",
               "data.kind=cohort", "data.sequences=[dwi,flair,t1]", "recipe.image_encoder.fusion=attention",
               "train.epochs=1", "train.batch_size=2", "--run-dir", str(rd)])
    assert rc == 0
    return medalign.load(rd)


def test_any_subset_embeds(model, cohort) -> None:
    from medalign.models.fusion import SeriesFusionEncoder

    assert isinstance(model.recipe.image_encoder, SeriesFusionEncoder)
    d = cohort["root"] / "s00"
    full = model.encode_image({s: str(d / f"{s}.nii.gz") for s in SEQS})
    embs = [model.encode_image({s: str(d / f"{s}.nii.gz")}) for s in SEQS]
    for e in [full, *embs]:
        assert e.shape == (1, 16) and np.isfinite(e).all() and abs(np.linalg.norm(e) - 1) < 1e-4
    # each single series gives its own embedding, and none of them is the full study's
    assert not np.allclose(embs[0], embs[1], atol=1e-4) and not np.allclose(full, embs[0], atol=1e-4)
    # the cached study without t1 embeds as well
    assert np.isfinite(model.encode_image("s05")).all()


def test_unknown_sequence_is_skipped_with_one_warning(model, cohort, caplog) -> None:
    d = cohort["root"] / "s01"
    base = model.encode_image({"dwi": str(d / "dwi.nii.gz")})
    with caplog.at_level(logging.WARNING, logger="medalign.api"):
        got = model.encode_image({"dwi": str(d / "dwi.nii.gz"), "t2": str(d / "flair.nii.gz"), "bold": "x.nii"})
    warnings = [r for r in caplog.records if r.name == "medalign.api"]
    assert len(warnings) == 1 and "'bold'" in warnings[0].getMessage() and "'t2'" in warnings[0].getMessage()
    assert np.allclose(got, base, atol=1e-6)


def test_aliases_duplicates_and_empty_studies(model, cohort, tmp_path) -> None:
    from medalign.errors import CohortError

    d = cohort["root"] / "s02"
    assert np.allclose(model.encode_image({"T1": str(d / "t1.nii.gz")}), model.encode_image({"t1": str(d / "t1.nii.gz")}))
    with pytest.raises(CohortError, match="given twice"):
        model.encode_image({"dwi": str(d / "dwi.nii.gz"), "trace": str(d / "dwi.nii.gz")})
    with pytest.raises(CohortError, match="no usable sequence"):
        model.encode_image({"swi": str(d / "t1.nii.gz")})  # swi = t2s, which this model does not read
    # a 2-volume DWI file (b0 + b1000) is ambiguous: refused, naming the file, unless volume_index picks one
    four_d = np.stack([np.ones((32, 32, 8)), np.ones((32, 32, 8)) * 2], axis=-1)
    with pytest.raises(CohortError, match="dwi4d"):
        model.encode_image({"dwi": write_nifti(tmp_path / "dwi4d.nii.gz", four_d)})


def test_manifest_aliases_and_duplicate_columns(cohort, tmp_path) -> None:
    from medalign.data.manifest import load_manifest
    from medalign.errors import CohortError

    df = pd.read_csv(cohort["manifest"]).rename(columns={"image_t1": "image_T1", "image_dwi": "image_trace"})
    p = tmp_path / "m.csv"
    df.to_csv(p, index=False)
    got = load_manifest(p, check_files=False)
    assert {"image_dwi", "image_t1"} <= set(got.columns) and "image_trace" not in got.columns
    df["image_b1000"] = df["image_trace"]
    df.to_csv(p, index=False)
    with pytest.raises(CohortError, match=r"name the same sequence 'dwi'"):
        load_manifest(p, check_files=False)


def test_series_on_another_grid_and_orientation(model, cohort, tmp_path) -> None:
    """Each series is resampled on its own to the common grid: a t1 stored in another orientation
    (x and y reversed: LPS instead of the others' RAS) embeds like the same t1 stored as the others."""
    import nibabel as nib

    d = cohort["root"] / "s03"
    t1 = nib.load(str(d / "t1.nii.gz"))
    arr = np.asarray(t1.dataobj, dtype=np.float32)  # (x, y, z) on 2 x 2 x 4 mm
    # flip x and y (LPS instead of RAS storage) and keep the world position of every voxel
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:3, 3] = [arr.shape[0] - 1, arr.shape[1] - 1, 0.0]  # voxel units, before the affine
    other = tmp_path / "t1_lps.nii.gz"
    nib.save(nib.Nifti1Image(arr[::-1, ::-1].copy(), t1.affine @ flip), str(other))
    base = {s: str(d / f"{s}.nii.gz") for s in ("dwi", "flair")}
    a = model.encode_image({**base, "t1": str(d / "t1.nii.gz")})
    b = model.encode_image({**base, "t1": str(other)})
    assert np.isfinite(b).all() and float((a @ b.T)[0, 0]) > 0.99
