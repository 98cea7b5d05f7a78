"""The shared image-encoder helpers: mask_sequences (known values, bad shapes) and the one
build_image_encoder with the default preset each recipe expects."""
from __future__ import annotations

import pytest
import torch

from medalign.data.masking import mask_sequences
from medalign.models.image3d import UNetEncoder, build_image_encoder

PAPER_CHANNELS = (32, 64, 128, 256)  # "unet3d": CLIP, GLoRIA, supervised
CPU_CHANNELS = (8, 16, 32, 64)       # "unet3d_cpu": SimCLR, MICLe, HLSS
SHAPE = (8, 32, 32)


# ---- mask_sequences -------------------------------------------------------------------------
@pytest.mark.parametrize("spatial", [(2, 3, 4), (3, 4)])
def test_mask_sequences_known_values(spatial) -> None:
    x = torch.arange(2 * 3 * torch.Size(spatial).numel(), dtype=torch.float32).reshape(2, 3, *spatial) + 1  # no zeros
    m = torch.tensor([[True, False, True], [False, False, True]])
    y = mask_sequences(x, m)
    assert y.shape == x.shape and y.dtype == x.dtype
    for b in range(2):
        for c in range(3):
            if m[b, c]:
                assert torch.equal(y[b, c], x[b, c]), (b, c)  # present: untouched
            else:
                assert torch.equal(y[b, c], torch.zeros_like(x[b, c])), (b, c)  # missing: exactly 0


def test_mask_sequences_none_keeps_the_image_and_gradients_flow() -> None:
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    assert mask_sequences(x, None) is x
    mask_sequences(x, torch.tensor([[True, False, True], [True, True, False]])).sum().backward()
    assert torch.equal(x.grad[:, :, 0, 0], torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]]))


@pytest.mark.parametrize("shape", [(3,), (2, 2), (3, 2), (2, 3, 1), (6,)])
def test_mask_sequences_wrong_shape_raises(shape) -> None:
    with pytest.raises(ValueError, match=r"sequence_mask must be \(B, C\) = \(2, 3\)"):
        mask_sequences(torch.ones(2, 3, 4, 4, 4), torch.ones(shape, dtype=torch.bool))


# ---- build_image_encoder ------------------------------------------------------------------
def test_builder_default_is_the_paper_preset() -> None:
    enc = build_image_encoder(None, in_channels=2, input_shape=SHAPE)
    assert isinstance(enc, UNetEncoder) and enc.channels == PAPER_CHANNELS and enc.global_pool == "flatten"
    assert enc.in_channels == 2 and enc.input_shape == SHAPE and enc.spatial_dims == 3


def test_builder_ssl_default_and_spec_overrides() -> None:
    enc = build_image_encoder({}, in_channels=2, input_shape=SHAPE, default="unet3d_cpu")
    assert enc.channels == CPU_CHANNELS and enc.global_pool == "avgmax"
    # the spec wins over the default preset and over the data's channels and shape
    spec = {"name": "unet3d_cpu", "channels": [4, 8], "local_level": 1, "in_channels": 1, "input_shape": [4, 16, 16]}
    enc = build_image_encoder(spec, in_channels=2, input_shape=SHAPE)
    assert enc.channels == (4, 8) and enc.in_channels == 1 and enc.input_shape == (4, 16, 16)
    spec2d = {"spatial_dims": 2, "channels": [4, 8], "local_level": 1}
    enc2d = build_image_encoder(spec2d, in_channels=1, input_shape=(28, 28), default="unet3d_cpu")
    assert enc2d.spatial_dims == 2 and enc2d(torch.randn(2, 1, 28, 28))["global"].shape[0] == 2
    module = torch.nn.Identity()
    assert build_image_encoder(module, in_channels=2, input_shape=SHAPE) is module


def _clip(tmp_path):
    from medalign.recipes.clip import ClipRecipe

    return ClipRecipe(sequences=("dwi", "flair"), input_shape=SHAPE, text_encoder={"cache_dir": str(tmp_path)})


def _gloria(tmp_path):
    from medalign.recipes.gloria import GloriaRecipe

    return GloriaRecipe(sequences=("dwi", "flair"), input_shape=SHAPE, text_encoder={"cache_dir": str(tmp_path)})


def _supervised(tmp_path):
    from medalign.recipes.supervised import SupervisedRecipe

    return SupervisedRecipe(sequences=("dwi", "flair"), input_shape=SHAPE)


def _simclr(tmp_path):
    from medalign.recipes.simclr import SimCLRRecipe

    return SimCLRRecipe(sequences=("dwi", "flair"), input_shape=SHAPE)


def _micle(tmp_path):
    from medalign.recipes.micle import MICLeRecipe

    return MICLeRecipe(sequences=("dwi", "flair"), input_shape=SHAPE)


def _hlss(tmp_path):
    from medalign.recipes.hlss import HLSSRecipe

    # no language terms: no text encoder to load; slabs of 8 slices reach the encoder
    return HLSSRecipe(sequences=("dwi", "flair"), input_shape=(16, 32, 32), n_slabs=2, language_weight=0.0,
                      attribute_weight=0.0)


@pytest.mark.parametrize("make,channels,pool", [
    (_clip, PAPER_CHANNELS, "flatten"), (_gloria, PAPER_CHANNELS, "flatten"),
    (_supervised, PAPER_CHANNELS, "flatten"),
    (_simclr, CPU_CHANNELS, "avgmax"), (_micle, CPU_CHANNELS, "avgmax"), (_hlss, CPU_CHANNELS, "avgmax"),
])
def test_each_recipe_gets_its_default_encoder(tmp_path, make, channels, pool) -> None:
    recipe = make(tmp_path)
    enc = getattr(recipe, "image_encoder", None) or recipe.encoder
    assert isinstance(enc, UNetEncoder) and enc.channels == channels and enc.global_pool == pool
    assert enc.in_channels == 2
