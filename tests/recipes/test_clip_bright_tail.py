"""The bright-tail augmentation (``recipe.jitter.tail``, :func:`medalign.recipes.clip.bright_tail`): exact
values, only the tail moves, per sample and channel, and only in training."""
from __future__ import annotations

import torch

from medalign.recipes.clip import ClipRecipe, bright_tail, jitter_batch


def test_bright_tail_caps_and_stretches_exactly_above_the_threshold():
    x = torch.linspace(-2.0, 4.0, 13).reshape(1, 1, 1, 1, 13)  # (B, C, D, H, W): -2.0, -1.5, ..., 4.0
    capped = bright_tail(x, p=1.0, threshold=(1.5, 1.5), gain=(0.0, 0.0))
    assert torch.equal(capped, x.clamp(max=1.5))
    stretched = bright_tail(x, p=1.0, threshold=(1.0, 1.0), gain=(2.0, 2.0))
    expect = torch.where(x > 1.0, 1.0 + 2.0 * (x - 1.0), x)
    assert torch.allclose(stretched, expect)
    assert torch.equal(bright_tail(x, p=0.0), x)  # p = 0: nothing changes


def test_bright_tail_draws_per_sample_and_channel_and_keeps_the_rest():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, 2, 4, 4) * 2  # (B, C, D, H, W)
    y = bright_tail(x, p=0.5, threshold=(1.0, 2.5), gain=(0.0, 0.5), generator=g)
    below = x <= 1.0
    assert torch.equal(y[below], x[below])  # under every threshold nothing moves
    changed = (y != x).flatten(2).any(-1)  # (B, C) channels whose tail moved
    assert 0.3 < changed.float().mean() < 0.7  # about half of the channels, independently
    assert torch.all(y <= x)  # gains below 1 only pull the tail in
    assert torch.all(y[~below] >= 1.0)  # ... never below the threshold it was drawn with
    # through jitter_batch (the config's recipe.jitter.tail) the same transform runs before the gain
    z = jitter_batch(x, tail={"p": 1.0, "threshold": (2.0, 2.0), "gain": (0.0, 0.0)})
    assert torch.equal(z, x.clamp(max=2.0))


def test_the_tail_changes_training_inputs_only():
    rec = ClipRecipe(sequences=("flair",), input_shape=(4, 16, 16), embed_dim=4, gather=False,
                     image_encoder={"name": "unet3d_cpu", "channels": (4, 8), "stem_stride": (1, 2, 2),
                                    "local_level": 1, "global_pool": "avg"}, text_encoder={"device": "cpu"},
                     jitter={"tail": {"p": 1.0, "threshold": (1.0, 1.0), "gain": (0.0, 0.0)}})
    batch = {"image": torch.randn(2, 1, 4, 16, 16) * 3}
    rec.train()
    image, _, _ = rec.image_inputs(batch)
    assert torch.equal(image, batch["image"].clamp(max=1.0))
    rec.eval()
    image, _, _ = rec.image_inputs(batch)
    assert torch.equal(image, batch["image"])
