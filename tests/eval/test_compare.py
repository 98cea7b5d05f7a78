"""Issue 21, finding 7: `medalign compare RUN_A RUN_B` gives A, B and A - B with a paired bootstrap CI."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medalign.cli import main
from medalign.errors import MedAlignError
from medalign.eval.compare import compare_runs
from medalign.eval.evaluate import save_embeddings

CLASSES = ["infarct", "tumor", "hemorrhage", "normal", "others"]


def _run(root: Path, good: bool, n: int = 40) -> Path:
    """An evaluated run: images = one-hot class directions (+ noise); reports match them (good) or not."""
    rng = np.random.default_rng(0 if good else 1)
    y = np.arange(n) % 5
    img = np.eye(8)[y] + 0.05 * rng.standard_normal((n, 8))  # (n, 8)
    img[:, 5:] = rng.standard_normal((n, 3))  # study-specific part, so each report matches one image
    txt = img + 0.01 * rng.standard_normal((n, 8)) if good else rng.standard_normal((n, 8))
    if not good:
        img[:, :5] = np.eye(5)[(y + 1) % 5]  # zero-shot always wrong
    (root / "eval").mkdir(parents=True)
    save_embeddings(root / "eval" / "embeddings_test.npz", {
        "study_id": np.asarray([f"s{i:03d}" for i in range(n)]), "label": np.asarray([CLASSES[c] for c in y]),
        "image_embed": img.astype(np.float32), "text_embed": txt.astype(np.float32)})
    bank = {"classes": np.asarray(CLASSES), "texts": np.asarray(CLASSES), "class_index": np.arange(5),
            "kind": np.asarray(["presence"] * 5), "embed": np.eye(8)[:5].astype(np.float32)}
    save_embeddings(root / "eval" / "prompts.npz", bank)
    (root / "eval" / "metrics.json").write_text(json.dumps({"zero_shot": {"pool": "mean", "absence": "ignore"}}))
    return root


def test_paired_difference_with_known_values(tmp_path: Path) -> None:
    a, b = _run(tmp_path / "a", True), _run(tmp_path / "b", False)
    res = compare_runs(a, b, n_boot=200)
    zs, hit = res["metrics"]["zs_correct"], res["metrics"]["hit"]
    assert res["n"] == 40 and zs["a"]["value"] == 1.0 and zs["b"]["value"] == 0.0 and zs["diff"]["value"] == 1.0
    assert hit["a"]["value"] == 1.0 and hit["diff"]["lo"] > 0  # A retrieves every report's image in the top 5
    same = compare_runs(a, a, n_boot=50)
    assert all(m["diff"]["value"] == 0 and m["diff"]["lo"] == 0 == m["diff"]["hi"] for m in same["metrics"].values())


def test_compare_cli_and_unevaluated_run(tmp_path: Path, capsys) -> None:
    a, b = _run(tmp_path / "a", True), _run(tmp_path / "b", False)
    assert main(["compare", str(a), str(b), "--n-boot", "50", "--out", str(tmp_path / "c.json")]) == 0
    assert "zero-shot accuracy" in capsys.readouterr().out and (tmp_path / "c.json").is_file()
    with pytest.raises(MedAlignError, match="run `medalign evaluate"):
        compare_runs(a, tmp_path / "nothing")
