"""Triplet and masked-L1 losses on hand-made inputs; MPM sampling helpers."""
from __future__ import annotations

import pytest
import torch

from medalign.losses.masked import MaskedL1Loss, contiguous_subsequence, random_patch_mask
from medalign.losses.triplet import TripletLoss


def test_triplet_known_value_batch_hard():
    # squared distances: d01 = 4, d02 = 1, d12 = 1; anchors 0, 1 (class 0) have one positive and one negative
    x = torch.tensor([[0.0, 0.0], [2.0, 0.0], [1.0, 0.0]])
    y = torch.tensor([0, 0, 1])
    out = TripletLoss(0.8)(x, y)
    assert out["triplet_loss"].item() == pytest.approx(4 - 1 + 0.8)  # both anchors: 3.8; anchor 2 has no positive


def test_triplet_known_value_zero_and_margin():
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    y = torch.tensor([0, 0, 1])
    assert TripletLoss(0.8)(x, y)["triplet_loss"].item() == pytest.approx(0.0)  # 1-4+.8<0, 1-5+.8<0
    assert TripletLoss(4.0)(x, y)["triplet_loss"].item() == pytest.approx((1 - 4 + 4 + 0) / 2)


def test_triplet_batch_hard_picks_hardest():
    # anchor 0: positives at d=1 and d=9 (hardest 9), negatives at d=16 and d=4 (hardest 4)
    x = torch.tensor([[0.0], [1.0], [3.0], [4.0], [2.0]])
    y = torch.tensor([0, 0, 0, 1, 1])
    d = TripletLoss(0.5, mining="batch_hard")(x[:4].clone(), y[:4])["triplet_loss"]
    # anchors 0,1,2 vs negative 3: (9-16+.5)->0, (4-9+.5)->0, (d02=9 for a2: 9-1+.5=8.5)
    assert d.item() == pytest.approx(8.5 / 3)
    all_mode = TripletLoss(0.5, mining="all")(x, y)["triplet_loss"]
    assert all_mode.item() >= 0


def test_triplet_random_mining_is_seeded_and_has_gradients():
    x = torch.randn(8, 4, requires_grad=True)
    y = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1])
    loss = TripletLoss(0.8, mining="random")
    a = loss(x, y, generator=torch.Generator().manual_seed(1))["triplet_loss"]
    b = loss(x, y, generator=torch.Generator().manual_seed(1))["triplet_loss"]
    assert a.item() == b.item()
    a.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_triplet_no_valid_triplet_is_zero_with_graph_and_bad_shape():
    x = torch.randn(3, 2, requires_grad=True)
    out = TripletLoss()(x, torch.tensor([0, 1, 2]))["triplet_loss"]
    assert out.item() == 0.0 and out.requires_grad
    with pytest.raises(ValueError, match="labels"):
        TripletLoss()(x, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="mining"):
        TripletLoss(mining="semi")


def test_masked_l1_only_masked_positions():
    target = torch.zeros(1, 4, 2)
    pred = torch.tensor([[[1.0, 1.0], [2.0, 0.0], [100.0, 100.0], [0.0, -3.0]]])
    mask = torch.tensor([[True, True, False, True]])  # the 100s are unmasked: ignored
    out = MaskedL1Loss()(pred, target, mask)["reconstruction_loss"]
    assert out.item() == pytest.approx((2 + 2 + 3) / (3 * 2))
    pred.requires_grad_(True)
    MaskedL1Loss()(pred, target, mask)["reconstruction_loss"].backward()
    assert pred.grad[0, 2].abs().sum() == 0 and pred.grad[0, 0].abs().sum() > 0
    with pytest.raises(ValueError, match="mask"):
        MaskedL1Loss()(pred, target, mask[:, :3])


def test_contiguous_subsequence_duplicates_short_bags_and_is_contiguous():
    bag = torch.arange(5.0)[:, None]  # (5, 1)
    sub = contiguous_subsequence(bag, 12)
    assert sub[:, 0].tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]
    long = torch.arange(100.0)[:, None]
    s = contiguous_subsequence(long, 10, generator=torch.Generator().manual_seed(0))[:, 0]
    assert (s[1:] - s[:-1] == 1).all() and len(s) == 10


def test_random_patch_mask_ratio():
    m = random_patch_mask(3, 10, 0.5, generator=torch.Generator().manual_seed(0))
    assert m.shape == (3, 10) and m.dtype == torch.bool and (m.sum(1) == 5).all()
