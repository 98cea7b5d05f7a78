"""ClipRecipe's twin views (``recipe.twin_views``): a patient's studies (a study and its lesion-free twin)
train in one batch through one shared view, wired end to end through ``fit``."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from medalign.data.samplers import GroupedBatchSampler

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny_runs import fit_tiny_clip, tiny_clip_recipe as _recipe  # noqa: E402


def test_a_study_and_its_twin_see_the_same_single_sequence():
    torch.manual_seed(0)
    rec = _recipe(twin_views=1.0, sequence_dropout=0.3)
    rec.train()
    batch = {"image": torch.randn(4, 3, 4, 16, 16), "patient_id": ["p1", "p2", "p1", "p3"],
             "sequence_mask": torch.tensor([[1, 1, 1], [1, 1, 1], [1, 1, 1], [1, 1, 0]], dtype=torch.bool)}
    seen = set()
    for _ in range(30):
        _, mask, _ = rec.image_inputs(batch)
        assert torch.equal(mask[0], mask[2]) and int(mask[0].sum()) == 1  # one view, one sequence
        assert not mask[3, 2]  # a missing sequence never comes back
        seen.add(int(mask[0].nonzero()))
    assert seen == {0, 1, 2}
    rec.eval()
    assert torch.equal(rec.image_inputs(batch)[1], batch["sequence_mask"])  # inference sees the study as it is


def test_twin_views_choose_the_grouped_sampler_for_training_only():
    class _DS:
        patient_ids = ["a", "b", "a", "c", "d", "e"]

        def __len__(self):
            return 6

    assert isinstance(_recipe(twin_views=0.5).batch_sampler(_DS(), batch_size=4, train=True), GroupedBatchSampler)
    assert _recipe(twin_views=0.5).batch_sampler(_DS(), batch_size=4, train=False) is None
    assert _recipe().batch_sampler(_DS(), batch_size=4, train=True) is None


def test_tiny_cohort_trains_with_twin_views(tmp_path, monkeypatch):
    import medalign

    monkeypatch.setenv("MEDALIGN_CACHE", str(tmp_path / "medalign_cache"))
    run, _ = fit_tiny_clip(tmp_path, twin_views=0.5)
    assert medalign.load(run).recipe.twin_views == 0.5
