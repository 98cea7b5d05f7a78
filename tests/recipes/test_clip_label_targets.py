"""ClipRecipe's class-label targets (``recipe.label_targets``): the batch's labels reach the loss,
and a tiny cohort trains with them end to end through ``fit``."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

from medalign.losses.clip import ClipLoss
from medalign.recipes.clip import ClipRecipe

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny_runs import fit_tiny_clip  # noqa: E402

from test_clip_lesion_aux import _FakeText  # noqa: E402  (tiny_runs puts tests/recipes on the path)


def _recipe(**kw) -> ClipRecipe:
    torch.manual_seed(0)  # the same weights for every call
    rec = ClipRecipe(sequences=("flair",), input_shape=(4, 16, 16), embed_dim=4, gather=False,
                     image_encoder={"name": "unet3d_cpu", "channels": (4, 8), "stem_stride": (1, 2, 2),
                                    "local_level": 1, "global_pool": "avg"},
                     text_encoder={"device": "cpu"}, **kw)
    rec._text[:] = [_FakeText()]
    rec.text_proj = type(rec.text_proj)(6, 4, "linear")  # sized for the fake encoder
    return rec


def test_training_step_uses_the_batch_labels():
    rec = _recipe(label_targets=0.5)
    rec.log_logit_scale.data.fill_(math.log(100.0))  # sharp logits, so the targets matter at initialisation
    batch = {"image": torch.randn(3, 1, 4, 16, 16), "text": ["Infarct.", "Acute infarct.", "Normal."],
             "label": torch.tensor([0, 0, 3])}  # (B, C, D, H, W); the first two one class
    rec.eval()  # no dropout or jitter: forward() reproduces the step's embeddings
    got = rec.training_step(batch)["contrastive_loss"].item()
    f = rec(batch)
    expect = ClipLoss(gather=False, label_weight=0.5)(f["image_embed"], f["text_embed"], f["logit_scale"],
                                                      labels=batch["label"])["contrastive_loss"].item()
    plain = ClipLoss(gather=False)(f["image_embed"], f["text_embed"], f["logit_scale"])["contrastive_loss"].item()
    assert got == pytest.approx(expect, abs=1e-6) and abs(got - plain) > 1e-4
    with pytest.raises(ValueError, match="class labels"):
        rec.training_step({k: v for k, v in batch.items() if k != "label"})


def test_tiny_cohort_trains_with_label_targets(tmp_path, monkeypatch):
    import medalign

    monkeypatch.setenv("MEDALIGN_CACHE", str(tmp_path / "medalign_cache"))
    run, _ = fit_tiny_clip(tmp_path, label_targets=0.5)
    assert medalign.load(run).recipe.loss.label_weight == 0.5


def test_unlabelled_batch_trains_as_the_paper_and_warns_once(caplog):
    lab, plain = _recipe(label_targets=0.5), _recipe()
    plain.load_state_dict(lab.state_dict())
    lab.eval(), plain.eval()
    batch = {"image": torch.randn(2, 1, 4, 16, 16), "text": ["Infarct.", "Normal."], "label": torch.tensor([-1, -1])}
    with caplog.at_level("WARNING"):
        a = lab.training_step(batch)["contrastive_loss"].item()
        lab.training_step(batch)
    assert a == pytest.approx(plain.training_step(batch)["contrastive_loss"].item(), abs=1e-6)
    assert sum("no class labels" in r.getMessage() for r in caplog.records) == 1


def test_label_similarity_reads_the_step_report_features(tmp_path, monkeypatch):
    """``recipe.label_similarity``: the step shares the class half by the frozen report features it trains on,
    and a tiny cohort trains with it through ``fit`` (the option reaches the loss of the loaded run)."""
    rec = _recipe(label_targets=0.5, label_similarity=0.1)
    rec.log_logit_scale.data.fill_(math.log(100.0))
    batch = {"image": torch.randn(3, 1, 4, 16, 16), "text": ["Infarct.", "Acute infarct.", "Normal."],
             "label": torch.tensor([0, 0, 0])}  # one class: only the similarity split tells the targets apart
    rec.eval()
    got = rec.training_step(batch)["contrastive_loss"].item()
    f = rec(batch)
    args = (f["image_embed"], f["text_embed"], f["logit_scale"], f["text_features"])
    expect = ClipLoss(gather=False, label_weight=0.5, label_similarity=0.1)(*args, labels=batch["label"])
    equal = ClipLoss(gather=False, label_weight=0.5)(*args, labels=batch["label"])
    assert got == pytest.approx(expect["contrastive_loss"].item(), abs=1e-6)
    assert abs(got - equal["contrastive_loss"].item()) > 1e-5

    import medalign

    monkeypatch.setenv("MEDALIGN_CACHE", str(tmp_path / "medalign_cache"))
    run, _ = fit_tiny_clip(tmp_path, label_targets=0.5, label_similarity=0.1)
    assert medalign.load(run).recipe.loss.label_similarity == 0.1
