"""Cache (content hash, skip, resume, parallel), Dataset + collate, augmentation, inspect CLI."""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from medalign.cli import main
from medalign.data.augment import Augment, build_augment
from medalign.data.cache import CohortCache, preprocess_cohort
from medalign.data.datasets import CohortDataset, collate
from medalign.data.imaging import PreprocessConfig
from medalign.errors import CohortError

SHAPE = (4, 12, 12)


def _vol(shape=(14, 16, 8), seed=0, scale=100.0) -> np.ndarray:
    idx = np.indices(shape).astype(float)
    d = sum(((idx[i] - (s - 1) / 2) / (s * 0.35)) ** 2 for i, s in enumerate(shape))
    rng = np.random.default_rng(seed)
    v = np.where(d <= 1, scale, 0.0) + np.where(d <= 0.2, scale, 0.0) + rng.normal(0, 1, shape)
    return v.astype(np.float32)


def _nii(path: Path, arr: np.ndarray) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, np.diag([2.0, 2.0, 4.0, 1.0])), str(path))
    return str(path.relative_to(path.parents[1]))


def _cohort(root: Path, n: int = 6) -> Path:
    rows = []
    labels = ["infarct", "tumor", "hemorrhage", "normal", "others", ""]
    for i in range(n):
        sid = f"s{i}"
        rows.append({
            "study_id": sid, "patient_id": f"p{i // 2}", "split": "train" if i < 4 else "val",
            "label": labels[i % 6], "report": f"Finding number {i}. " * (i + 1),
            "image_dwi": _nii(root / sid / "dwi.nii.gz", _vol(seed=i, scale=50)),
            "image_t2s": "" if i % 2 else _nii(root / sid / "t2s.nii.gz", _vol(seed=10 + i)),
            "image_flair": _nii(root / sid / "flair.nii.gz", _vol(seed=20 + i)),
            "mask": _nii(root / sid / "mask.nii.gz", (_vol(seed=i) > 150).astype(np.uint8)) if i < 3 else "",
        })
    p = root / "manifest.csv"
    pd.DataFrame(rows).to_csv(p, index=False)
    return p


CFG = PreprocessConfig(sequences=("dwi", "t2s", "flair"), shape=SHAPE, register=False, reg_spacing=3.0)


def test_cache_roundtrip_skip_and_content_hash(tmp_path):
    m = _cohort(tmp_path)
    cache = tmp_path / "cache"
    s = preprocess_cohort(m, CFG, cache, workers=1, progress=False)
    assert (s["processed"], s["cached"], s["failed"]) == (6, 0, 0)
    index = json.loads((cache / "index.json").read_text(encoding="utf-8"))
    assert index["config"] == CFG.to_dict() and set(index["entries"]) == {f"s{i}" for i in range(6)}
    c = CohortCache(cache)
    a = c.load("s1")
    assert isinstance(a["image"], np.memmap) and a["image"].shape == (3, *SHAPE) and a["image"].dtype == np.float32
    assert a["sequence_mask"].tolist() == [True, False, True] and not np.asarray(a["image"][1]).any()
    assert a["mask"] is not None and a["mask"].dtype == np.uint8
    assert c.load("s4")["mask"] is None
    info = c.entry("s0")["info"]
    assert info["spacing_dhw_mm"] and "per_sequence" in info
    # Rerun: everything skipped.
    s = preprocess_cohort(m, CFG, cache, workers=1, progress=False)
    assert (s["processed"], s["cached"]) == (0, 6)
    # Same bytes rewritten (new mtime): pre-key misses, full hash matches -> still cached.
    f = tmp_path / "s2" / "flair.nii.gz"
    f.write_bytes(f.read_bytes())
    assert preprocess_cohort(m, CFG, cache, workers=1, progress=False)["cached"] == 6
    # Changed content -> new key -> that study alone is recomputed.
    key_before = c.entry("s2")["key"]
    _nii(f, _vol(seed=99))
    s = preprocess_cohort(m, CFG, cache, workers=1, progress=False)
    assert (s["processed"], s["cached"]) == (1, 5)
    assert CohortCache(cache).entry("s2")["key"] != key_before
    # A different config in the same cache directory is refused.
    with pytest.raises(CohortError, match="different preprocess config"):
        preprocess_cohort(m, PreprocessConfig(sequences=("flair",), shape=SHAPE), cache, workers=1, progress=False)


def test_cache_of_an_older_preprocessing_version_is_refused(tmp_path):
    """A cache written before the skull-stripped-edge fix (version 1) is neither read nor
    extended: its arrays differ from what this version computes, and mixing them is silent."""
    from medalign.data.cache import CACHE_VERSION

    m = _cohort(tmp_path, n=2)
    cache = tmp_path / "cache"
    preprocess_cohort(m, CFG, cache, workers=1, progress=False)
    index = json.loads((cache / "index.json").read_text())
    assert index["version"] == CACHE_VERSION == 2
    assert len(CohortCache(cache)) == 2
    index["version"] = 1
    (cache / "index.json").write_text(json.dumps(index))
    with pytest.raises(CohortError, match="preprocessing version 1, this medalign writes version 2"):
        CohortCache(cache)
    with pytest.raises(CohortError, match="new --cache directory"):
        preprocess_cohort(m, CFG, cache, workers=1, progress=False)
    assert json.loads((cache / "index.json").read_text())["version"] == 1  # nothing rewritten


def test_protocols_from_the_manifest_or_the_cache(tmp_path):
    """Each study's acquired sequences (what train.protocol_balance groups by), without loading images."""
    m = _cohort(tmp_path)
    cache = tmp_path / "cache"
    preprocess_cohort(m, CFG, cache, workers=1, progress=False)
    full, no_t2s = ("dwi", "t2s", "flair"), ("dwi", "flair")
    assert CohortDataset(m, cache, split="train").protocols == [full, no_t2s, full, no_t2s]
    # a manifest frame without image columns: read off the cached sequence masks instead
    bare = pd.read_csv(m, dtype=str, keep_default_na=False).drop(columns=["image_dwi", "image_t2s", "image_flair"])
    assert CohortDataset(bare, cache, split="train").protocols == [full, no_t2s, full, no_t2s]


def test_resume_after_interruption(tmp_path):
    """Arrays whose sidecar exists are reused even if index.json never got them (killed run)."""
    m = _cohort(tmp_path, n=4)
    cache = tmp_path / "cache"
    preprocess_cohort(m, CFG, cache, workers=1, progress=False)
    (cache / "index.json").unlink()
    s = preprocess_cohort(m, CFG, cache, workers=1, progress=False)
    assert (s["processed"], s["cached"]) == (0, 4)


def test_parallel_matches_serial(tmp_path):
    m = _cohort(tmp_path, n=4)
    preprocess_cohort(m, CFG, tmp_path / "c1", workers=1, progress=False)
    s = preprocess_cohort(m, CFG, tmp_path / "c2", workers=2, progress=True)
    assert s["processed"] == 4
    a, b = CohortCache(tmp_path / "c1"), CohortCache(tmp_path / "c2")
    for sid in a.study_ids():
        np.testing.assert_allclose(np.asarray(a.load(sid)["image"]), np.asarray(b.load(sid)["image"]), atol=1e-6)


def test_dataset_collate_and_augment(tmp_path):
    m = _cohort(tmp_path)
    cache = tmp_path / "cache"
    preprocess_cohort(m, CFG, cache, workers=1, progress=False)
    ds = CohortDataset(m, cache, split="train")
    assert len(ds) == 4
    x = ds[0]
    assert x["image"].dtype == torch.float32 and x["image"].shape == (3, *SHAPE)
    assert x["sequence_mask"].dtype == torch.bool and x["text"].startswith("Finding number 0")
    assert x["label"] == 0 and x["study_id"] == "s0" and x["patient_id"] == "p0"
    assert x["mask"].dtype == torch.uint8
    val = CohortDataset(m, cache, split="val")
    assert [val[i]["label"] for i in range(2)] == [4, -1]  # "others", unlabelled
    b = collate([ds[i] for i in range(4)])
    assert b["image"].shape == (4, 3, *SHAPE) and b["sequence_mask"].shape == (4, 3)
    assert b["label"].tolist() == [0, 1, 2, 3] and b["study_id"] == ["s0", "s1", "s2", "s3"]
    assert b["mask"].shape == (4, *SHAPE) and b["has_mask"].tolist() == [True, True, True, False]
    assert isinstance(b["text"], list)

    aug = build_augment("paper", seed=0)
    ds_aug = CohortDataset(m, cache, split="train", augment=aug)
    y = ds_aug[1]
    assert y["image"].shape == (3, *SHAPE) and torch.isfinite(y["image"]).all()
    assert not y["image"][1].any()  # missing channel stays zero after noise/gamma
    same = [build_augment("paper", seed=5)(ds[0])["image"] for _ in range(2)]
    torch.testing.assert_close(same[0], same[1])  # deterministic by seed
    with pytest.raises(CohortError, match="no 'split' column"):
        CohortDataset(pd.read_csv(m).drop(columns=["split"]), cache, split="train")


def test_flip_moves_image_and_mask_together():
    import torchio as tio

    img = torch.zeros(2, 3, 4, 5)
    img[:, :, :, 0] = 1.0  # bright column at W=0
    mask = torch.zeros(3, 4, 5, dtype=torch.uint8)
    mask[:, :, 0] = 1
    out = Augment(tio.RandomFlip(axes=(0,), flip_probability=1.0))(
        {"image": img, "mask": mask, "sequence_mask": torch.tensor([True, True])})
    assert out["image"][:, :, :, -1].eq(1).all() and out["image"][:, :, :, 0].eq(0).all()  # flipped along W
    assert out["mask"][:, :, -1].eq(1).all() and out["mask"].dtype == torch.uint8


def test_missing_study_in_cache(tmp_path):
    m = _cohort(tmp_path, n=2)
    cache = tmp_path / "cache"
    preprocess_cohort(pd.read_csv(m, keep_default_na=False).iloc[:1].assign(
        image_dwi=lambda d: [str(tmp_path / p) for p in d["image_dwi"]],
        image_t2s=lambda d: [str(tmp_path / p) for p in d["image_t2s"]],
        image_flair=lambda d: [str(tmp_path / p) for p in d["image_flair"]],
        mask=lambda d: [str(tmp_path / p) for p in d["mask"]]), CFG, cache, workers=1, progress=False)
    with pytest.raises(CohortError, match="not in the cache"):
        CohortDataset(m, cache)
    with pytest.raises(CohortError, match="no cache index"):
        CohortCache(tmp_path / "nowhere")


def test_cli_preprocess_and_inspect(tmp_path):
    m = _cohort(tmp_path)
    cache = tmp_path / "cache"
    assert main(["preprocess", str(m), "--cache", str(cache), "--workers", "1", "--no-progress",
                 "--shape", "4,12,12", "--sequences", "dwi,t2s,flair"]) == 0
    idx = json.loads((cache / "index.json").read_text(encoding="utf-8"))
    assert idx["config"]["register"] is True and len(idx["entries"]) == 6
    reg = idx["entries"]["s0"]["info"]["per_sequence"]["dwi"]["registration"]
    assert {"metric_before", "metric_final", "iterations"} <= set(reg)
    for extra in ([], ["--cache", str(cache)]):
        out = tmp_path / f"sheet{len(extra)}.png"
        assert main(["inspect", str(m), "--out", str(out), "--max-studies", "4", *extra]) == 0
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_artefact_augmentation_keeps_laterality_mask_and_missing_channels():
    """The "artefacts" recipe (bias, ghosting, motion, blur, noise, gamma) changes intensities but never
    moves the anatomy across the midline (no flip) and keeps a missing sequence all-zero."""
    img = torch.zeros(2, 6, 16, 16)  # (C, D, H, W)
    img[0, :, 4:12, 2:6] = 1.0  # a bright block on the W < 8 side
    sample = {"image": img, "sequence_mask": torch.tensor([True, False]),
              "mask": (img[0] > 0).to(torch.uint8)}
    aug = build_augment("artefacts", seed=3, p=1.0)
    changed = 0
    for _ in range(6):
        out = aug(sample)
        x = out["image"]
        assert x.shape == img.shape and torch.isfinite(x).all() and not x[1].any()
        assert torch.equal(out["mask"], sample["mask"])  # intensity-only: the mask does not move
        left, right = x[0, :, :, :8].abs().sum(), x[0, :, :, 8:].abs().sum()
        assert left > right  # the block stays on its side
        changed += int(not torch.allclose(x, img))
    assert changed >= 3
