"""UNetEncoder: shapes, gradients to every parameter, 2D/3D, bad inputs; parametrised over the registry."""
from __future__ import annotations

import pytest
import torch

from medalign.models.image3d import (IMAGE_ENCODERS, CoordChannels, DoubleConv, LocalContrast, UNetEncoder, build_image_encoder,
                                    contrast_shares, mirror_lr)

SHAPE3 = (8, 32, 32)


@pytest.mark.parametrize("name", IMAGE_ENCODERS.names())
@pytest.mark.parametrize("spatial_dims", [3, 2])
def test_registry_forward_backward(name: str, spatial_dims: int) -> None:
    torch.manual_seed(0)
    shape = SHAPE3 if spatial_dims == 3 else SHAPE3[1:]
    # Small channels keep the paper preset cheap; the preset's structure (no stem, flatten) is kept.
    enc = IMAGE_ENCODERS.build(name, in_channels=2, spatial_dims=spatial_dims, input_shape=shape,
                               channels=(4, 8, 8), local_level=1)
    x = torch.randn(2, 2, *shape)
    out = enc(x)
    assert out["global"].shape == (2, enc.out_dim)
    assert out["local"].shape[:2] == (2, 8) and out["local"].dim() == spatial_dims + 2
    (out["global"].square().sum() + out["local"].sum()).backward()
    for n, p in enc.named_parameters():
        assert p.grad is not None, f"{n} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{n} has non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{n} has an all-zero gradient"


def test_paper_preset_shapes() -> None:
    enc = IMAGE_ENCODERS.build("unet3d", in_channels=3)  # 32-64-128-256 on 16x112x112
    assert enc.channels == (32, 64, 128, 256)
    assert enc.final_shape == (2, 14, 14)  # three MaxPool(2): 16->2, 112->14
    assert enc.fc.in_features == 256 * 2 * 14 * 14 and enc.out_dim == 256
    assert isinstance(enc.levels[0][1], DoubleConv)
    gn, conv, relu = list(enc.levels[1][1].block)[:3]  # GroupNorm -> Conv3d -> ReLU
    assert isinstance(gn, torch.nn.GroupNorm) and isinstance(conv, torch.nn.Conv3d) and isinstance(relu, torch.nn.ReLU)


def test_cpu_preset_local_and_stem() -> None:
    enc = IMAGE_ENCODERS.build("unet3d_cpu", in_channels=3, input_shape=(16, 64, 64))
    out = enc(torch.randn(1, 3, 16, 64, 64))
    # stem (1,2,2) -> 16x32x32, local level 2 after two pools -> 4x8x8 with 32 channels
    assert out["local"].shape == (1, 32, 4, 8, 8)
    # avg + max of every level: 2 * (8 + 16 + 32 + 64)
    assert out["global"].shape == (1, 240) and enc.out_dim == 240
    conv, bn, relu = list(enc.levels[1][1].block)[:3]  # Conv3d -> BatchNorm3d -> ReLU ("cbr")
    assert isinstance(conv, torch.nn.Conv3d) and isinstance(bn, torch.nn.BatchNorm3d) and isinstance(relu, torch.nn.ReLU)


def test_avg_pool_any_size() -> None:
    enc = UNetEncoder(1, channels=(4, 8), global_pool="avg", input_shape=None, local_level=0)
    assert enc.out_dim == 8
    for shape in [(4, 16, 16), (6, 20, 24)]:
        assert enc(torch.randn(1, 1, *shape))["global"].shape == (1, 8)


def test_bad_inputs() -> None:
    enc = UNetEncoder(2, channels=(4, 8), input_shape=SHAPE3, local_level=1)
    with pytest.raises(ValueError, match="built for input"):
        enc(torch.randn(1, 2, 8, 16, 16))
    with pytest.raises(ValueError, match="expects"):
        enc(torch.randn(1, 3, *SHAPE3))
    with pytest.raises(ValueError, match="spatial_dims"):
        UNetEncoder(1, spatial_dims=4)
    with pytest.raises(ValueError, match="too small"):
        UNetEncoder(1, channels=(4, 8, 8, 8, 8), input_shape=(4, 8, 8))
    with pytest.raises(ValueError, match="local_level"):
        UNetEncoder(1, channels=(4, 8), local_level=2)


@pytest.mark.parametrize("pool,width", [("avg", 8), ("max", 8), ("avgmax", 16)])
def test_global_pool_options_shapes_and_values(pool, width):
    import torch

    enc = UNetEncoder(1, channels=(4, 8), global_pool=pool, input_shape=None, local_level=0)
    x = torch.randn(2, 1, 8, 16, 16)
    g = enc(x)["global"]
    assert g.shape == (2, width) and enc.out_dim == width
    h = enc.levels[1](enc.levels[0](enc.stem(x))).flatten(2)  # (B, 8, S) last map
    if pool == "max":
        assert torch.allclose(g, h.amax(-1))
    if pool == "avgmax":
        assert torch.allclose(g[:, :8], h.mean(-1)) and torch.allclose(g[:, 8:], h.amax(-1))
    with pytest.raises(ValueError, match="global_pool must be"):
        UNetEncoder(1, channels=(4, 8), global_pool="sum", input_shape=None, local_level=0)


@pytest.mark.parametrize("order,norm", [("gcr", torch.nn.GroupNorm), ("cgr", torch.nn.GroupNorm), ("cbr", torch.nn.BatchNorm3d)])
def test_layer_order(order, norm) -> None:
    block = list(DoubleConv(2, 8, layer_order=order).block)
    kinds = [type(m) for m in block]
    expect = [norm, torch.nn.Conv3d, torch.nn.ReLU] if order[0] != "c" else [torch.nn.Conv3d, norm, torch.nn.ReLU]
    assert kinds == expect * 2
    # a norm before the first conv normalises the input channels, after it the output channels
    first_norm = block[0] if order[0] != "c" else block[1]
    width = first_norm.num_channels if isinstance(first_norm, torch.nn.GroupNorm) else first_norm.num_features
    assert width == (2 if order[0] != "c" else 8)
    with pytest.raises(ValueError, match="layer_order"):
        DoubleConv(2, 8, layer_order="crg")


def test_pool_levels_concatenates_levels_in_order() -> None:
    torch.manual_seed(0)
    enc = UNetEncoder(1, channels=(4, 8, 16), global_pool="avgmax", input_shape=None, local_level=0,
                      pool_levels=(0, 2)).eval()
    x = torch.randn(2, 1, 8, 16, 16)
    g = enc(x)["global"]
    assert g.shape == (2, 2 * (4 + 16)) and enc.out_dim == 40
    h0 = enc.levels[0](enc.stem(x))
    h2 = enc.levels[2](enc.levels[1](h0))
    want = torch.cat([h0.flatten(2).mean(-1), h0.flatten(2).amax(-1), h2.flatten(2).mean(-1), h2.flatten(2).amax(-1)], 1)
    assert torch.allclose(g, want, atol=1e-6)
    assert UNetEncoder(1, channels=(4, 8), global_pool="avg", input_shape=None, local_level=0, pool_levels="all").out_dim == 12
    with pytest.raises(ValueError, match="pool_levels"):
        UNetEncoder(1, channels=(4, 8), global_pool="avg", input_shape=None, local_level=0, pool_levels=(2,))
    with pytest.raises(ValueError, match="flatten"):
        UNetEncoder(1, channels=(4, 8), input_shape=(4, 8, 8), local_level=0, pool_levels=(0,))


def test_lr_asymmetry_pools_halves_apart() -> None:
    """|pool(left half) - pool(right half)| per level: zero for a mirror-symmetric map, the one-sided
    signal for a map with signal on one side only, whichever side; the middle column counts for neither."""
    enc = UNetEncoder(1, channels=(2,), global_pool="avgmax", input_shape=None, local_level=0,
                      lr_asymmetry=True).eval()
    assert enc.out_dim == 2 * 2 * 2  # (avg + max) x (whole + asymmetry) x 2 channels
    left = torch.rand(1, 2, 4, 6, 3)
    sym = torch.cat([left, torch.rand(1, 2, 4, 6, 1), left.flip(-1)], dim=-1)  # (1, 2, 4, 6, 7): mirror-symmetric
    out = enc._pool_map(sym)
    assert torch.allclose(out[:, :4], torch.cat([sym.flatten(2).mean(-1), sym.flatten(2).amax(-1)], 1))
    assert torch.allclose(out[:, 4:], torch.zeros(1, 4), atol=1e-6)
    one = torch.zeros(1, 2, 4, 6, 7)
    one[..., 1] = 1.0  # signal in one column of the left half
    half = torch.tensor([[1 / 3, 1 / 3, 1.0, 1.0]])  # avg over the 3 left columns, max
    assert torch.allclose(enc._pool_map(one)[:, 4:], half)
    assert torch.allclose(enc._pool_map(one.flip(-1))[:, 4:], half)  # the same lesion on the right
    mid = torch.zeros(1, 2, 4, 6, 7)
    mid[..., 3] = 1.0  # the midline column: symmetric
    assert torch.allclose(enc._pool_map(mid)[:, 4:], torch.zeros(1, 4))
    with pytest.raises(ValueError, match="lr_asymmetry"):
        UNetEncoder(1, channels=(4, 8), input_shape=(4, 8, 8), local_level=0, lr_asymmetry=True)
    with pytest.raises(ValueError, match="2 columns"):
        enc._pool_map(torch.zeros(1, 2, 4, 6, 1))


def test_lr_asymmetry_cpu_preset_trains() -> None:
    """The demo's encoder with the asymmetry features: sized from the doubled pooling, gradients reach every
    parameter through the whole and the half poolings."""
    torch.manual_seed(0)
    enc = IMAGE_ENCODERS.build("unet3d_cpu", in_channels=2, input_shape=SHAPE3, channels=(4, 8), local_level=1, out_dim=16,
                               lr_asymmetry=True)
    assert enc.fc.in_features == 2 * 2 * (4 + 8)
    x = torch.randn(2, 2, *SHAPE3)
    enc(x)["global"].square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.parameters())


def _head(shape: tuple[int, ...]) -> torch.Tensor:
    """A disc-shaped 'head' (1 inside, 0 outside) on each slice of ``shape`` (D, H, W), off the block grid."""
    h, w = shape[-2:]
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    disc = ((yy - h / 2 + 0.3) ** 2 + (xx - w / 2 - 1.7) ** 2 < (0.4 * h) ** 2).float()  # (H, W)
    return disc.expand(*shape)


def test_local_contrast_is_zero_on_flat_tissue_and_outside_the_head() -> None:
    """The head's edge is no contrast (the background does not count in the surround), an offset of the
    whole head changes nothing, a gain scales it, an absent (all-zero) sequence stays zero."""
    head = _head((4, 29, 31))
    x = torch.stack([2.0 * head, torch.zeros_like(head)])[None]  # (1, 2, 4, 29, 31): flat head, absent 2nd sequence
    y = LocalContrast(4)(x)
    assert y.shape == (1, 4, 4, 29, 31) and torch.equal(y[:, :2], x)
    assert y[:, 2:].abs().max() < 1e-5
    torch.manual_seed(0)
    tissue = torch.randn(4, 29, 31) * head + 3.0 * head  # (D, H, W), non-zero inside the head
    c = LocalContrast(4)(tissue[None, None])[0, 1]
    assert (c[head == 0] == 0).all()
    shifted = LocalContrast(4)((tissue + 5.0 * head)[None, None])[0, 1]
    assert torch.allclose(shifted, c, atol=1e-4)
    assert torch.allclose(LocalContrast(4)((0.5 * tissue)[None, None])[0, 1], 0.5 * c, atol=1e-5)
    with pytest.raises(ValueError, match="block"):
        LocalContrast(0)


def test_local_contrast_keeps_a_thin_lesion_the_strided_stem_averages_away() -> None:
    """A 1x2 bright lesion in flat tissue: its contrast is nearly its whole excess, while a 4x4 patch average
    (what a 1x4x4 stem sees of the raw image) holds an eighth; 2D input gives the same per slice."""
    head = _head((3, 32, 32))
    x = head.clone()
    x[1, 14, 15:17] = 3.0  # excess 2 over the tissue
    c = LocalContrast(4)(x[None, None])[0, 1]
    assert c[1, 14, 15:17].min() > 0.9 * 2.0
    rest = c[1].clone()
    rest[14, 15:17] = 0
    assert rest.abs().max() < 0.05 * 2.0  # around it a faint halo (the lesion raises its neighbours' surround)
    assert c[[0, 2]].abs().max() < 1e-5  # in-plane filter: the slices above and below stay flat
    patch = torch.nn.functional.avg_pool2d(x[1][None, None] - head[1], 4)  # (1, 1, 8, 8): excess per stem patch
    assert patch.max() == pytest.approx(2.0 / 16)  # the lesion straddles two patches: one voxel in each
    c2 = LocalContrast(4, spatial_dims=2)(x[:, None])[:, 1]  # slices as a 2D batch
    assert torch.allclose(c2, c, atol=1e-6)


def test_local_contrast_differentiates_with_respect_to_its_input() -> None:
    """Attribution maps (``eval.localisation``) need d(output)/d(input): with an input that requires grad
    the filter gives the same values and a gradient that matches finite differences."""
    head = _head((2, 9, 11)).double()
    torch.manual_seed(0)
    x = (torch.randn(1, 2, 2, 9, 11, dtype=torch.float64) + 2.0) * head  # (B, C, D, H, W), 0 outside the head
    plain = LocalContrast(4)(x)
    xg = x.clone().requires_grad_(True)
    assert torch.allclose(LocalContrast(4)(xg), plain)
    # head voxels only: the head mask is a step in x, so perturb where it cannot flip
    assert torch.autograd.gradcheck(lambda v: LocalContrast(4)(v * head + 2.0 * head), (x[:, :1].clone().requires_grad_(True),))


def _trains_and_masks_a_sequence(enc: UNetEncoder) -> None:
    """Gradients reach every parameter of a 2-sequence encoder, and a masked sequence counts as a zeroed one."""
    x = torch.randn(2, 2, *SHAPE3)
    enc(x)["global"].square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.parameters())
    enc.eval()
    mask = torch.tensor([[True, False], [True, True]])
    x0 = x.clone()
    x0[0, 1] = 0
    assert torch.allclose(enc(x, mask)["global"], enc(x0, mask.new_ones(2, 2))["global"], atol=1e-6)


def test_local_contrast_encoder_option() -> None:
    """``local_contrast`` doubles the stem's input; gradients reach every parameter; a masked sequence's
    contrast is masked too (the filter runs after the sequence mask); the spec path of the recipes builds it."""
    torch.manual_seed(0)
    enc = IMAGE_ENCODERS.build("unet3d_cpu", in_channels=2, input_shape=SHAPE3, channels=(4, 8), local_level=1,
                               out_dim=16, local_contrast=4)
    assert enc.stem.in_channels == 4 and isinstance(enc.contrast, LocalContrast)
    _trains_and_masks_a_sequence(enc)
    spec = {"name": "unet3d_cpu", "channels": [4, 8], "local_level": 1, "local_contrast": 4}
    built = build_image_encoder(spec, in_channels=3, input_shape=SHAPE3)
    assert built.stem.in_channels == 6


def test_mirror_lr_mirrors_about_each_studys_head_centre() -> None:
    """Column w goes to 2c - w, c the head's mean column, per study (one head centred, one off-centre);
    what would come from outside the grid is 0; mirroring twice gives back what stayed inside."""
    x = torch.arange(2 * 3 * 12, dtype=torch.float32).reshape(2, 1, 3, 12)  # (B, C, H, W)
    head = torch.zeros(2, 1, 3, 12)
    head[0, ..., 2:10] = 1  # centre 5.5: w <-> 11 - w
    head[1, ..., 5:10] = 1  # centre 7: w <-> 14 - w
    m = mirror_lr(x, head)
    assert torch.equal(m[0], x[0].flip(-1))
    assert torch.equal(m[1, ..., 3:12], x[1, ..., 3:12].flip(-1)) and (m[1, ..., :3] == 0).all()
    assert torch.equal(mirror_lr(m, head)[1, ..., 3:12], x[1, ..., 3:12])


def test_bilateral_channel_sees_mirrored_lesions_not_one_sided_ones() -> None:
    """Bright spots at mirrored places on both sides light the bilateral channel there; the same spot on one
    side only leaves it near 0; shifting the whole head shifts the channel with it (the mirror follows the
    head, not the grid); without the option the output is the plain two groups."""
    head = torch.zeros(2, 48, 48)
    head[:, 8:40, 4:36] = 1.0  # (D, H, W): a head off the grid's centre, columns 4-35 (centre 19.5)
    one = head.clone()
    one[:, 20:23, 8:11] = 3.0  # one-sided bright spot, columns 8-10
    both = one.clone()
    both[:, 20:23, 29:32] = 3.0  # its mirror image about column 19.5: columns 29-31
    out = LocalContrast(4, bilateral=True)(torch.stack([one, both])[:, None])  # (2, 3, 2, 48, 48)
    assert out.shape == (2, 3, 2, 48, 48)
    lat = out[:, 2]  # the bilateral channel
    assert lat[1, :, 21, 9].min() > 0.05 and lat[1, :, 21, 30].min() > 0.05
    assert lat[0].max() < 0.2 * lat[1, :, 21, 9].min()
    assert (lat >= 0).all() and (lat[:, :, head[0] == 0] == 0).all()
    shifted = LocalContrast(4, bilateral=True)(torch.roll(both, 8, dims=-1)[None, None])[0, 2]
    assert torch.allclose(shifted, torch.roll(lat[1], 8, dims=-1), atol=1e-5)
    plain = LocalContrast(4)(torch.stack([one, both])[:, None])
    assert torch.allclose(plain, out[:, :2])


def test_bilateral_encoder_option() -> None:
    """``bilateral`` triples the stem's input and needs ``local_contrast``; gradients reach every parameter."""
    torch.manual_seed(0)
    enc = IMAGE_ENCODERS.build("unet3d_cpu", in_channels=2, input_shape=SHAPE3, channels=(4, 8), local_level=1,
                               out_dim=16, local_contrast=4, bilateral=True)
    assert enc.stem.in_channels == 6
    enc(torch.randn(2, 2, *SHAPE3))["global"].square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.parameters())
    with pytest.raises(ValueError, match="bilateral needs local_contrast"):
        IMAGE_ENCODERS.build("unet3d_cpu", in_channels=2, input_shape=SHAPE3, channels=(4, 8), local_level=1, bilateral=True)


def test_contrast_shares_count_head_voxels_above_each_level() -> None:
    """Flat tissue gives 0 at every level; thin lesions raise the share at the levels they exceed and not
    above; more lesion voxels give a larger value (monotone log scale); the background and an absent
    sequence do not count."""
    head = _head((2, 32, 32))
    x = torch.stack([head.clone(), head.clone(), torch.zeros_like(head)])  # (3, D, H, W): 3rd sequence absent
    x[0, 1, 14, 15:17] = 2.2  # excess 1.2: above 0.5 and 1, not 1.5 or 2
    x[1, 1, 14, 15:17] = 2.2
    x[1, 1, 20, 10:16] = 2.2  # the same lesion and five more voxels of it
    out = LocalContrast(4)(x[None])  # (1, 6, D, H, W)
    s = contrast_shares(out[:, 3:], x[None] != 0).reshape(3, 4)  # (C, levels 0.5, 1, 1.5, 2)
    flat = contrast_shares(LocalContrast(4)(head[None, None])[:, 1:], head[None, None] != 0)
    assert flat.abs().max() == 0
    assert s[0, 0] > 0.1 and s[0, 1] > 0.1 and s[0, 2] < 0.01 and s[0, 3] < 0.01
    assert s[1, 0] > s[0, 0] + 0.1 and s[1, 1] > s[0, 1] + 0.1
    assert (s[2] == 0).all()


def test_contrast_shares_encoder_option() -> None:
    """``contrast_shares`` adds 4 numbers per sequence before the output layer; a masked sequence adds none
    of its own (zeros, as its channels); it needs ``local_contrast`` and a global pooling."""
    torch.manual_seed(0)
    kw = dict(in_channels=2, input_shape=SHAPE3, channels=(4, 8), local_level=1, out_dim=16, local_contrast=4)
    enc = IMAGE_ENCODERS.build("unet3d_cpu", **kw, contrast_shares=True)
    plain = IMAGE_ENCODERS.build("unet3d_cpu", **kw)
    assert enc.fc.in_features == plain.fc.in_features + 2 * 4
    _trains_and_masks_a_sequence(enc)
    with pytest.raises(ValueError, match="contrast_shares needs local_contrast"):
        IMAGE_ENCODERS.build("unet3d_cpu", **{**kw, "local_contrast": None}, contrast_shares=True)


def test_coord_channels_values() -> None:
    """Each axis from -1 to 1, the in-plane radius from 0 at the centre to 1 at the corners, the same for
    every study of a batch; the image channels pass unchanged; 2D gives (y, x, r)."""
    x = torch.randn(2, 3, 5, 7, 9)
    y = CoordChannels(3)(x)
    assert y.shape == (2, 3 + 4, 5, 7, 9) and torch.equal(y[:, :3], x)
    z, h, w, r = y[0, 3], y[0, 4], y[0, 5], y[0, 6]
    assert z[0].eq(-1).all() and z[-1].eq(1).all() and h[:, 0].eq(-1).all() and w[..., -1].eq(1).all()
    assert r[:, 3, 4].abs().max() < 1e-6 and r[:, 0, 0].sub(1).abs().max() < 1e-6  # centre, corner
    assert torch.equal(y[0, 3:], y[1, 3:])
    y2 = CoordChannels(2)(torch.randn(1, 1, 7, 9))
    assert y2.shape == (1, 1 + 3, 7, 9)


def test_coord_channels_let_the_pooled_encoder_tell_where_a_lesion_is() -> None:
    """Global pooling is blind to a lesion's position: the same blob moved by whole stem patches, away from the
    edges, gives exactly the same features; with the coordinate channels it does not. Sequence masking still
    applies to the images only."""
    torch.manual_seed(0)
    shape = (4, 64, 64)
    centre, side = torch.zeros(1, 1, *shape), torch.zeros(1, 1, *shape)
    centre[..., 1:3, 28:36, 28:36] = 3.0  # near the ventricles
    side[..., 1:3, 28:36, 12:20] = 3.0  # the same blob 16 voxels (4 stem patches) to the side
    kw = dict(input_shape=shape, channels=(4,), local_level=0, stem_stride=(1, 4, 4))
    blind = IMAGE_ENCODERS.build("unet3d_cpu", in_channels=1, **kw).eval()
    assert torch.allclose(blind(centre)["global"], blind(side)["global"], atol=1e-4)  # float sums only
    enc = IMAGE_ENCODERS.build("unet3d_cpu", in_channels=1, coord_channels=True, **kw)
    assert enc.stem.in_channels == 1 + 4
    enc(centre)["global"].square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.parameters())
    enc.eval()
    assert (enc(centre)["global"] - enc(side)["global"]).abs().max() > 5e-3  # 100x the above
    masked = enc(centre, torch.tensor([[False]]))["global"]  # an absent sequence: only the positions are left
    assert torch.allclose(masked, enc(torch.zeros_like(centre))["global"], atol=1e-6)
    spec = {"name": "unet3d_cpu", "channels": [4, 8], "local_level": 1, "coord_channels": True, "local_contrast": 4}
    assert build_image_encoder(spec, in_channels=3, input_shape=SHAPE3).stem.in_channels == 6 + 4


def test_radial_shells_average_each_ring_about_the_grid_centre() -> None:
    """Ring means of a map, through-plane averaged: a signal at the centre lands in the inner ring only, one near
    the sides in the outer ring only, while the whole-map pooling cannot tell them apart; the corners belong to the
    outer ring; 2D maps too; the encoder is sized from the extra rings and trains through them."""
    enc = UNetEncoder(1, channels=(2,), global_pool="avg", input_shape=None, local_level=0, radial_shells=2).eval()
    assert enc.out_dim == 2 + 2 * 2  # whole + 2 rings, 2 channels
    centre, side = torch.zeros(1, 2, 4, 8, 8), torch.zeros(1, 2, 4, 8, 8)
    centre[:, 0, 1, 3:5, 3:5] = 1.0  # 4 voxels of one slice, at the centre
    side[:, 0, 1, 3:5, 0] = side[:, 0, 1, 3:5, 7] = 1.0  # 4 voxels by the sides
    a, b = enc._pool_map(centre), enc._pool_map(side)
    assert torch.allclose(a[:, :2], b[:, :2])  # global pooling: the same
    r = torch.sqrt(torch.linspace(-1, 1, 8)[:, None] ** 2 + torch.linspace(-1, 1, 8)[None, :] ** 2)
    n_in = int((r < 0.5).sum())
    # rings (ch0 in, ch0 out, ch1 in, ch1 out): 4 voxels on 1 of 4 slices, over the ring's columns
    assert torch.allclose(a[:, 2:], torch.tensor([[1 / n_in, 0.0, 0.0, 0.0]]))
    assert torch.allclose(b[:, 2:], torch.tensor([[0.0, 1 / (64 - n_in), 0.0, 0.0]]))
    corner = torch.zeros(1, 2, 8, 8)
    corner[:, 1, 0, 0] = 1.0  # 2D map, channel 1, a corner (radius sqrt 2: the open outer ring)
    enc2 = UNetEncoder(1, channels=(2,), spatial_dims=2, global_pool="avg", input_shape=None, local_level=0,
                       radial_shells=2).eval()
    assert torch.allclose(enc2._pool_map(corner)[:, 2:], torch.tensor([[0.0, 0.0, 0.0, 1 / (64 - n_in)]]))
    with pytest.raises(ValueError, match="radial_shells"):
        UNetEncoder(1, channels=(4, 8), input_shape=(4, 8, 8), local_level=0, radial_shells=2)
    torch.manual_seed(0)
    cpu = IMAGE_ENCODERS.build("unet3d_cpu", in_channels=2, input_shape=SHAPE3, channels=(4, 8), local_level=1,
                               out_dim=16, radial_shells=3, channels_last=True)
    assert cpu.fc.in_features == (2 + 3) * (4 + 8)
    cpu(torch.randn(2, 2, *SHAPE3))["global"].square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in cpu.parameters())
