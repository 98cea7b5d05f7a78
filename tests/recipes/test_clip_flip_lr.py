"""Left-right mirroring in training (``recipe.flip_lr``): the image flips on its left-right axis and
its report's sides swap with it, so the pair stays true; exact values, only in training, cached up front."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from medalign.data.reports import mirror_laterality
from medalign.recipes.views import mirror_batch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny_runs import fake_text_clip_recipe  # noqa: E402

REPORT = "Indication: weakness. Acute infarct in the L MCA territory. IMPRESSION: Left acute infarct."


def _recipe(**kw):
    return fake_text_clip_recipe(input_shape=(4, 16, 16), **kw)


def test_mirror_laterality_swaps_sides_only():
    assert mirror_laterality("Acute infarct in the L MCA territory.") == "Acute infarct in the R MCA territory."
    assert mirror_laterality("Left frontal glioma with right-sided shift; LEFT. Rt temporal.") == \
        "Right frontal glioma with left-sided shift; RIGHT. Lt temporal."
    unsided = "Bilateral bright periventricular foci, midline structures normal. MRI brain, T2* and FLAIR. l r"
    assert mirror_laterality(unsided) == unsided  # "bright", "Bilateral", lower-case letters untouched
    for text in (REPORT, "right R Right RIGHT rt RT left-sided"):
        assert mirror_laterality(mirror_laterality(text)) == text  # an involution
    assert mirror_laterality(None) == ""


def test_mirror_batch_flips_the_last_axis_with_its_masks():
    x = torch.arange(2 * 1 * 2 * 3 * 4, dtype=torch.float32).reshape(2, 1, 2, 3, 4)  # (B, C, D, H, W)
    lesion = (x[:, 0] > 30).to(torch.uint8)  # (B, D, H, W)
    out, flipped, moved = mirror_batch(x, 1.0, follow=lesion)
    assert flipped.tolist() == [True, True]
    assert torch.equal(out, x.flip(-1)) and torch.equal(moved, lesion.flip(-1))
    same, none, kept = mirror_batch(x, 0.0, follow=lesion)
    assert not none.any() and torch.equal(same, x) and torch.equal(kept, lesion)
    g = torch.Generator().manual_seed(0)
    big = torch.randn(400, 1, 1, 1, 5)
    out, flipped, _ = mirror_batch(big, 0.5, generator=g)
    assert 0.4 < flipped.float().mean() < 0.6  # per sample, about half
    assert torch.equal(out[flipped], big[flipped].flip(-1)) and torch.equal(out[~flipped], big[~flipped])


def test_training_mirrors_image_and_report_together_and_only_in_training():
    rec, fake = _recipe(flip_lr=1.0)
    seen_images = []
    encode = rec._encode
    rec._encode = lambda image, mask: (seen_images.append(image.clone()), encode(image, mask))[1]
    batch = {"image": torch.randn(2, 1, 4, 16, 16), "text": [REPORT, "Normal MRI brain."]}  # (B, C, D, H, W)
    rec.train()
    rec.training_step(batch)
    assert fake.seen == ["Right acute infarct.", "Normal MRI brain."]
    assert torch.equal(seen_images[-1], batch["image"].flip(-1))
    rec.eval()
    fake.seen.clear()
    rec.validation_step(batch)
    assert fake.seen == ["Left acute infarct.", "Normal MRI brain."]  # validation sees the acquired pair
    assert torch.equal(seen_images[-1], batch["image"])
    off, fake_off = _recipe()
    off.train()
    off.training_step(batch)
    assert fake_off.seen == ["Left acute infarct.", "Normal MRI brain."]  # off by default


def test_prepare_caches_the_mirrored_views_and_bad_values_are_refused():
    class _DS:
        texts = [REPORT]

    rec, fake = _recipe(flip_lr=0.5, text_views=True)
    rec.prepare([_DS()])
    assert "Left acute infarct." in fake.seen and "Right acute infarct." in fake.seen
    assert "Acute infarct in the R MCA territory." in fake.seen  # every view, mirrored
    with pytest.raises(ValueError, match="flip_lr"):
        _recipe(flip_lr=1.5)


def test_gloria_mirrors_its_word_branch_too(tmp_path):
    from medalign.recipes import build_recipe

    rec = build_recipe({"recipe": {"name": "gloria", "sequences": ["flair"], "flip_lr": 1.0,
                                   "image_encoder": {"name": "unet3d_cpu", "channels": [4, 8], "stem_stride": 1,
                                                     "local_level": 1, "global_pool": "avg", "out_dim": 8},
                                   "text_encoder": {"cache_dir": str(tmp_path / "text")}, "embed_dim": 8},
                        "data": {"shape": [4, 16, 16]}})
    batch = {"image": torch.randn(1, 1, 4, 16, 16), "sequence_mask": torch.ones(1, 1, dtype=torch.bool),
             "text": ["Acute infarct in the left frontal lobe."]}
    rec.train()
    assert "right" in rec(batch)["word_lists"][0] and "left" not in rec(batch)["word_lists"][0]
    rec.eval()
    assert "left" in rec(batch)["word_lists"][0]


def test_a_patients_studies_share_the_draw_with_twin_views():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(64, 1, 1, 1, 4)  # (B, C, D, H, W)
    groups = [f"P{i // 2}" for i in range(64)]  # study + twin
    _, flipped, _ = mirror_batch(x, 0.5, generator=g, groups=groups)
    assert torch.equal(flipped[0::2], flipped[1::2]) and 0 < int(flipped.sum()) < 64
    rec, fake = _recipe(flip_lr=0.5, twin_views=0.5)
    rec.train()
    torch.manual_seed(0)
    for _ in range(10):
        texts = rec.mirror(torch.zeros(2, 1, 4, 16, 16), ["left", "left"], patients=["P1", "P1"])[1]
        assert texts[0] == texts[1]
