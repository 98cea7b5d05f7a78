"""Known-value, gradient and bad-shape tests for NT-Xent."""
import math

import pytest
import torch
import torch.nn.functional as F

from medalign.losses.ntxent import NTXentLoss


def test_ntxent_known_value_orthogonal_pairs():
    # Two pairs of identical one-hot vectors, tau = 1. Anchor e1 sees: partner e1 (sim 1),
    # two e2 views (sim 0) -> loss = -log(e / (e + 2)) for every one of the 4 anchors.
    e = torch.eye(2)
    out = NTXentLoss(temperature=1.0)(e.clone(), e.clone())
    assert out["contrastive_loss"].item() == pytest.approx(math.log(1 + 2 / math.e), abs=1e-6)


def test_ntxent_known_value_temperature_and_scale_invariance():
    e = torch.eye(2)
    out = NTXentLoss(temperature=0.1)(3 * e, 0.5 * e)  # norms do not matter
    assert out["contrastive_loss"].item() == pytest.approx(math.log(1 + 2 * math.exp(-10)), abs=2e-6)


def test_ntxent_matches_reference_implementation():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    tau = 0.1
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.t() / tau
    ref = 0.0
    for i in range(10):
        j = (i + 5) % 10
        denom = sum(math.exp(sim[i, k].item()) for k in range(10) if k != i)
        ref += -math.log(math.exp(sim[i, j].item()) / denom)
    ref /= 10
    assert NTXentLoss(tau)(z1, z2)["contrastive_loss"].item() == pytest.approx(ref, rel=1e-5)


def test_ntxent_groups_remove_false_negatives():
    # Pairs 0 and 1 belong to one patient: with groups they are not negatives of each other,
    # leaving only the pair-2 views as negatives: loss = -log(e / (e + 2 * e^0)) for pairs 0/1 anchors.
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    plain = NTXentLoss(1.0)(z, z)["contrastive_loss"].item()
    grouped = NTXentLoss(1.0)(z, z, groups=torch.tensor([7, 7, 9]))["contrastive_loss"].item()
    a01 = -math.log(math.e / (math.e + 2))  # anchors of pairs 0/1: negatives are the two e2 views
    a2 = -math.log(math.e / (math.e + 4))  # anchors of pair 2: four e1 views at sim 0
    assert grouped == pytest.approx((4 * a01 + 2 * a2) / 6, abs=1e-6)
    assert grouped < plain


def test_ntxent_gradient_flows_and_finite():
    z1 = torch.randn(4, 6, requires_grad=True)
    z2 = torch.randn(4, 6, requires_grad=True)
    loss = NTXentLoss(0.1)(z1, z2)["contrastive_loss"]
    loss.backward()
    assert torch.isfinite(loss)
    assert z1.grad is not None and z1.grad.abs().sum() > 0 and torch.isfinite(z2.grad).all()


@pytest.mark.parametrize("a,b", [((4, 6), (3, 6)), ((4,), (4,)), ((2, 3, 4), (2, 3, 4))])
def test_ntxent_bad_shapes(a, b):
    with pytest.raises(ValueError, match="NT-Xent"):
        NTXentLoss()(torch.randn(*a), torch.randn(*b))


def test_ntxent_bad_groups_and_temperature():
    with pytest.raises(ValueError, match="groups"):
        NTXentLoss()(torch.randn(3, 2), torch.randn(3, 2), groups=torch.zeros(4))
    with pytest.raises(ValueError, match="temperature"):
        NTXentLoss(temperature=0.0)
