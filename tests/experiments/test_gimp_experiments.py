"""GiMP drivers on the one training loop: gene-encoder pretraining, stage selection, metrics."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from medalign.eval.bootstrap import bootstrap_ci
from medalign.experiments.gimp import GeneTask, classification_metrics, pretrain_gene_encoder
from medalign.models.omics import build_gene_encoder
from medalign.recipes.gimp import GiMP


def test_pretrain_gene_encoder_keeps_best_val_weights():
    """Separable toy expression: the returned classifier's val accuracy is the reported best one."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(60) % 2
    x = torch.randn(60, 16, generator=g) + 2.0 * y[:, None].float()
    enc = build_gene_encoder("snn", 16, hidden=(16,), dim=8)
    clf, info = pretrain_gene_encoder(enc, x[:40], y[:40], x[40:], y[40:], n_classes=2, epochs=5, batch_size=8)
    with torch.no_grad():
        acc = float((clf(x[40:]).argmax(1) == y[40:]).float().mean())
    assert acc == pytest.approx(info["best_val_acc"]) and acc > 0.5  # above chance, and the kept weights
    assert info["summary"]["epochs"] == 5 and info["summary"]["steps"] == 5 * 5


def test_gene_task_validation_end_is_split_accuracy():
    task = GeneTask(torch.nn.Module())
    outs = [{"correct": torch.tensor([True, False])}, {"correct": torch.tensor([True])}]
    assert task.validation_end(outs) == {"acc": pytest.approx(2 / 3)}


def test_gimp_validation_follows_stage():
    model = GiMP(in_dim=8, n_genes=32, dim=8, mpm_length=16, aggregator_kwargs={"heads": 2, "num_landmarks": 8},
                 gene_kwargs={"n_fragments": 8, "n_groups": 2, "dim": 8, "heads": 2})
    batch = {"bags": [torch.randn(20, 8) for _ in range(4)], "expression": torch.randn(4, 32),
             "label": torch.tensor([0, 1, 0, 1])}
    assert "reconstruction_loss" in model.validation_step(batch)
    assert model.validation_end([model.validation_step(batch)]) == {}
    model.stage = "finetune"
    out = model.validation_step(batch)
    assert out["correct"].shape == (4,)
    assert 0.0 <= model.validation_end([out, out])["acc"] <= 1.0
    with pytest.raises(ValueError, match="data.manifest"):
        model.build_dataset({"manifest": None}, "train", train=True)


def test_classification_metrics_uses_eval_bootstrap():
    y = np.array([0, 1, 1, 0, 1, 0, 1, 1])
    pred = np.array([0, 1, 0, 0, 1, 1, 1, 1])
    m = classification_metrics(y, pred, n_boot=200, seed=3)
    ref = bootstrap_ci(lambda a, b: float((a == b).mean()), y, pred, n=200, seed=3)
    assert m["accuracy"] == ref and m["accuracy"]["value"] == 0.75 and m["n_test"] == 8
