"""Issue 21, finding 7: zero-shot classification from the Python API and the CLI (`medalign classify`),
and `medalign evaluate RUN --manifest OTHER.csv` on a labelled cohort the run's cache does not hold."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medalign.cli import main
from medalign.data.schema import CLASSES

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "tiny" / "clip_tiny.yaml"


def _cohort(root: Path, seed: int) -> Path:
    """6 labelled studies (dwi + flair, 32x32x8) and their manifest; ids s00..s05 in every cohort."""
    import nibabel as nib

    rng = np.random.default_rng(seed)
    rows = []
    for i in range(6):
        sid, label = f"s{i:02d}", CLASSES[i % 5]
        (root / sid).mkdir(parents=True)
        vol = np.zeros((32, 32, 8), np.float32)  # (x, y, z)
        vol[6:26, 6:26, 1:7] = 1.0 + 0.1 * rng.standard_normal((20, 20, 6))
        vol[8 + 3 * (i % 5): 12 + 3 * (i % 5), 10:14, 3:5] += 2.0
        for s, v in (("dwi", vol), ("flair", vol * 0.5 + 0.2)):
            nib.save(nib.Nifti1Image(v, np.diag([2.0, 2.0, 4.0, 1.0])), str(root / sid / f"{s}.nii.gz"))
        rows.append({"study_id": sid, "patient_id": f"p{i}", "split": "train" if i < 4 else "test", "label": label,
                     "report": f"{label} finding.", "image_dwi": f"{sid}/dwi.nii.gz", "image_flair": f"{sid}/flair.nii.gz"})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root / "manifest.csv"


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    import os

    from medalign.data.cache import preprocess_cohort
    from medalign.data.imaging import PreprocessConfig

    os.environ.setdefault("MEDALIGN_CACHE", str(tmp_path_factory.getbasetemp() / "medalign_cache"))
    root = tmp_path_factory.mktemp("classify")
    m = _cohort(root / "a", 0)
    preprocess_cohort(m, PreprocessConfig(sequences=("dwi", "flair"), shape=(8, 32, 32), register=False),
                      root / "cache", workers=1, progress=False)
    rd = root / "run"
    assert main(["train", str(TINY), f"data.manifest={m}", f"data.cache_dir={root / 'cache'}", "data.kind=cohort",
                 "train.epochs=1", "train.batch_size=2", "--run-dir", str(rd)]) == 0
    return {"run": rd, "root": root, "manifest": m}


def test_model_classify_matches_the_evaluation_prompt_set(run) -> None:
    import medalign
    from medalign.eval.zeroshot import PROMPTS_FILE, embed_prompts, load_prompts, scores_from_prompt_bank

    m = medalign.load(run["run"])
    res = m.classify(["s00", "s03"])
    assert [r["study"] for r in res] == ["s00", "s03"]
    bank = embed_prompts(load_prompts(None), m.encode_text)
    z = m.logit_scale() * scores_from_prompt_bank(m.encode_image(["s00", "s03"]), bank, pool="ensemble")  # (2, C)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    for i, r in enumerate(res):
        assert list(r["probabilities"]) == list(CLASSES) and r["prompt_set"] == str(PROMPTS_FILE)
        assert np.allclose([r["probabilities"][c] for c in CLASSES], p[i], atol=1e-6)
        assert abs(sum(r["probabilities"].values()) - 1) < 1e-6 and r["label"] == CLASSES[int(p[i].argmax())]


def test_classify_cli(run, tmp_path, capsys) -> None:
    out = tmp_path / "zs.json"
    raw = str(run["root"] / "a" / "s01" / "flair.nii.gz")
    assert main(["classify", str(run["run"]), "s00", "--images", f"flair={raw}", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("s00: ") and "flair=flair.nii.gz: " in text and "prompt set" in text
    assert len(json.loads(out.read_text())) == 2
    assert main(["classify", str(run["run"])]) == 2


def test_evaluate_another_labelled_cohort(run, tmp_path, capsys) -> None:
    """Same study ids, other files: the run's cache must not be used for them, and the run's eval/ stays."""
    other = _cohort(tmp_path / "other", 1)
    assert main(["evaluate", str(run["run"]), "--manifest", str(other), "--n-boot", "10"]) == 0
    text = capsys.readouterr().out
    res = run["run"] / "eval_external" / "manifest"
    m = json.loads((res / "metrics.json").read_text())
    assert m["n_test"] == 2 and m["scored"] == "split 'test'" and m["manifest"] == str(other)
    assert (res / "cache" / "index.json").is_file() and not (run["run"] / "eval" / "metrics.json").exists()
    assert "majority-class accuracy" in text and m["majority_baseline"] == 0.5
