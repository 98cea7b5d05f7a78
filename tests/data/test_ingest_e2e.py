"""A tiny DICOM export -> ingest -> split -> preprocess -> train -> embed -> search, and
``medalign.load(run).encode_image(<one DICOM study folder>)``."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from ingest_fakes import export

from medalign.cli import main
from medalign.data.ingest import ingest

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "tiny" / "clip_tiny.yaml"
REPORTS = ["Acute infarct with restricted diffusion.", "Enhancing tumor with oedema.", "Acute hemorrhage with blooming.",
           "Normal study.", "Nonspecific white matter changes."]


@pytest.mark.slow
def test_ingest_to_search(tmp_path, capsys) -> None:
    os.environ.setdefault("MEDALIGN_CACHE", str(tmp_path / "medalign_cache"))
    export(tmp_path / "dicom", 8, shape=(16, 14, 8))
    pd.DataFrame({"accession_number": [f"ACC{900000 + i}" for i in range(8)],
                  "report": [f"{REPORTS[i % 5]} Case {i}." for i in range(8)]}).to_csv(tmp_path / "reports.csv", index=False)
    s = ingest(tmp_path / "dicom", tmp_path / "cohort", reports=tmp_path / "reports.csv", workers=2)
    assert s["manifest_studies"] == 8 and not s["errors"]
    manifest = tmp_path / "cohort" / "manifest.csv"
    assert main(["split", str(manifest), "--counts", "6,2,0", "--stratify", ""]) == 0
    assert main(["preprocess", str(manifest), "--cache", str(tmp_path / "cache"), "--shape", "8,32,32",
                 "--sequences", "dwi,flair", "--no-register", "--workers", "1", "--no-progress"]) == 0
    run = tmp_path / "run"
    assert main(["train", str(TINY), f"data.manifest={manifest}", f"data.cache_dir={tmp_path / 'cache'}",
                 "data.kind=cohort", "train.epochs=2", "train.batch_size=3", "--run-dir", str(run)]) == 0
    assert main(["embed", str(run), "--manifest", str(manifest)]) == 0
    capsys.readouterr()
    assert main(["search", str(run), "--text", "Acute infarct", "--k", "3"]) == 0
    out = capsys.readouterr().out
    assert "top 3 studies" in out and out.count("│ S") == 3  # pseudonymised study ids

    import medalign

    m = medalign.load(run)
    study_folder = tmp_path / "dicom" / "DOE0000" / "ACC900000"  # the nested layout of study 0
    a = m.encode_image(study_folder)
    sid = pd.read_csv(manifest).set_index("report").loc[f"{REPORTS[0]} Case 0.", "study_id"]
    b = m.encode_image(sid)  # the same study through ingest + the cache
    assert a.shape == (1, 16) and np.isfinite(a).all()
    assert float(m.similarity(a, b)[0, 0]) > 0.99
