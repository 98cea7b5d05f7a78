"""benchmarks/partial_protocol.py: a share of each class's training studies keeps FLAIR alone, nothing else
changes, the same seed gives the same studies, and preprocessing reads the reduced studies as FLAIR-only."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("nibabel")

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from tiny_runs import load_benchmark  # noqa: E402
from tiny_volumes import write_lesion_study  # noqa: E402

bench = load_benchmark("partial_protocol")
CLASSES = ["tumor", "hemorrhage", "infarct", "others", "normal"]


def _cohort(root: Path, per_class: int = 4) -> Path:
    """dwi + flair studies: ``per_class`` training studies per class and one test study per class."""
    rng = np.random.default_rng(0)
    rows = []
    for c in CLASSES:
        for k in range(per_class + 1):
            sid = f"{c[:3]}{k}"
            write_lesion_study(root, sid, c, "x", rng)
            rows.append({"study_id": sid, "patient_id": f"P{sid}", "split": "train" if k < per_class else "test",
                         "label": c, "report": f"report {sid}", "image_dwi": f"{sid}/dwi.nii.gz",
                         "image_flair": f"{sid}/flair.nii.gz", "mask": f"{sid}/lesion_mask.nii.gz"})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root / "manifest.csv"


def test_reduces_the_same_share_of_each_class_and_nothing_else(tmp_path):
    from medalign.data.manifest import load_manifest

    df = load_manifest(_cohort(tmp_path))
    out, ids = bench.reduce_protocol(df, share=0.5, keep=["flair"], splits=["train"], seed=3)
    reduced = out["study_id"].isin(ids)
    assert (out.loc[reduced, "split"] == "train").all()
    assert out.loc[reduced, "label"].value_counts().to_dict() == {c: 2 for c in CLASSES}  # round(0.5 x 4) per class
    assert (out.loc[reduced, "image_dwi"] == "").all() and (out.loc[reduced, "image_flair"] != "").all()
    pd.testing.assert_frame_equal(out[~reduced], df[~reduced])  # every other study exactly as it was
    for col in ("report", "mask", "label", "image_flair"):  # reduced studies keep the rest of their row
        assert out.loc[reduced, col].tolist() == df.loc[reduced, col].tolist()
    assert bench.reduce_protocol(df, share=0.5, keep=["flair"], splits=["train"], seed=3)[1] == ids
    assert bench.reduce_protocol(df, share=0.5, keep=["flair"], splits=["train"], seed=4)[1] != ids
    assert bench.reduce_protocol(df, share=0.0, keep=["flair"], splits=["train"], seed=3)[1] == []
    assert len(bench.reduce_protocol(df, share=1.0, keep=["flair"], splits=["train"], seed=3)[1]) == 20
    unlabelled = bench.reduce_protocol(df.drop(columns=["label"]), share=0.5, keep=["flair"], splits=["train"], seed=3)[1]
    assert len(unlabelled) == 10  # without labels the share is taken over the whole split


def test_one_line_errors(tmp_path, capsys):
    from medalign.data.manifest import load_manifest
    from medalign.errors import MedAlignError

    manifest = _cohort(tmp_path)
    df = load_manifest(manifest)
    with pytest.raises(MedAlignError, match=r"--share must be in \[0, 1\]"):
        bench.reduce_protocol(df, share=1.5, keep=["flair"], splits=["train"], seed=0)
    with pytest.raises(MedAlignError, match="'t1' is not a series of this manifest"):
        bench.reduce_protocol(df, share=0.5, keep=["t1"], splits=["train"], seed=0)
    with pytest.raises(MedAlignError, match="--keep names no series"):
        bench.reduce_protocol(df, share=0.5, keep=[], splits=["train"], seed=0)
    with pytest.raises(MedAlignError, match="no studies in split"):
        bench.reduce_protocol(df, share=0.5, keep=["flair"], splits=["val"], seed=0)
    out = tmp_path / "reduced.csv"
    assert bench.main([str(manifest), str(out)]) == 0
    assert bench.main([str(manifest), str(out)]) == 2  # nothing finished is overwritten without the flag
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--overwrite" in err
    assert bench.main([str(manifest), str(out), "--overwrite", "--share", "0.25"]) == 0


def test_preprocessing_reads_the_reduced_studies_as_flair_alone(tmp_path):
    from medalign.cli import main
    from medalign.data.cache import CohortCache

    manifest = _cohort(tmp_path / "cohort")
    out = tmp_path / "reduced" / "manifest.csv"
    assert bench.main([str(manifest), str(out), "--share", "0.5", "--seed", "1"]) == 0
    df = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert Path(df["image_flair"][0]).is_absolute()  # the new manifest points at the cohort's files
    cache = tmp_path / "cache"
    assert main(["preprocess", str(out), "--cache", str(cache), "--workers", "1"]) == 0
    store = CohortCache(cache)
    seqs = list(store.config.sequences)
    present = {sid: [s for s, m in zip(seqs, store.load(sid)["sequence_mask"]) if m] for sid in df["study_id"]}
    reduced = set(df.loc[df["image_dwi"] == "", "study_id"])
    assert len(reduced) == 10
    assert all(present[s] == ["flair"] for s in reduced)  # FLAIR alone
    assert all(sorted(present[s]) == ["dwi", "flair"] for s in set(df["study_id"]) - reduced)
