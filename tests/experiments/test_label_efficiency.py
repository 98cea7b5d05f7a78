"""SSL label efficiency through the one loop: in-memory dataset/samplers, pretrain and finetune."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from medalign.data.memory import ColumnDataset, FixedEpochSampler, ReplacementBatchSampler


def test_column_dataset_drops_none_and_checks_lengths():
    ds = ColumnDataset({"image": torch.zeros(3, 1, 2, 2), "sequence_mask": None, "patient_id": ["a", "b", "c"]})
    assert len(ds) == 3 and set(ds[1]) == {"image", "patient_id"} and ds[2]["patient_id"] == "c"
    assert ds.patient_ids == ["a", "b", "c"]
    with pytest.raises(ValueError, match="differ in length"):
        ColumnDataset({"a": [1, 2], "b": [1]})


def test_replacement_sampler_is_seeded_resumable_and_sized():
    s = ReplacementBatchSampler(10, 4, 5, seed=3)
    s.set_epoch(0)
    first = list(s)
    assert len(first) == s.batches_per_epoch() == len(s) == 5
    assert all(len(b) == 4 and len(set(b)) == 4 for b in first)  # distinct within a batch when n >= bs
    s.set_epoch(0, start_batch=2)
    assert list(s) == first[2:] and len(s) == 3
    s.set_epoch(1)
    assert list(s) != first
    small = ReplacementBatchSampler(2, 4, 1, seed=0)
    assert len(next(iter(small))) == 4  # n < batch_size: with replacement


def test_fixed_epoch_sampler_tops_up_short_epochs():
    class Shrinking:
        def __init__(self):
            self.epoch = 0

        def set_epoch(self, epoch, start_batch=0):
            self.epoch = epoch

        def batches_per_epoch(self):
            return 3 - self.epoch

        def __iter__(self):
            return iter([[self.epoch, i] for i in range(3 - self.epoch)])

    s = FixedEpochSampler(Shrinking())
    assert s.batches_per_epoch() == 3
    s.set_epoch(1)
    assert list(s) == [[1, 0], [1, 1], [1, 0]] and s.epoch == 1
    s.set_epoch(1, start_batch=2)
    assert list(s) == [[1, 0]]


def _blobs(n, seed):
    g = torch.Generator().manual_seed(seed)
    y = np.arange(n) % 2
    x = torch.rand(n, 1, 8, 8, generator=g) + 2.0 * torch.as_tensor(y, dtype=torch.float32).reshape(n, 1, 1, 1)
    ids = [f"s{seed}-{i}" for i in range(n)]
    return {"x": x, "mask": None, "y": y, "pid": ids, "sid": list(ids)}


def _simclr():
    from medalign.recipes.simclr import SimCLRRecipe

    enc = {"name": "unet3d_cpu", "spatial_dims": 2, "channels": [4, 8], "local_level": 1}
    return SimCLRRecipe(sequences=("c0",), input_shape=(8, 8), image_encoder=enc, proj_dim=8, gather=False)


def test_pretrain_goes_through_the_loop_and_reports_epoch_losses():
    from medalign.experiments.label_efficiency import pretrain

    torch.manual_seed(0)
    rec = _simclr()
    before = {k: v.clone() for k, v in rec.state_dict().items()}
    lines = []
    losses = pretrain(rec, _blobs(20, 0), epochs=3, batch_size=8, lr=1e-3, seed=0, log=lines.append)
    assert len(losses) == 3 and all(np.isfinite(losses)) and len(lines) == 3
    assert not rec.training and "training_step" not in vars(rec)  # the loss trace is removed again
    assert any(not torch.equal(before[k], v) for k, v in rec.state_dict().items())


def test_pretrain_patient_batches():
    from medalign.experiments.label_efficiency import pretrain
    from medalign.recipes.micle import MICLeRecipe

    data = _blobs(16, 1)
    data["pid"] = [f"p{i // 2}" for i in range(16)]
    enc = {"name": "unet3d_cpu", "spatial_dims": 2, "channels": [4, 8], "local_level": 1}
    rec = MICLeRecipe(sequences=("c0",), input_shape=(8, 8), image_encoder=enc, proj_dim=8, gather=False,
                      instance="study", fallback="views")
    losses = pretrain(rec, data, epochs=2, batch_size=8, lr=1e-3, seed=0, patient_batches=True, log=lambda *a: None)
    assert len(losses) == 2 and all(np.isfinite(losses))


def test_finetune_learns_an_easy_task_and_leaves_the_encoder_alone():
    from medalign.experiments.label_efficiency import finetune

    torch.manual_seed(0)
    rec = _simclr()
    before = {k: v.clone() for k, v in rec.encoder.state_dict().items()}
    res = finetune(rec.encoder, rec.feat_dim, _blobs(40, 2), _blobs(20, 3), fraction=1.0, n_classes=2, steps=30,
                   batch_size=16, lr=1e-2, seed=0, n_boot=20)
    assert res["n_train"] == 40 and res["accuracy"]["value"] >= 0.9
    assert {"value", "lo", "hi"} <= set(res["accuracy"])
    for k, v in rec.encoder.state_dict().items():
        assert torch.equal(before[k], v), k  # fine-tuning trains a copy
