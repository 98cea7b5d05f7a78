"""`medalign train` on the command line (issue 21, finding 2): `--resume --run-dir RUN` works as the
README writes it (no config argument), and an override that would change a resumed run is refused."""
from __future__ import annotations

from pathlib import Path

import pytest

from medalign.cli import main

TINY = Path(__file__).resolve().parents[2] / "configs" / "tiny" / "clip_tiny.yaml"


@pytest.fixture(autouse=True)
def _text_cache(tmp_path_factory, monkeypatch) -> None:
    monkeypatch.setenv("MEDALIGN_CACHE", str(tmp_path_factory.getbasetemp() / "medalign_cache"))


def test_resume_without_config_and_changed_override(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    assert main(["train", str(TINY), "train.epochs=2", "train.stop_after_steps=2", "--run-dir", str(run)]) == 0
    assert "continue with --resume" in capsys.readouterr().out
    assert main(["train", "--resume", "--run-dir", str(run), "train.epochs=20"]) == 2
    assert "train.epochs=20 differs from the run's 2" in capsys.readouterr().err
    assert main(["train", "--resume", "--run-dir", str(run)]) == 0  # as the README writes it
    assert "done: 4 steps, 2 epochs" in capsys.readouterr().out
    assert main(["train", "--resume", "--run-dir", str(tmp_path / "none")]) == 2
    assert "no run to resume" in capsys.readouterr().err


def test_data_shape_must_match_the_cache(tmp_path: Path, capsys) -> None:
    """finding 2: data.shape 16x48x48 was silently ignored for a cache of another grid."""
    import nibabel as nib
    import numpy as np
    import pandas as pd

    from medalign.data.cache import preprocess_cohort
    from medalign.data.imaging import PreprocessConfig

    vol = np.zeros((16, 16, 8), np.float32)
    vol[3:13, 3:13, 1:7] = 1.0 + np.random.default_rng(0).random((10, 10, 6))
    nib.save(nib.Nifti1Image(vol, np.diag([2.0, 2.0, 4.0, 1.0])), str(tmp_path / "a.nii.gz"))
    pd.DataFrame([{"study_id": "s0", "patient_id": "p0", "split": "train", "image_flair": "a.nii.gz"}]).to_csv(
        tmp_path / "m.csv", index=False)
    preprocess_cohort(tmp_path / "m.csv", PreprocessConfig(sequences=("flair",), shape=(4, 16, 16), register=False),
                      tmp_path / "cache", workers=1, progress=False)
    rc = main(["train", str(TINY), "data.kind=cohort", f"data.manifest={tmp_path / 'm.csv'}",
               f"data.cache_dir={tmp_path / 'cache'}", "data.shape=[16,48,48]", "--run-dir", str(tmp_path / "r")])
    assert rc == 2 and "holds [4, 16, 16] volumes" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    # HLSS on patients with one study each: one line saying what the cohort needs, not a ValueError traceback
    hlss = TINY.parents[1] / "hlss_cpu.yaml"
    rc = main(["train", str(hlss), f"data.manifest={tmp_path / 'm.csv'}", f"data.cache_dir={tmp_path / 'cache'}",
               "data.sequences=[flair]", "data.shape=[4,16,16]", "recipe.n_slabs=1", "train.epochs=1",
               "--run-dir", str(tmp_path / "h")])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert rc == 2 and "Traceback" not in err and len(errors) == 1 and "--studies-per-patient" in errors[0]
