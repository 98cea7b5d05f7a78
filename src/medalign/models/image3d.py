"""Contracting path of a 3D (or 2D) U-Net as an image encoder: global + local features.

Written here rather than imported from ``pytorch3dunet`` (Wolny et al.): that package pulls
torchvision and a CUDA build of torch, which the pinned CPU install cannot take. The blocks are
the same short ones: DoubleConv = (GroupNorm -> Conv -> ReLU) x 2, MaxPool between levels.

``spatial_dims`` picks Conv2d/Conv3d through a small factory (as MONAI does), so MICLe/HLSS
reuse the same network on 2D slices.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medalign.data.masking import mask_sequences
from medalign.registry import Registry

IMAGE_ENCODERS: Registry[nn.Module] = Registry("image encoder")


def _conv(spatial_dims: int) -> type[nn.Module]:
    return {2: nn.Conv2d, 3: nn.Conv3d}[_check_dims(spatial_dims)]


def _pool(spatial_dims: int) -> type[nn.Module]:
    return {2: nn.MaxPool2d, 3: nn.MaxPool3d}[_check_dims(spatial_dims)]


def _check_dims(spatial_dims: int) -> int:
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    return spatial_dims


def _groups(channels: int, num_groups: int = 8) -> int:
    """Wolny's rule: 8 groups, or 1 when there are fewer channels than groups."""
    return num_groups if channels >= num_groups and channels % num_groups == 0 else 1


LAYER_ORDERS = ("gcr", "cgr", "cbr")


def _norm(kind: str, channels: int, spatial_dims: int) -> nn.Module:
    if kind == "g":
        return nn.GroupNorm(_groups(channels), channels)
    return {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[spatial_dims](channels)


class DoubleConv(nn.Module):
    """(Norm, Conv(k=3, pad=1), ReLU) twice, in Wolny's ``layer_order`` notation.

    ``"gcr"`` (GroupNorm -> Conv -> ReLU; pytorch3dunet's default and the paper's) normalises
    *before* each conv; ``"cgr"`` / ``"cbr"`` (Conv -> GroupNorm/BatchNorm -> ReLU) after it. On the
    synthetic cohort only ``"cbr"`` learned from ~200 studies: a supervised 5-class probe stayed at
    train loss ln 5 with GroupNorm in either position (benchmarks/encoder_variants.py).
    """

    def __init__(self, in_channels: int, out_channels: int, *, spatial_dims: int = 3,
                 layer_order: str = "gcr") -> None:
        super().__init__()
        if layer_order not in LAYER_ORDERS:
            raise ValueError(f"layer_order must be one of {LAYER_ORDERS}, got '{layer_order}'")
        conv = _conv(spatial_dims)
        norm_first = layer_order[0] != "c"
        layers: list[nn.Module] = []
        for c_in in (in_channels, out_channels):
            c_norm = c_in if norm_first else out_channels
            norm = _norm(layer_order[0] if norm_first else layer_order[1], c_norm, spatial_dims)
            # no conv bias, as pytorch3dunet whenever the block has a norm (its shift does that job)
            c = conv(c_in, out_channels, kernel_size=3, padding=1, bias=False)
            layers += [norm, c] if norm_first else [c, norm]
            layers.append(nn.ReLU(inplace=True))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


def _as_tuple(v: int | Sequence[int], n: int) -> tuple[int, ...]:
    if isinstance(v, int):
        return (v,) * n
    v = tuple(int(i) for i in v)
    if len(v) != n:
        raise ValueError(f"expected {n} values, got {v}")
    return v


class LocalContrast(nn.Module):
    """Fixed (unlearned) input filter: each channel followed by its local contrast, (B, C, *S) -> (B, 2C, *S).

    The contrast of a voxel is its value minus the mean of the head voxels (non-zero; the data
    layer zeroes the background) around it, 0 outside the head, so the head's edge is no
    contrast. The surround is 3 x 3 in-plane blocks of ``block`` x ``block`` voxels, its mean
    interpolated back to every voxel: 7x cheaper on CPU than a sliding (3 block)^2 window, and
    smooth. Why: a strided patchify stem averages a lesion two voxels wide into its surround,
    and on the synthetic cohort the trained encoders did not carry white-matter disease (probe
    AUC ~0.6) while a local-contrast statistic, with no training, did (0.80,
    benchmarks/feature_probe.py).

    ``bilateral``: a third group of channels, (B, 3C, *S): each sequence's bright excess (the positive
    contrast) averaged over the same surround, and the minimum of that and its value at the mirrored
    position, mirrored about the head's own left-right centre (the last axis; per study, so a shifted
    or off-centre head keeps its symmetry): "bright on both sides here". Why: on FLAIR alone the trained
    models call confluent white-matter disease, bilateral and near symmetric, an infarct, which is
    one-sided, as tumours and haematomas are; pooled left/right halves (``lr_asymmetry``) cannot tell
    mirrored lesions from lesions on both sides at unrelated places.
    """

    def __init__(self, block: int = 4, spatial_dims: int = 3, bilateral: bool = False) -> None:
        super().__init__()
        if int(block) < 1:
            raise ValueError(f"local_contrast block must be >= 1 voxel, got {block}")
        _check_dims(spatial_dims)  # the filter is in-plane (last two axes) either way
        self.block = int(block)
        self.bilateral = bool(bilateral)

    def _blocks(self, x: torch.Tensor) -> torch.Tensor:
        """Mean of ``x`` (B, C, *S) over the 3 x 3 blocks around each block, per block: (B, C, *S[:-2], h, w)
        with h, w = H, W / block rounded up (times a constant that cancels)."""
        flat = x.reshape(-1, 1, *x.shape[-2:])  # (B * C * D, 1, H, W): in-plane only, 2D kernels are the fast ones
        lo = F.avg_pool2d(flat, self.block, ceil_mode=True)  # (B * C * D, 1, h, w)
        lo = F.avg_pool2d(lo, 3, stride=1, padding=1, count_include_pad=True)
        return lo.reshape(*x.shape[:-2], *lo.shape[-2:])  # (B, C, *S[:-2], h, w)

    @staticmethod
    def _up(lo: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        """Block means (B, C, *S[:-2], h, w) interpolated back to every voxel, (B, C, *S[:-2], *size)."""
        up = F.interpolate(lo.reshape(-1, 1, *lo.shape[-2:]), size=tuple(size), mode="bilinear",
                           align_corners=False)  # (B * C * D, 1, H, W)
        return up.reshape(*lo.shape[:-2], *size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        head = (x != 0).any(dim=1, keepdim=True).to(x.dtype)  # (B, 1, *S): one mask, pooled once
        # padding and partial blocks weigh numerator and denominator alike, so they cancel here
        head_lo = self._blocks(head)  # (B, 1, *S[:-2], h, w)
        weight = self._up(head_lo, size).clamp_min_(1e-6)  # (B, 1, *S)
        surround = self._up(self._blocks(x * head), size).div_(weight)  # (B, C, *S)
        # not torch.sub(..., out=surround): out= has no autograd, and attribution maps
        # (eval.localisation) differentiate with respect to the input
        contrast = (x - surround).mul_(head)  # (B, C, *S), 0 outside the head
        if not self.bilateral:
            return torch.cat([x, contrast], dim=1)  # (B, 2C, *S)
        # at block resolution (16x fewer values in-plane): the mean bright excess around each block, and
        # the smaller of it and its mirror's, mirrored about the head's centre in block units
        excess = self._blocks(contrast.clamp(min=0)) / head_lo.clamp_min(1e-6)  # (B, C, *S[:-2], h, w)
        both = torch.minimum(excess, mirror_lr(excess, head_lo))  # (B, C, *S[:-2], h, w)
        return torch.cat([x, contrast, self._up(both, size) * head], dim=1)  # (B, 3C, *S)


CONTRAST_SHARE_LEVELS = (0.5, 1.0, 1.5, 2.0)  # z units, as benchmarks/feature_probe.py's local-contrast statistics


@torch.no_grad()
def contrast_shares(contrast: torch.Tensor, head: torch.Tensor, levels: Sequence[float] = CONTRAST_SHARE_LEVELS,
                    floor: float = 1e-3) -> torch.Tensor:
    """Per channel, the share of its head voxels whose local contrast exceeds each level: ``contrast``
    and ``head`` (B, C, *S) -> (B, C * len(levels)), log-scaled to [0, 1] (0: none above, 1: all); a
    channel with no head voxel (an absent sequence) gives 0. Why log: the shares of interest span
    0.1 % to a few %. Counted without a gradient: no parameter lies upstream, and a soft count's
    backward costs more still on CPU; an attribution map does not see this path."""
    n = head.flatten(2).sum(-1).clamp_min(1).to(contrast.dtype)  # (B, C)
    s = torch.stack([(contrast > t).flatten(2).sum(-1).to(contrast.dtype) / n for t in levels], dim=-1)  # (B, C, L)
    return ((torch.log(s + floor) - math.log(floor)) / -math.log(floor)).flatten(1)  # (B, C * L)


def mirror_lr(x: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
    """``x`` (B, C, *S) mirrored left-right (last axis) about each study's head centre: the mean column
    of ``head`` (B, 1, *S; any non-negative weights), the mirrored column rounded to the nearest one;
    columns mirrored from outside the grid are 0."""
    width = x.shape[-1]
    cols = torch.arange(width, device=x.device, dtype=x.dtype)  # (W,)
    per_col = head.flatten(1, -2).sum(1)  # (B, W): head voxels in each column
    centre = (per_col * cols).sum(-1) / per_col.sum(-1).clamp_min(1.0)  # (B,)
    src = torch.round(2.0 * centre[:, None] - cols).long()  # (B, W): the column each one mirrors
    inside = ((src >= 0) & (src < width)).to(x.dtype)  # (B, W)
    view = (x.shape[0],) + (1,) * (x.dim() - 2) + (width,)  # (B, 1, ..., W), broadcast over C and *S
    index = src.clamp(0, width - 1).reshape(view).expand_as(x)  # (B, C, *S)
    return torch.gather(x, -1, index) * inside.reshape(view)  # (B, C, *S)


class CoordChannels(nn.Module):
    """Appends the voxel's position to the input (CoordConv, Liu et al. 2018, with its radius
    option): each spatial axis scaled to [-1, 1] and the in-plane distance from the grid's
    centre, (B, C, *S) -> (B, C + dims + 1, *S). Why: a convolution followed by global pooling
    is blind to where a finding lies, and on FLAIR alone "where" is what tells white-matter
    disease (periventricular, both sides) from tumour oedema (one lobe); the data layer centres
    the head on the grid, so the positions are comparable across studies."""

    def __init__(self, spatial_dims: int = 3) -> None:
        super().__init__()
        _check_dims(spatial_dims)
        self.spatial_dims = spatial_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        axes = [torch.linspace(-1.0, 1.0, n, device=x.device, dtype=x.dtype) for n in x.shape[2:]]
        grids = torch.meshgrid(*axes, indexing="ij")  # dims x (*S)
        radius = torch.sqrt(grids[-1] ** 2 + grids[-2] ** 2) / math.sqrt(2.0)  # (*S), in-plane, 0..1
        coords = torch.stack([*grids, radius])  # (dims + 1, *S)
        return torch.cat([x, coords.expand(x.shape[0], *coords.shape)], dim=1)  # (B, C + dims + 1, *S)


class UNetEncoder(nn.Module):
    """Contracting path of a U-Net returning ``{"global": (B, F), "local": (B, C_l, *spatial)}``.

    Args:
        in_channels: input channels (= number of MRI sequences).
        channels: feature maps per level (Wolny/paper: 32-64-128-256).
        spatial_dims: 3 for volumes (B, C, D, H, W), 2 for slices (B, C, H, W).
        input_shape: spatial input size; needed to size the FC layer when ``global_pool="flatten"``.
        global_pool: ``"flatten"`` (paper: flatten the last map, then a fully connected layer)
            or ``"avg"`` / ``"max"`` / ``"avgmax"`` (global average, max, or both concatenated; any
            input size). Max pooling asks "is there a lesion anywhere", which a small lesion
            diluted by averaging over the whole head answers poorly.
        out_dim: size of the global embedding. ``None`` -> 256 for flatten, ``channels[-1]`` for
            avg (then no FC layer).
        local_level: which level's feature map is returned as ``local`` (0-based; GLoRIA's
            sub-region features).
        stem_stride: >1 adds a strided patchify conv before the first level (CPU preset);
            int or one value per spatial dim, e.g. ``(1, 2, 2)`` to keep the 16 slices.
        layer_order: block order in pytorch3dunet's notation: ``"gcr"`` (paper), ``"cgr"``, ``"cbr"``.
        pool_levels: with a global pooling (not flatten), the levels whose maps are pooled and
            concatenated (default: the last only). Early levels see voxel-scale intensity patterns;
            pooling them too gives the embedding "how much of which tissue signal" directly,
            which a small cohort cannot teach the deep levels alone. ``"all"`` = every level.
        lr_asymmetry: with a global pooling, also pool each level's left and right halves of the
            last spatial axis (W; left-right on the canonical RAS grid of ``data.imaging``, which
            centres the head) apart and append ``|left - right|``: how one-sided the signal is.
            Global pooling alone cannot tell a one-sided lesion from a bilateral one of the same
            load (tumour oedema vs confluent white-matter disease on FLAIR); the radiologist's
            cue is symmetry. Halves, not a voxel-wise mirror difference, so the shift jitter and
            an off-centre head move only the few voxels near the midline.
        local_contrast: a block size (voxels in-plane): the input also carries each sequence's
            local contrast at full resolution (:class:`LocalContrast`), before a strided stem
            averages thin lesions away.
        bilateral: with ``local_contrast``, the input also carries where bright excess lies on
            both sides of the head (:class:`LocalContrast`'s ``bilateral``).
        coord_channels: the input also carries each voxel's position (:class:`CoordChannels`).
        contrast_shares: with ``local_contrast`` and a global pooling, the pooled features also carry
            each sequence's share of head voxels above 0.5 / 1 / 1.5 / 2 z units of local contrast
            (:func:`contrast_shares`): how much of the head stands out from its surround, a statistic
            that separates white-matter disease from normal brains on the synthetic cohort without
            training (probe AUC ~0.8) while the trained features did not (``feature_probe.py``).
        radial_shells: with a global pooling, K > 0 also averages each pooled level's map in K in-plane rings
            about the grid's centre (the data layer centres the head; radius scaled so the grid's sides are at 1,
            rings [k/K, (k+1)/K), the last one open), through-plane averaged: how much of a signal lies deep, by
            the ventricles, and how much near the cortex, which global pooling cannot say (issue 20).
        channels_last: 3D only: keep the weights and the maps from the stem on in channels-last order
            (``torch.channels_last_3d``, NDHWC), the layout oneDNN's and cuDNN's 3D convolutions run
            fastest in (``benchmarks/memory_format.py``); the values match the default layout to float
            rounding. Off by default; on in the CPU preset.
    """

    def __init__(
        self,
        in_channels: int,
        channels: Sequence[int] = (32, 64, 128, 256),
        spatial_dims: int = 3,
        input_shape: Sequence[int] | None = (16, 112, 112),
        global_pool: str = "flatten",
        out_dim: int | None = None,
        local_level: int = 2,
        stem_stride: int | Sequence[int] = 1,
        layer_order: str = "gcr",
        pool_levels: Sequence[int] | str | None = None,
        lr_asymmetry: bool = False,
        local_contrast: int | None = None,
        bilateral: bool = False,
        coord_channels: bool = False,
        contrast_shares: bool = False,
        radial_shells: int = 0,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        _check_dims(spatial_dims)
        channels = tuple(int(c) for c in channels)
        if not channels:
            raise ValueError("channels must name at least one level")
        if not 0 <= local_level < len(channels):
            raise ValueError(f"local_level {local_level} out of range for {len(channels)} levels")
        if global_pool not in ("flatten", "avg", "max", "avgmax"):
            raise ValueError(f"global_pool must be 'flatten', 'avg', 'max' or 'avgmax', got '{global_pool}'")
        self.in_channels = in_channels
        self.spatial_dims = spatial_dims
        self.channels = channels
        self.local_level = local_level
        self.global_pool = global_pool
        self.local_dim = channels[local_level]
        if pool_levels == "all":
            pool_levels = range(len(channels))
        self.pool_levels = tuple(int(i) for i in (pool_levels if pool_levels is not None else (len(channels) - 1,)))
        if not self.pool_levels or any(not 0 <= i < len(channels) for i in self.pool_levels):
            raise ValueError(f"pool_levels {pool_levels} out of range for {len(channels)} levels")
        if global_pool == "flatten" and pool_levels is not None:
            raise ValueError("pool_levels needs a global pooling ('avg', 'max', 'avgmax'), not 'flatten'")
        if global_pool == "flatten" and lr_asymmetry:
            raise ValueError("lr_asymmetry needs a global pooling ('avg', 'max', 'avgmax'), not 'flatten'")
        self.lr_asymmetry = bool(lr_asymmetry)
        if radial_shells and global_pool == "flatten":
            raise ValueError("radial_shells needs a global pooling ('avg', 'max', 'avgmax'), not 'flatten'")
        self.radial_shells = int(radial_shells)
        stride = _as_tuple(stem_stride, spatial_dims)
        self.contrast: nn.Module = nn.Identity()
        first_in = in_channels
        if bilateral and local_contrast is None:
            raise ValueError("bilateral needs local_contrast (a block size), e.g. local_contrast: 4")
        if contrast_shares and (local_contrast is None or global_pool == "flatten"):
            raise ValueError("contrast_shares needs local_contrast (a block size) and a global pooling, not 'flatten'")
        self.contrast_shares = bool(contrast_shares)
        if local_contrast is not None:
            self.contrast = LocalContrast(local_contrast, spatial_dims, bilateral=bilateral)
            first_in = (3 if bilateral else 2) * in_channels
        self.coords: nn.Module = nn.Identity()
        if coord_channels:
            self.coords = CoordChannels(spatial_dims)
            first_in += spatial_dims + 1

        conv = _conv(spatial_dims)
        # Strided "patchify" stem: one cheap conv with kernel = stride cuts the voxel count
        # before the first (most expensive) DoubleConv.
        if any(s > 1 for s in stride):
            self.stem: nn.Module = conv(first_in, channels[0], kernel_size=stride, stride=stride)
            first_in = channels[0]
        else:
            self.stem = nn.Identity()
        self.levels = nn.ModuleList()
        c_prev = first_in
        for i, c in enumerate(channels):
            # Wolny's encoder: no pooling before the first level, MaxPool(2) before the others.
            pool = nn.Identity() if i == 0 else _pool(spatial_dims)(kernel_size=2)
            self.levels.append(nn.Sequential(pool, DoubleConv(c_prev, c, spatial_dims=spatial_dims,
                                                              layer_order=layer_order)))
            c_prev = c

        if global_pool == "flatten":
            if input_shape is None:
                raise ValueError("global_pool='flatten' needs input_shape to size the FC layer")
            self.input_shape: tuple[int, ...] | None = _as_tuple(input_shape, spatial_dims)
            self.final_shape = self._final_shape(self.input_shape, stride, len(channels))
            self.out_dim = int(out_dim or 256)
            self.fc: nn.Module = nn.Linear(channels[-1] * math.prod(self.final_shape), self.out_dim)
        else:
            self.input_shape = _as_tuple(input_shape, spatial_dims) if input_shape is not None else None
            self.final_shape = None
            pooled = sum(channels[i] for i in self.pool_levels) * (2 if global_pool == "avgmax" else 1)
            pooled *= 2 if self.lr_asymmetry else 1
            pooled += sum(channels[i] for i in self.pool_levels) * self.radial_shells
            pooled += in_channels * len(CONTRAST_SHARE_LEVELS) if self.contrast_shares else 0
            self.out_dim = int(out_dim or pooled)
            self.fc = nn.Identity() if out_dim is None else nn.Linear(pooled, self.out_dim)
        if channels_last and spatial_dims != 3:
            raise ValueError("channels_last is for 3D encoders (torch.channels_last_3d); use it with spatial_dims=3")
        self.memory_format = torch.channels_last_3d if channels_last else torch.contiguous_format
        if channels_last:
            self.to(memory_format=self.memory_format)  # the 5D conv weights; .to(device) keeps the layout

    @staticmethod
    def _final_shape(shape: tuple[int, ...], stride: tuple[int, ...], n_levels: int) -> tuple[int, ...]:
        out = []
        for s, st in zip(shape, stride):
            s = s // st
            for _ in range(n_levels - 1):
                s //= 2
            if s < 1:
                raise ValueError(f"input_shape {shape} is too small for {n_levels} levels with stem stride {stride}")
            out.append(s)
        return tuple(out)

    def forward(self, x: torch.Tensor, sequence_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``sequence_mask`` (B, C) bool: absent sequences' channels are zeroed (early fusion)."""
        if x.dim() != self.spatial_dims + 2 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"UNetEncoder expects (B, {self.in_channels}, *{self.spatial_dims} spatial dims), got {tuple(x.shape)}"
            )
        if self.global_pool == "flatten" and tuple(x.shape[2:]) != self.input_shape:
            raise ValueError(f"UNetEncoder(global_pool='flatten') was built for input {self.input_shape}, got {tuple(x.shape[2:])}")
        x = mask_sequences(x, sequence_mask)
        inp = self.contrast(x)  # (B, 2C or 3C, *S) with local contrast: [x, its contrast, (bilateral)]
        h = self.stem(self.coords(inp).contiguous(memory_format=self.memory_format))  # same shape, layout only
        local = h
        maps: list[torch.Tensor] = []
        for i, level in enumerate(self.levels):
            h = level(h)  # (B, C_i, *spatial_i)
            maps.append(h)
            if i == self.local_level:
                local = h
        if self.global_pool == "flatten":
            g = h.flatten(1)  # (B, C_last * prod(final_shape))
        else:
            g = torch.cat([self._pool_map(maps[i]) for i in self.pool_levels], dim=1)  # (B, pooled)
            if self.contrast_shares:
                shares = contrast_shares(inp[:, self.in_channels:2 * self.in_channels], x != 0)  # (B, C * 4)
                g = torch.cat([g, shares], dim=1)  # (B, pooled + C * 4)
        return {"global": self.fc(g), "local": local}

    def _pool_map(self, h: torch.Tensor) -> torch.Tensor:
        pooled = self._pool_all(h)  # (B, P)
        if self.radial_shells:
            plane = h.mean(2) if h.dim() == 5 else h  # (B, C, H, W): through-plane mean
            rings = plane.flatten(2) @ self._ring_weights(*plane.shape[-2:], plane)  # (B, C, K)
            pooled = torch.cat([pooled, rings.flatten(1)], dim=1)  # (B, P + C * K)
        if not self.lr_asymmetry:
            return pooled
        half = h.shape[-1] // 2  # an odd middle column (the midline) belongs to neither half
        if half == 0:
            raise ValueError(f"lr_asymmetry needs at least 2 columns on the last axis, a level has {h.shape[-1]}")
        asym = (self._pool_all(h[..., :half]) - self._pool_all(h[..., -half:])).abs()  # (B, P)
        return torch.cat([pooled, asym], dim=1)  # (B, 2P)

    def _ring_weights(self, height: int, width: int, like: torch.Tensor) -> torch.Tensor:
        """(H * W, K) averaging weights of the in-plane rings (a column per ring, summing to 1; a ring with
        no voxel at this size averages nothing)."""
        y = torch.linspace(-1.0, 1.0, height, device=like.device, dtype=like.dtype)
        x = torch.linspace(-1.0, 1.0, width, device=like.device, dtype=like.dtype)
        r = torch.sqrt(y[:, None] ** 2 + x[None, :] ** 2).flatten()  # (H * W,)
        ring = (r * self.radial_shells).long().clamp_(max=self.radial_shells - 1)  # (H * W,)
        w = F.one_hot(ring, self.radial_shells).to(like.dtype)  # (H * W, K)
        return w / w.sum(0).clamp_min(1.0)

    def _pool_all(self, h: torch.Tensor) -> torch.Tensor:
        hf = h.flatten(2)  # (B, C, prod(spatial))
        if self.global_pool == "avg":
            return hf.mean(-1)
        if self.global_pool == "max":
            return hf.amax(-1)
        return torch.cat([hf.mean(-1), hf.amax(-1)], dim=1)  # (B, 2C)


def build_image_encoder(spec: dict | nn.Module | None, *, in_channels: int, input_shape: Sequence[int] | None,
                        default: str = "unet3d") -> nn.Module:
    """The one way recipes get an image encoder.

    ``spec`` is a ready module (returned as is) or ``{"name": <IMAGE_ENCODERS key>, **kwargs}``;
    ``in_channels`` (number of sequences) and ``input_shape`` (the recipe's ``data.shape``) are
    used unless the spec sets its own. ``default`` is the preset when the spec names none:
    the paper's ``"unet3d"`` (CLIP, GLoRIA, supervised); the SSL recipes pass ``"unet3d_cpu"``.
    A 2D encoder is ``{"spatial_dims": 2, ...}`` with a 2-value ``input_shape``.

    ``fusion`` (in the spec): ``"early"`` (default; the paper) stacks the sequences as input
    channels; ``"late_mean"`` / ``"attention"`` build the named encoder with one input channel
    and wrap it in :class:`~medalign.models.fusion.SeriesFusionEncoder` (one shared encoder per
    series, pooled over the present series; ``attn_dim`` sizes its attention scorer).
    """
    if isinstance(spec, nn.Module):
        return spec
    kwargs = dict(spec or {})
    name = kwargs.pop("name", default)
    fusion = kwargs.pop("fusion", "early")
    attn_dim = kwargs.pop("attn_dim", 64)
    kwargs.setdefault("input_shape", input_shape)
    if kwargs["input_shape"] is not None:
        kwargs["input_shape"] = tuple(kwargs["input_shape"])
    if fusion == "early":
        kwargs.setdefault("in_channels", in_channels)
        return IMAGE_ENCODERS.build(name, **kwargs)
    from medalign.models.fusion import FUSIONS, SeriesFusionEncoder

    if fusion not in FUSIONS:
        raise ValueError(f"image_encoder.fusion must be one of {FUSIONS}, got '{fusion}'")
    kwargs["in_channels"] = 1  # one series at a time
    return SeriesFusionEncoder(IMAGE_ENCODERS.build(name, **kwargs), in_channels=in_channels, fusion=fusion,
                               attn_dim=attn_dim)


@IMAGE_ENCODERS.register("unet3d")
def unet3d(in_channels: int = 3, *, spatial_dims: int = 3, input_shape: Sequence[int] | None = (16, 112, 112),
           **kwargs) -> UNetEncoder:
    """Paper preset: 32-64-128-256, no stem stride, flatten + FC (to 256)."""
    kwargs = {"channels": (32, 64, 128, 256), "global_pool": "flatten", **kwargs}
    return UNetEncoder(in_channels, spatial_dims=spatial_dims, input_shape=input_shape, **kwargs)


@IMAGE_ENCODERS.register("unet3d_cpu")
def unet3d_cpu(in_channels: int = 3, *, spatial_dims: int = 3, input_shape: Sequence[int] | None = (16, 112, 112),
               **kwargs) -> UNetEncoder:
    """Light preset for CPUs: strided stem (1, 2, 2) (in 2D: 2), 8-16-32-64, same interface.

    Unlike the paper preset it normalises after each conv (``layer_order="cbr"``) and pools
    every level (avg + max, concatenated): on the 262-study synthetic cohort the paper's blocks
    ("gcr", flatten or last-level pooling) did not fit even a supervised 5-class probe, this did
    (benchmarks/encoder_variants.py).
    """
    stem = (1, 2, 2) if spatial_dims == 3 else 2
    kwargs = {"channels": (8, 16, 32, 64), "stem_stride": stem, "layer_order": "cbr", "global_pool": "avgmax", **kwargs}
    if kwargs["global_pool"] != "flatten":
        kwargs.setdefault("pool_levels", "all")
    return UNetEncoder(in_channels, spatial_dims=spatial_dims, input_shape=input_shape, **kwargs)
