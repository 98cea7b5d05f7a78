"""ViewDistillLoss: 1 - cosine to a detached teacher, weighted; only the student gets a gradient."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medalign.losses.distill import ViewDistillLoss


def test_value_is_weighted_mean_cosine_distance():
    s = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=-1)
    t = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.0]]), dim=-1)
    out = ViewDistillLoss(weight=2.0)(s, t)["view_distill_loss"]
    assert float(out) == pytest.approx(2.0 * (0.0 + 1.0) / 2)  # rows: identical (0), orthogonal (1)


def test_only_the_student_moves_and_an_empty_batch_keeps_the_graph():
    s = torch.randn(3, 4, requires_grad=True)
    t = torch.randn(3, 4, requires_grad=True)
    ViewDistillLoss()(s, t)["view_distill_loss"].backward()
    assert s.grad is not None and float(s.grad.abs().sum()) > 0
    assert t.grad is None  # detached teacher
    empty = ViewDistillLoss()(s[:0], t[:0])["view_distill_loss"]
    assert float(empty.detach()) == 0.0 and empty.requires_grad


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="weight must be >= 0"):
        ViewDistillLoss(weight=-1.0)
    with pytest.raises(ValueError, match="differ in shape"):
        ViewDistillLoss()(torch.randn(2, 4), torch.randn(3, 4))
