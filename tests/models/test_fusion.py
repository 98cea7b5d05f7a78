"""SeriesFusionEncoder: one shared encoder per present series, pooled (late_mean / attention)."""
from __future__ import annotations

import pytest
import torch

from medalign.models.fusion import SeriesFusionEncoder
from medalign.models.image3d import UNetEncoder, build_image_encoder

SPEC = {"name": "unet3d_cpu", "channels": [4, 8], "local_level": 1, "out_dim": 16}
SHAPE = (4, 16, 16)


def _enc(fusion: str, n: int = 4) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_image_encoder({**SPEC, "fusion": fusion}, in_channels=n, input_shape=SHAPE).eval()


@pytest.mark.parametrize("fusion", ["late_mean", "attention"])
def test_shapes_and_weights(fusion: str) -> None:
    enc = _enc(fusion)
    assert isinstance(enc, SeriesFusionEncoder) and isinstance(enc.encoder, UNetEncoder)
    assert enc.encoder.in_channels == 1 and enc.local_dim == 8
    x = torch.randn(3, 4, *SHAPE)
    mask = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 1], [1, 1, 1, 1]], dtype=torch.bool)
    out = enc(x, mask)
    assert out["global"].shape == (3, 16) and out["local"].shape[:2] == (3, 8)
    w = out["series_weights"]
    assert torch.allclose(w.sum(1), torch.ones(3)) and (w[~mask] == 0).all() and (w[mask] > 0).all()
    if fusion == "late_mean":
        assert torch.allclose(w[0], torch.tensor([0.5, 0, 0.5, 0]))


@pytest.mark.parametrize("fusion", ["late_mean", "attention"])
def test_absent_series_content_and_batch_mates_do_not_matter(fusion: str) -> None:
    enc = _enc(fusion)
    x = torch.randn(2, 4, *SHAPE)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    with torch.no_grad():
        a = enc(x, mask)["global"]
        y = x.clone()
        y[0, 2:] = torch.randn(2, *SHAPE) * 5  # what an absent series holds is never read
        b = enc(y, mask)["global"]
        alone = enc(x[:1], mask[:1])["global"]
    assert torch.allclose(a[0], b[0], atol=1e-5)
    assert torch.allclose(a[0], alone[0], atol=1e-5)
    # ...but a present series does change the embedding
    z = x.clone()
    z[0, 0] = torch.randn(*SHAPE)
    with torch.no_grad():
        assert not torch.allclose(enc(z, mask)["global"][0], a[0], atol=1e-4)


def test_single_series_late_mean_is_its_token() -> None:
    enc = _enc("late_mean")
    x = torch.randn(1, 4, *SHAPE)
    mask = torch.tensor([[0, 0, 1, 0]], dtype=torch.bool)
    with torch.no_grad():
        got = enc(x, mask)["global"]
        want = enc.encoder(x[:, 2:3])["global"] + enc.type_embed[2]
    assert torch.allclose(got, want, atol=1e-6)


def test_sequence_type_embedding_tells_series_apart() -> None:
    # the same volume given as two different sequences embeds differently
    enc = _enc("attention")
    v = torch.randn(*SHAPE)
    x = torch.zeros(2, 4, *SHAPE)
    x[0, 0], x[1, 1] = v, v
    mask = torch.tensor([[1, 0, 0, 0], [0, 1, 0, 0]], dtype=torch.bool)
    with torch.no_grad():
        g = enc(x, mask)["global"]
    assert not torch.allclose(g[0], g[1], atol=1e-5)


def test_every_parameter_gets_a_gradient() -> None:
    enc = _enc("attention").train()
    x = torch.randn(4, 4, *SHAPE)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 1, 1], [0, 1, 0, 1]], dtype=torch.bool)
    out = enc(x, mask)
    (out["global"].pow(2).sum() + out["local"].mean()).backward()
    missing = [n for n, p in enc.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing


def test_bad_inputs_are_refused() -> None:
    enc = _enc("attention")
    with pytest.raises(ValueError, match="at least one present series"):
        enc(torch.randn(2, 4, *SHAPE), torch.tensor([[1, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\(B, 4"):
        enc(torch.randn(2, 3, *SHAPE))
    with pytest.raises(ValueError, match="sequence_mask must be"):
        enc(torch.randn(2, 4, *SHAPE), torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="fusion must be one of"):
        build_image_encoder({**SPEC, "fusion": "mid"}, in_channels=4, input_shape=SHAPE)


def test_early_fusion_zeroes_absent_channels() -> None:
    enc = _enc("early")
    assert isinstance(enc, UNetEncoder) and enc.in_channels == 4
    x = torch.randn(1, 4, *SHAPE)
    mask = torch.tensor([[1, 1, 0, 1]], dtype=torch.bool)
    y = x.clone()
    y[0, 2] = 0
    with torch.no_grad():
        assert torch.allclose(enc(x, mask)["global"], enc(y)["global"], atol=1e-6)
