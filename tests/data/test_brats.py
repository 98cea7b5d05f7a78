"""Real data: BraTS 2015 cases (FLAIR + T1c, 240x240x155) through manifest -> preprocess -> cache."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medalign.data.cache import CohortCache, preprocess_cohort
from medalign.data.imaging import PreprocessConfig

SHARED = Path(os.environ.get("MEDALIGN_SHARED_DATA", Path(__file__).resolve().parents[2] / ".." / "shared" / "data"))
BRATS = SHARED / "brats2015"
pytestmark = pytest.mark.skipif(not BRATS.is_dir(), reason=f"real BraTS data not found at {BRATS}")


def _manifest(tmp_path: Path, n: int = 2) -> Path:
    cases = sorted(p for p in BRATS.glob("*/*") if (p / "Flair_subtrMeanDivStd.nii.gz").is_file())[:n]
    assert cases, "no BraTS cases"
    rows = [{"study_id": c.name, "patient_id": c.name, "label": "tumor", "report": "Intra-axial mass.",
             "image_flair": str(c / "Flair_subtrMeanDivStd.nii.gz"), "image_t1c": str(c / "T1c_subtrMeanDivStd.nii.gz"),
             "mask": str(c / "OTMultiClass.nii.gz")} for c in cases]
    p = tmp_path / "brats.csv"
    pd.DataFrame(rows).to_csv(p, index=False)
    return p


def test_brats_paper_sequences_missing_channels(tmp_path):
    m = _manifest(tmp_path)
    cfg = PreprocessConfig(sequences=("dwi", "t2s", "flair"))
    s = preprocess_cohort(m, cfg, tmp_path / "c", workers=1, progress=False)
    assert s["failed"] == 0
    c = CohortCache(tmp_path / "c")
    for sid in c.study_ids():
        a = c.load(sid)
        assert a["image"].shape == (3, 16, 112, 112)
        assert a["sequence_mask"].tolist() == [False, False, True]
        assert not np.asarray(a["image"][:2]).any() and np.asarray(a["image"][2]).max() > 0.9
        mask = np.asarray(a["mask"])
        assert (mask > 0).sum() > 100  # tumour labels carried onto the grid
        # The tumour is brighter than the rest of the brain on FLAIR (oedema).
        flair = np.asarray(a["image"][2])
        brain = (flair > 0) & (mask == 0)
        assert flair[mask > 0].mean() > flair[brain].mean()


def test_brats_flair_t1c_both_present(tmp_path):
    m = _manifest(tmp_path, n=1)
    cfg = PreprocessConfig(sequences=("flair", "t1c"), reference="flair")
    preprocess_cohort(m, cfg, tmp_path / "c", workers=1, progress=False)
    c = CohortCache(tmp_path / "c")
    e = c.entry(c.study_ids()[0])
    a = c.load(c.study_ids()[0])
    assert a["sequence_mask"].tolist() == [True, True]
    reg = e["info"]["per_sequence"]["t1c"]["registration"]
    # Already co-registered data: registration must not move it much.
    assert np.linalg.norm(reg["translation_mm"]) < 3.0 and max(map(abs, reg["rotation_deg"])) < 3.0
    d, h, w = e["info"]["spacing_dhw_mm"]
    assert h == w and 1.0 < h < 2.5 and d > 5  # head fitted into 112 x 112, 16 slices
