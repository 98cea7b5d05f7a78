"""LesionClassLoss: per-cell lesion-class targets and the balanced cross-entropy; VoxelLesionLoss: per-voxel
lesion-ness read off a strided map."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from medalign.losses.lesion import LesionClassLoss, lesion_targets


def test_targets_mark_every_cell_a_lesion_touches_with_its_study_class():
    mask = torch.zeros(2, 4, 8, 8, dtype=torch.uint8)  # (B, D, H, W)
    mask[0, 0, 0, 0] = 1  # one voxel: its 2x4x4 cell only
    mask[1, 2:4, 4:8, 4:8] = 1  # exactly the last cell
    t = lesion_targets(mask, torch.tensor([1, 4]), (2, 2, 2))
    assert t.shape == (2, 2, 2, 2) and t.dtype == torch.long
    want0 = torch.zeros(2, 2, 2, dtype=torch.long)
    want0[0, 0, 0] = 2  # label 1 -> class 2 (0 is no lesion)
    want1 = torch.zeros(2, 2, 2, dtype=torch.long)
    want1[1, 1, 1] = 5
    assert torch.equal(t[0], want0) and torch.equal(t[1], want1)


def test_lesion_and_background_cells_weigh_the_same():
    logits = torch.zeros(1, 3, 1, 1, 4)  # (B, 1 + K, *grid), uniform: CE = log 3 everywhere
    logits[0, 0, 0, 0, 1:] = 5.0  # three background cells predicted right
    mask = torch.zeros(1, 1, 1, 4)
    mask[0, 0, 0, 0] = 1  # the first cell is a lesion of class 1 (target 2), predicted uniformly
    out = LesionClassLoss(weight=2.0)(logits, mask, torch.tensor([1]), torch.tensor([True]))
    bg = -torch.log_softmax(torch.tensor([5.0, 0.0, 0.0]), 0)[0]
    want = 2.0 * (math.log(3) + float(bg)) / 2  # the one lesion cell counts as much as the three others
    assert float(out["lesion_loss"]) == pytest.approx(want, rel=1e-5)


def test_studies_without_mask_or_label_are_left_out():
    logits = torch.randn(2, 3, 1, 2, 2, requires_grad=True)
    mask = torch.ones(2, 1, 2, 2)
    loss = LesionClassLoss()
    only_first = loss(logits, mask, torch.tensor([0, 1]), torch.tensor([True, False]))["lesion_loss"]
    assert float(only_first) == pytest.approx(float(loss(logits[:1], mask[:1], torch.tensor([0]),
                                                         torch.tensor([True]))["lesion_loss"]))
    none = loss(logits, mask, torch.tensor([-1, 1]), torch.tensor([True, False]))["lesion_loss"]
    assert float(none) == 0.0
    none.backward()  # keeps the graph, so a step with no usable mask still runs
    assert logits.grad is not None and float(logits.grad.abs().sum()) == 0.0
    with pytest.raises(ValueError, match=">= 0"):
        LesionClassLoss(weight=-1)


def test_fraction_targets_are_each_cells_lesion_share_in_the_studys_class():
    from medalign.losses.lesion import lesion_fractions

    mask = torch.zeros(1, 4, 8, 8)  # (B, D, H, W); cells of 2x4x4 = 32 voxels
    mask[0, 0, :2, :4] = 1  # 8 voxels of the first cell
    t = lesion_fractions(mask, torch.tensor([3]), (2, 2, 2), num_classes=5)
    assert t.shape == (1, 6, 2, 2, 2)
    assert torch.allclose(t.sum(1), torch.ones(1, 2, 2, 2))  # a distribution in every cell
    assert float(t[0, 4, 0, 0, 0]) == pytest.approx(8 / 32) and float(t[0, 0, 0, 0, 0]) == pytest.approx(24 / 32)
    assert float(t[0, 1:4].abs().sum() + t[0, 5].abs().sum()) == 0.0  # the other classes get nothing
    assert float(t[0, 0, 1, 1, 1]) == 1.0  # a cell without lesion is all "no lesion"


def test_fraction_targets_train_a_head_whose_probabilities_are_the_shares():
    """Calibration: free logits trained on the soft targets end at the cells' lesion shares, so the
    mean over the cells is the lesion volume; the balanced default overstates it many times."""
    mask = torch.zeros(1, 4, 8, 8)
    mask[0, 0, :2, :4] = 1  # 8 of 256 voxels: volume share 1/32
    shares = {}
    for targets in ("fraction", "any"):
        torch.manual_seed(0)
        logits = torch.zeros(1, 6, 2, 2, 2, requires_grad=True)
        opt = torch.optim.Adam([logits], lr=0.1)
        loss = LesionClassLoss(weight=1.0, targets=targets)
        for _ in range(400):
            opt.zero_grad()
            loss(logits, mask, torch.tensor([3]), torch.tensor([True]))["lesion_loss"].backward()
            opt.step()
        p = logits.detach().softmax(1)  # (1, 6, 2, 2, 2)
        shares[targets] = float((1 - p[:, 0]).mean())
        if targets == "fraction":
            assert float(p[0, 4, 0, 0, 0]) == pytest.approx(0.25, abs=0.02)  # the cell's share, class 3 -> channel 4
    assert shares["fraction"] == pytest.approx(1 / 32, abs=0.005)
    assert shares["any"] > 3 * shares["fraction"]  # one lesion voxel makes the whole cell lesion


def test_unknown_target_mode_is_refused():
    with pytest.raises(ValueError, match="'any' or 'fraction'"):
        LesionClassLoss(targets="soft")


def test_space_to_depth_puts_each_voxel_in_its_cell_and_offset_channel():
    from medalign.losses.lesion import space_to_depth

    mask = torch.arange(2 * 2 * 4 * 6, dtype=torch.float32).reshape(2, 2, 4, 6)  # (B, D, H, W), every voxel distinct
    out = space_to_depth(mask, (1, 2, 3))  # (B, 6, 2, 2, 2)
    assert out.shape == (2, 6, 2, 2, 2)
    for b, d, h, w in itertools.product(range(2), range(2), range(4), range(6)):
        r = (h % 2) * 3 + (w % 3)  # offsets inside the 1x2x3 cell, the first axis slowest
        assert out[b, r, d, h // 2, w // 3] == mask[b, d, h, w]
    with pytest.raises(ValueError, match="does not divide into cells"):
        space_to_depth(mask, (1, 3, 3))


def test_voxel_lesion_loss_weighs_lesion_and_background_halves_and_skips_studies_without_masks():
    from medalign.losses.lesion import VoxelLesionLoss

    loss = VoxelLesionLoss(2.0, (1, 2, 2))
    mask = torch.zeros(2, 1, 4, 4)
    mask[0, 0, 0, 0] = 1  # one lesion voxel among 16 in the first study
    logits = torch.zeros(2, 4, 1, 2, 2, requires_grad=True)  # (B, 2x2 voxels per cell, 1x2x2 cells)
    valid = torch.tensor([True, False])
    out = loss(logits, mask, valid)["voxel_lesion_loss"]
    assert float(out) == pytest.approx(2.0 * math.log(2.0), rel=1e-5)  # p = 0.5 everywhere: log 2 for both halves
    out.backward()
    g = logits.grad
    assert g[1].abs().sum() == 0  # the study without a mask does not count
    # the lone lesion voxel pulls as hard as the 15 background voxels together (balanced halves)
    assert float(-g[0, 0, 0, 0, 0]) == pytest.approx(float(g[0].clamp(min=0).sum()), rel=1e-5)
    none = loss(logits, mask, torch.tensor([False, False]))["voxel_lesion_loss"]
    assert float(none) == 0.0 and none.requires_grad
    with pytest.raises(ValueError, match="do not match the folded mask"):
        loss(torch.zeros(2, 9, 1, 2, 2), mask, valid)
