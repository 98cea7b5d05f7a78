"""``image_encoder.channels_last`` (the CPU preset's layout): the same values as the default layout to
float rounding, the weights and maps in channels-last order, checkpoints that load either way, 3D only."""
from __future__ import annotations

import pytest
import torch

from medalign.models.image3d import build_image_encoder

SPEC = {"name": "unet3d_cpu", "stem_stride": [1, 2, 2], "channels": [4, 8], "layer_order": "cbr",
        "global_pool": "avgmax", "pool_levels": "all", "out_dim": 16, "local_contrast": 4, "local_level": 1}


def _pair():
    torch.manual_seed(0)
    plain = build_image_encoder(SPEC, in_channels=2, input_shape=(4, 16, 16))
    torch.manual_seed(0)
    fast = build_image_encoder({**SPEC, "channels_last": True}, in_channels=2, input_shape=(4, 16, 16))
    return plain, fast


def test_same_values_in_channels_last_order():
    plain, fast = _pair()
    assert plain.stem.weight.is_contiguous()
    assert fast.stem.weight.is_contiguous(memory_format=torch.channels_last_3d)
    assert not fast.stem.weight.is_contiguous()  # the layout really changed
    x = torch.randn(3, 2, 4, 16, 16)  # (B, C, D, H, W)
    for train in (False, True):
        plain.train(train), fast.train(train)
        a, b = plain(x), fast(x)
        assert torch.allclose(a["global"], b["global"], atol=1e-5)
        assert torch.allclose(a["local"], b["local"], atol=1e-5)
        assert b["local"].is_contiguous(memory_format=torch.channels_last_3d)
    fast(x)["global"].sum().backward()
    assert fast.stem.weight.grad.shape == fast.stem.weight.shape


def test_checkpoints_load_across_layouts_and_2d_is_refused():
    plain, fast = _pair()
    fast.load_state_dict(plain.state_dict())
    assert fast.stem.weight.is_contiguous(memory_format=torch.channels_last_3d)  # loading keeps the layout
    plain.load_state_dict(fast.state_dict())
    x = torch.randn(2, 2, 4, 16, 16)
    plain.eval(), fast.eval()
    assert torch.allclose(plain(x)["global"], fast(x)["global"], atol=1e-5)
    with pytest.raises(ValueError, match="channels_last"):
        build_image_encoder({**SPEC, "channels_last": True, "spatial_dims": 2, "stem_stride": 2},
                            in_channels=2, input_shape=(16, 16))
