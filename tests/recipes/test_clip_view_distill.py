"""ClipRecipe's view distillation (``recipe.view_distill``): studies with several sequences are encoded
again through one of them and pulled to their own detached embedding; wired end to end through ``fit``."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from medalign.recipes.views import single_views

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny_runs import fit_tiny_clip, tiny_clip_recipe as _recipe  # noqa: E402


def test_single_views_keep_one_present_sequence_drawn_uniformly():
    mask = torch.tensor([[1, 1, 1], [0, 1, 1], [0, 0, 1], [0, 0, 0]], dtype=torch.bool)
    seen: dict[int, set] = {0: set(), 1: set()}
    for i in range(60):
        one = single_views(mask, torch.Generator().manual_seed(i))
        assert one.sum(dim=1).tolist() == [1, 1, 1, 0]
        assert not (one & ~mask).any()  # never a sequence the study lacks
        seen[0].add(int(one[0].nonzero())), seen[1].add(int(one[1].nonzero()))
    assert seen == {0: {0, 1, 2}, 1: {1, 2}}


def test_distilled_rows_are_multi_sequence_studies_and_their_loss_trains_the_student_only():
    torch.manual_seed(0)
    rec = _recipe(view_distill=1.0, view_distill_batch=2)
    rec.train()
    image = torch.randn(4, 3, 4, 16, 16)
    mask = torch.tensor([[1, 0, 0], [1, 1, 1], [0, 1, 1], [1, 1, 1]], dtype=torch.bool)
    embed, _ = rec._encode(image, mask)
    out = rec._distill_views(image, mask, embed)
    assert out["student_embed"].shape == (2, 4)  # rows 1 and 2: the single-sequence study 0 is skipped, capped at 2
    assert torch.allclose(out["teacher_embed"], embed[1:3].detach())
    assert not out["teacher_embed"].requires_grad
    loss = rec.view_distill(out["student_embed"], out["teacher_embed"])["view_distill_loss"]
    assert 0.0 < float(loss.detach()) <= 2.0
    loss.backward()
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in rec.image_encoder.parameters())
    rec.eval()
    batch = {"image": image, "sequence_mask": mask, "text": ["a"] * 4}
    with torch.no_grad():
        assert "student_embed" not in rec(batch)  # inference: no extra view


def test_off_by_default_and_bad_values_are_refused():
    assert _recipe().view_distill is None
    with pytest.raises(ValueError, match="view distillation weight must be >= 0"):
        _recipe(view_distill=-0.5)
    with pytest.raises(ValueError, match="view_distill_batch must be >= 0"):
        _recipe(view_distill=1.0, view_distill_batch=-1)


def test_tiny_cohort_trains_with_view_distillation(tmp_path, monkeypatch):
    import medalign

    monkeypatch.setenv("MEDALIGN_CACHE", str(tmp_path / "medalign_cache"))
    run, rows = fit_tiny_clip(tmp_path, view_distill=0.5, view_distill_batch=0)
    assert any(r.get("split") == "train" and r.get("view_distill_loss", 0) > 0 for r in rows)
    assert medalign.load(run).recipe.view_distill.weight == 0.5
