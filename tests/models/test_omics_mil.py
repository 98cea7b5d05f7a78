"""GroupMSA / SNN / Nystrom aggregators: shapes, gradients, exactness against full attention."""
from __future__ import annotations

import pytest
import torch

from medalign.models.mil import (ABMIL, AGGREGATORS, NystromAggregator, PatchDecoder, TransMILAggregator,
                                 exact_attention, moore_penrose_pinv, nystrom_attention)
from medalign.models.omics import GENE_ENCODERS, SNN, GroupMSA


def _all_grads(module: torch.nn.Module) -> None:
    for name, p in module.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"{name} got no gradient"
            assert torch.isfinite(p.grad).all(), f"{name} has non-finite gradient"


@pytest.mark.parametrize("embed", ["per_fragment", "shared"])
def test_groupmsa_shapes_and_gradients(embed):
    torch.manual_seed(0)
    enc = GroupMSA(n_genes=50, n_fragments=8, n_groups=4, dim=16, heads=2, embed=embed)
    out = enc(torch.randn(3, 50))
    assert out["cls"].shape == (3, 16) and out["groups"].shape == (3, 4, 16)
    out["cls"].pow(2).sum().backward()
    _all_grads(enc)


def test_groupmsa_groups_are_independent_before_inter_attention():
    """Changing genes of group 0 only changes group token 0 after the intra-group stage."""
    torch.manual_seed(0)
    enc = GroupMSA(n_genes=32, n_fragments=8, n_groups=4, dim=16, heads=2, dropout=0.0).eval()
    x = torch.randn(1, 32)
    x2 = x.clone()
    x2[0, :8] += 5.0  # group 0 = fragments 0,1 = genes 0..7
    grab = {}
    enc.intra.register_forward_hook(lambda m, i, o: grab.setdefault("h", []).append(o[:, 0]))
    enc(x), enc(x2)
    g1, g2 = grab["h"]  # (N_gr, d) group tokens
    assert not torch.allclose(g1[0], g2[0])
    assert torch.allclose(g1[1:], g2[1:], atol=1e-6)


def test_groupmsa_bad_input():
    enc = GroupMSA(n_genes=50, n_fragments=8, n_groups=4, dim=16, heads=2)
    with pytest.raises(ValueError, match=r"\(B, 50\)"):
        enc(torch.randn(3, 49))
    with pytest.raises(ValueError, match="divisible"):
        GroupMSA(n_genes=50, n_fragments=9, n_groups=4)


def test_snn_selu_alpha_dropout_and_gradients():
    torch.manual_seed(0)
    enc = SNN(n_genes=40, hidden=(32,), dim=8)
    assert any(isinstance(m, torch.nn.AlphaDropout) for m in enc.modules())
    assert any(isinstance(m, torch.nn.SELU) for m in enc.modules())
    out = enc(torch.randn(5, 40))["cls"]
    assert out.shape == (5, 8)
    out.sum().backward()
    _all_grads(enc)
    assert set(GENE_ENCODERS.names()) >= {"groupmsa", "snn"}


def test_nystrom_equals_exact_when_landmarks_are_tokens():
    """With m = N every landmark is one token: Nystrom is exact up to the pseudo-inverse."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 16, 8) * 0.3 for _ in range(3))
    ref = exact_attention(q, k, v)
    approx = nystrom_attention(q, k, v, num_landmarks=16, exact_pinv=True)
    assert torch.allclose(approx, ref, atol=1e-4)
    iterative = nystrom_attention(q, k, v, num_landmarks=16, pinv_iterations=20)
    assert torch.allclose(iterative, ref, atol=1e-3)


def test_nystrom_close_to_exact_on_smooth_short_sequence():
    """Fewer landmarks than tokens, slowly varying tokens (like neighbouring patches): small error."""
    torch.manual_seed(0)
    n, d = 96, 8
    t = torch.linspace(0, 1, n)[:, None]
    base = torch.cat([torch.sin(6 * t + i) for i in range(d)], 1)  # (N, d) smooth
    q = k = (base * 0.5)[None, None]
    v = torch.randn(1, 1, n, d)
    ref = exact_attention(q, k, v)
    approx = nystrom_attention(q, k, v, num_landmarks=24, exact_pinv=True)
    rel = (approx - ref).norm() / ref.norm()
    assert rel < 0.1, f"relative error {rel:.3f}"


def test_pinv_iteration_matches_linalg():
    torch.manual_seed(0)
    a = torch.randn(1, 8, 8).softmax(-1)
    assert torch.allclose(moore_penrose_pinv(a, 30), torch.linalg.pinv(a), atol=1e-3)


def test_nystrom_mask_equals_unpadded():
    """A padded bag with a mask gives the same output on its real tokens as the bag alone."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 40, 8) * 0.3 for _ in range(3))
    ref = nystrom_attention(q, k, v, num_landmarks=5, exact_pinv=True)  # 5 segments of 8
    pad = lambda t: torch.cat([t, torch.randn(1, 2, 24, 8)], 2)  # noqa: E731
    mask = torch.zeros(1, 64, dtype=torch.bool)
    mask[:, :40] = True
    out = nystrom_attention(pad(q), pad(k), pad(v), num_landmarks=8, mask=mask, exact_pinv=True)
    # 64 tokens over 8 landmarks = segments of 8: the same 5 segments + 3 fully masked ones
    assert torch.allclose(out[:, :, :40], ref, atol=1e-4)


@pytest.mark.parametrize("name", ["nystrom", "transmil", "abmil"])
def test_aggregators_shapes_gradients(name):
    torch.manual_seed(0)
    agg = AGGREGATORS.build(name, in_dim=12, dim=16, heads=2, num_landmarks=8)
    bag = torch.randn(2, 50, 12)
    out = agg(bag)
    assert out["cls"].shape == (2, 16)
    out["cls"].sum().backward()
    for pname, p in agg.named_parameters():
        if "mask_token" in pname:  # only used by masked patch modelling
            continue
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    with pytest.raises(ValueError, match=r"\(B, N, 12\)"):
        agg(torch.randn(2, 50, 11))


def test_nystrom_aggregator_mpm_tokens_and_exact_switch():
    torch.manual_seed(0)
    agg = NystromAggregator(in_dim=12, dim=16, heads=2, num_landmarks=4)
    pm = torch.zeros(1, 20, dtype=torch.bool)
    pm[0, ::2] = True
    out = agg(torch.randn(1, 20, 12), patch_mask=pm)
    assert out["tokens"].shape == (1, 20, 16)
    rec = PatchDecoder(16, 12)(out["tokens"])
    assert rec.shape == (1, 20, 12)
    rec.sum().backward()
    assert agg.embed.mask_token.grad is not None and agg.embed.mask_token.grad.abs().sum() > 0
    exact = NystromAggregator(in_dim=12, dim=16, heads=2, attention="exact")
    assert exact(torch.randn(1, 300, 12))["cls"].shape == (1, 16)


def test_transmil_and_abmil_accept_tiny_bags():
    for agg in (TransMILAggregator(in_dim=4, dim=8, heads=2), ABMIL(in_dim=4, dim=8)):
        assert agg(torch.randn(1, 1, 4))["cls"].shape == (1, 8)
        assert agg(torch.randn(1, 3, 4))["cls"].shape == (1, 8)
