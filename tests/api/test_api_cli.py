"""End to end on a tiny cohort of NIfTI files: preprocess -> `medalign train` -> medalign.load ->
`medalign embed` -> `medalign search` (text, study, raw FLAIR-only NIfTI)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from medalign.cli import main
from medalign.data.schema import CLASSES

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny_volumes import head_with_lesion, write_nifti  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "tiny" / "clip_tiny.yaml"
SHAPE = (8, 32, 32)
REPORTS = {
    "infarct": "Acute infarct with restricted diffusion.",
    "tumor": "Enhancing tumor with oedema.",
    "hemorrhage": "Acute hemorrhage with blooming.",
    "normal": "Normal study.",
    "others": "Nonspecific white matter changes.",
}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> dict:
    """8 studies (2 sequences, 32x32x8 voxels) + manifest + preprocessed cache."""
    from medalign.data.cache import preprocess_cohort
    from medalign.data.imaging import PreprocessConfig

    root = tmp_path_factory.mktemp("cohort")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(8):
        label = CLASSES[i % 5]
        sid = f"s{i:02d}"
        (root / sid).mkdir()
        vol = head_with_lesion(i, rng)
        write_nifti(root / sid / "dwi.nii.gz", vol)
        write_nifti(root / sid / "flair.nii.gz", vol * 0.5 + 0.2)
        rows.append({"study_id": sid, "patient_id": f"p{i:02d}", "split": "train" if i < 6 else "val",
                     "label": label, "report": REPORTS[label], "image_dwi": f"{sid}/dwi.nii.gz",
                     "image_flair": f"{sid}/flair.nii.gz"})
    manifest = root / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    cache = root / "cache"
    pcfg = PreprocessConfig(sequences=("dwi", "flair"), shape=SHAPE, register=False)
    preprocess_cohort(manifest, pcfg, cache, workers=1, progress=False)
    return {"root": root, "manifest": manifest, "cache": cache}


@pytest.fixture(scope="module")
def run(cohort, tmp_path_factory) -> Path:
    import os

    os.environ.setdefault("MEDALIGN_CACHE", str(tmp_path_factory.getbasetemp() / "medalign_cache"))
    rd = tmp_path_factory.mktemp("run") / "r"
    rc = main(["train", str(TINY), f"data.manifest={cohort['manifest']}", f"data.cache_dir={cohort['cache']}",
               "data.kind=cohort", "train.epochs=2", "train.batch_size=3", "--run-dir", str(rd)])
    assert rc == 0
    return rd


def test_train_run_dir(run: Path) -> None:
    assert (run / "checkpoints" / "best.safetensors").is_file()
    import json

    pp = json.loads((run / "preprocess.json").read_text())
    assert pp["sequences"] == ["dwi", "flair"] and pp["shape"] == list(SHAPE)


def test_api_load_and_encode(run: Path, cohort: dict) -> None:
    import medalign

    m = medalign.load(run)
    assert m.sequences == ("dwi", "flair") and len(m.model_id) == 16
    a = m.encode_image("s00")
    assert a.shape == (1, 16) and np.allclose(np.linalg.norm(a, axis=1), 1, atol=1e-5)
    t = m.encode_text(["Normal study.", "Acute infarct."])
    assert t.shape == (2, 16)
    assert m.similarity(t, a).shape == (2, 1)
    # a raw study given as NIfTI paths, FLAIR only: preprocessed on the fly, DWI channel masked
    flair_only = m.encode_image({"flair": str(cohort["root"] / "s01" / "flair.nii.gz")})
    assert flair_only.shape == (1, 16) and np.isfinite(flair_only).all()
    # tensor input (C, D, H, W) with an explicit sequence mask
    x = torch.randn(2, *SHAPE)
    assert m.encode_image(x, sequence_mask=[False, True]).shape == (1, 16)
    # same weights + config -> same id; untrained baseline differs
    assert medalign.load(run).model_id == m.model_id
    from medalign.api import build_untrained

    u = build_untrained(run)
    assert u.model_id != m.model_id and not np.allclose(u.encode_image("s00"), a)


def test_api_errors_name_the_study(run: Path) -> None:
    import medalign
    from medalign.errors import CohortError, MedAlignError

    m = medalign.load(run)
    with pytest.raises(CohortError, match="study nope"):
        m.encode_image("nope")
    with pytest.raises(CohortError, match="t1"):
        m.encode_image({"t1": "x.nii.gz"})
    with pytest.raises(MedAlignError, match="not a run directory"):
        medalign.load(run.parent / "missing")


def test_api_refuses_a_cache_with_other_normalisation(run: Path, tmp_path: Path) -> None:
    import json
    import shutil

    import medalign
    from medalign.errors import MedAlignError

    other = tmp_path / "run"
    shutil.copytree(run, other)
    pp = json.loads((other / "preprocess.json").read_text())
    assert pp["normalise"] == "zscore_unclipped"  # what the cache was built with
    (other / "preprocess.json").write_text(json.dumps({**pp, "normalise": "robust"}))  # a model trained on [0, 1] inputs
    with pytest.raises(MedAlignError, match="normalise=zscore_unclipped but the model expects robust"):
        medalign.load(other).encode_image("s00")


def test_embed_and_search_cli(run: Path, cohort: dict, capsys) -> None:
    from medalign.train.embed import load_embeddings

    assert main(["embed", str(run), "--split", "val"]) == 0
    emb = load_embeddings(run / "embeddings" / "val.npz")
    assert list(emb["study_id"]) == ["s06", "s07"] and emb["image_embed"].shape == (2, 16)
    assert emb["text_embed"].shape == (2, 16) and list(emb["label_index"]) == [1, 2]
    assert main(["embed", str(run), "--manifest", str(cohort["manifest"])]) == 0
    capsys.readouterr()
    assert main(["search", str(run), "--text", "Acute infarct", "--k", "3"]) == 0
    out = capsys.readouterr().out
    assert "top 3 studies" in out and out.count("│ s0") == 3
    assert main(["search", str(run), "--study", "s00", "--k", "2"]) == 0
    out = capsys.readouterr().out
    assert "s00 " not in out.split("studies for")[1].split("\n", 1)[1]  # the query is not its own hit
    flair = cohort["root"] / "s02" / "flair.nii.gz"
    assert main(["search", str(run), "--images", f"flair={flair}", "--k", "2"]) == 0
    assert "flair=flair.nii.gz" in capsys.readouterr().out
    assert main(["search", str(run), "--text", "x", "--study", "s00"]) == 2  # exactly one query
