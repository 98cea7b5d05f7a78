"""Known-value, gradient and bad-shape tests for SupCon."""
import math

import pytest
import torch
import torch.nn.functional as F

from medalign.losses.supcon import SupConLoss


def test_supcon_known_value():
    # features e1, e1, e2 with labels 0, 0, 1 and tau = 1: anchors 0 and 1 each have one
    # positive (sim 1) and one negative (sim 0): -log(e / (e + 1)); anchor 2 has no positive.
    f = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    out = SupConLoss(temperature=1.0)(f, torch.tensor([0, 0, 1]))
    assert out["supcon_loss"].item() == pytest.approx(math.log(1 + 1 / math.e), abs=1e-6)


def test_supcon_two_positives_known_value():
    # three identical e1 with the same label + one e2: each e1 anchor has 2 positives (sim 1)
    # and denominator 2e + 1 -> loss = -log(e / (2e + 1)).
    f = torch.tensor([[1.0, 0.0]] * 3 + [[0.0, 1.0]])
    out = SupConLoss(temperature=1.0, name="patient")(f, torch.tensor([3, 3, 3, 5]))
    assert out["patient_loss"].item() == pytest.approx(-math.log(math.e / (2 * math.e + 1)), abs=1e-6)


def test_supcon_equals_ntxent_with_pair_labels():
    # With one positive per anchor (labels = pair ids) SupCon is NT-Xent.
    from medalign.losses.ntxent import NTXentLoss

    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)
    sup = SupConLoss(0.1)(torch.stack([z1, z2], dim=1), torch.arange(4))["supcon_loss"]
    nt = NTXentLoss(0.1)(z1, z2)["contrastive_loss"]
    assert sup.item() == pytest.approx(nt.item(), rel=1e-5)


def test_supcon_reference_random():
    g = torch.Generator().manual_seed(2)
    f, y = torch.randn(6, 4, generator=g), torch.tensor([0, 1, 0, 2, 1, 0])
    z = F.normalize(f, dim=1)
    s = (z @ z.t() / 0.07).tolist()
    terms = []
    for i in range(6):
        pos = [p for p in range(6) if p != i and y[p] == y[i]]
        if not pos:
            continue
        denom = sum(math.exp(s[i][a]) for a in range(6) if a != i)
        terms.append(-sum(math.log(math.exp(s[i][p]) / denom) for p in pos) / len(pos))
    ref = sum(terms) / len(terms)
    assert SupConLoss()(f, y)["supcon_loss"].item() == pytest.approx(ref, rel=1e-4)


def test_supcon_no_positive_is_zero_with_grad():
    f = torch.randn(3, 4, requires_grad=True)
    loss = SupConLoss()(f, torch.tensor([0, 1, 2]))["supcon_loss"]
    assert loss.item() == 0.0
    loss.backward()
    assert f.grad is not None


def test_supcon_gradient_finite():
    f = torch.randn(8, 2, 6, requires_grad=True)
    loss = SupConLoss()(f, torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]))["supcon_loss"]
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(f.grad).all() and f.grad.abs().sum() > 0


def test_supcon_bad_inputs():
    with pytest.raises(ValueError, match="features"):
        SupConLoss()(torch.randn(4), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="labels"):
        SupConLoss()(torch.randn(4, 3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="integers"):
        SupConLoss()(torch.randn(4, 3), torch.zeros(4))
