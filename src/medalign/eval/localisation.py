"""Localisation of a finding by an attention/saliency map, measured against lesion masks.

Three metrics per study, each in [0, 1], computed on the cached voxel grid (D, H, W):

- pointing game: is the map's maximum inside the lesion? Ties are resolved in expectation
  (the fraction of the maximal voxels that lie in the lesion), so a constant map scores the
  lesion's volume fraction instead of whatever voxel ``argmax`` happens to return first.
- attention mass: share of the (non-negative) map's total mass that lies inside the lesion.
- voxel AUROC: the map as a voxel classifier of lesion vs. background (Mann-Whitney with
  average ranks for ties; 0.5 = no information).

The uniform-attention baseline is closed form: pointing = mass = lesion fraction, AUROC = 0.5.
:func:`head_uniform_scores` is the stronger "uniform inside the head" baseline (a map that only
separates head from background already beats the plain uniform one).
:func:`gradcam_map` gives a Grad-CAM-style map for any recipe whose image encoder is a
:class:`~medalign.models.image3d.UNetEncoder` (used for the CLIP recipe, which has no attention).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from medalign.utils import display_window

METRICS: tuple[str, ...] = ("pointing", "mass", "auroc")


def upsample_map(grid_map, shape: Sequence[int]) -> np.ndarray:
    """Trilinear upsampling of a (d, h, w) map to ``shape`` (D, H, W), as float64 numpy."""
    import torch
    import torch.nn.functional as F

    t = torch.as_tensor(np.asarray(grid_map, dtype=np.float32))
    if t.dim() != len(shape):
        raise ValueError(f"map has {t.dim()} dims, target shape {tuple(shape)} has {len(shape)}")
    mode = {3: "trilinear", 2: "bilinear"}[t.dim()]
    up = F.interpolate(t[None, None], size=tuple(int(s) for s in shape), mode=mode, align_corners=False)
    return up[0, 0].double().numpy()  # (D, H, W)


def _pair(heat, mask) -> tuple[np.ndarray, np.ndarray]:
    h = np.asarray(heat, dtype=np.float64)
    m = np.asarray(mask) > 0
    if h.shape != m.shape:
        raise ValueError(f"map shape {h.shape} != mask shape {m.shape}")
    if not m.any():
        raise ValueError("mask has no lesion voxel")
    if not np.isfinite(h).all():
        raise ValueError("map has non-finite values")
    return h.ravel(), m.ravel()


def pointing_game(heat, mask) -> float:
    """1.0 if the map's maximum is in the lesion, 0.0 if not; tied maxima -> fraction in lesion."""
    h, m = _pair(heat, mask)
    top = h >= h.max()
    return float(m[top].mean())


def attention_mass(heat, mask) -> float:
    """Share of the map's mass inside the lesion (negative values clipped to 0; all-zero -> uniform)."""
    h, m = _pair(heat, mask)
    h = np.clip(h, 0.0, None)
    total = h.sum()
    if total <= 0:
        return float(m.mean())
    return float(h[m].sum() / total)


def voxel_auroc(heat, mask) -> float | None:
    """AUROC of voxel values for lesion vs. background; None if the mask covers every voxel."""
    from scipy.stats import rankdata

    h, m = _pair(heat, mask)
    n_pos, n_neg = int(m.sum()), int((~m).sum())
    if n_neg == 0:
        return None
    r = rankdata(h)  # average ranks for ties
    return float((r[m].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def localisation_scores(heat, mask) -> dict[str, float | None]:
    """All three metrics for one map/mask pair."""
    return {"pointing": pointing_game(heat, mask), "mass": attention_mass(heat, mask),
            "auroc": voxel_auroc(heat, mask)}


def uniform_scores(mask) -> dict[str, float | None]:
    """The uniform-attention baseline for one mask (closed form)."""
    m = np.asarray(mask) > 0
    if not m.any():
        raise ValueError("mask has no lesion voxel")
    frac = float(m.mean())
    return {"pointing": frac, "mass": frac, "auroc": 0.5 if frac < 1 else None}


def head_uniform_scores(image, mask, *, threshold: float = 0.0) -> dict[str, float | None]:
    """A stronger baseline: attention spread evenly over the head (voxels where any channel of the
    preprocessed image (C, D, H, W) exceeds ``threshold``; the background is 0 after preprocessing).
    A map that merely separates head from background scores exactly this."""
    head = (np.asarray(image) > threshold).any(axis=0).astype(np.float64)  # (D, H, W)
    return localisation_scores(head, mask)


def summarise(per_study: Sequence[dict], *, n_boot: int = 1000, seed: int = 0) -> dict[str, dict]:
    """Mean of each metric over studies with a bootstrap (studies resampled) 95% CI."""
    from medalign.eval.bootstrap import bootstrap_ci

    out = {}
    for k in METRICS:
        vals = np.asarray([r[k] for r in per_study if r.get(k) is not None], dtype=np.float64)
        if len(vals) == 0:
            out[k] = {"value": None, "lo": None, "hi": None, "n": 0}
            continue
        ci = bootstrap_ci(lambda v: float(np.mean(v)), vals, n=n_boot, seed=seed)
        ci["n"] = int(len(vals))
        out[k] = ci
    return out


SIZE_BUCKETS = ((0.005, "lesion < 0.5% of the volume"), (0.02, "0.5-2%"), (float("inf"), "> 2%"))


def size_bucket(row: dict) -> str:
    """The lesion-size bucket of a per-study row (by its ``lesion_fraction`` of the volume)."""
    return next(name for top, name in SIZE_BUCKETS if row["lesion_fraction"] < top)


def breakdown(rows: list[dict], key: Any, *, n_boot: int = 1000, seed: int = 0,
              methods: Sequence[str] = ("gloria", "gloria_prior", "clip_gradcam")) -> dict:
    """{group: {method: summary with CIs, "n": count}} for the maps scored per study, grouped by ``key(row)``."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(key(r), []).append(r)
    return {g: {"n": len(rs), **{m: summarise([r[m] for r in rs], n_boot=n_boot, seed=seed)
                                 for m in methods if all(m in r for r in rs)}}
            for g, rs in sorted(groups.items())}


def find_image_encoder(module):
    """The first :class:`UNetEncoder` inside ``module`` (for Grad-CAM hooks)."""
    from medalign.models.image3d import UNetEncoder

    for m in module.modules():
        if isinstance(m, UNetEncoder):
            return m
    raise ValueError(f"{type(module).__name__} has no UNetEncoder to take a Grad-CAM map from")


def gradcam_map(recipe, image, sequence_mask, text: str, *, encoder=None) -> np.ndarray:
    """Grad-CAM on the encoder's ``local`` feature map for the score cos(image, text).

    image (C, D, H, W) or (1, C, D, H, W); returns a non-negative (d, h, w) map on the local
    grid (upsample with :func:`upsample_map`). weights_c = mean_voxels d score / d A_c;
    map = ReLU(sum_c weights_c A_c).
    """
    import torch
    import torch.nn.functional as F

    encoder = encoder or find_image_encoder(recipe)
    x = torch.as_tensor(image, dtype=torch.float32)
    if x.dim() == 4:
        x = x[None]  # (1, C, D, H, W)
    sm = None if sequence_mask is None else torch.as_tensor(sequence_mask, dtype=torch.bool).reshape(1, -1)
    captured: dict = {}

    def hook(_m, _inp, out):
        loc = out["local"]
        loc.retain_grad()
        captured["local"] = loc

    handle = encoder.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            x = x.requires_grad_(True)  # makes the graph exist even if every weight is frozen
            img = F.normalize(recipe.encode_image(x, sm), dim=-1)  # (1, E)
            with torch.no_grad():
                txt = F.normalize(recipe.encode_text([text]), dim=-1)  # (1, E)
            score = (img * txt).sum()
            score.backward()
    finally:
        handle.remove()
    a = captured["local"]                       # (N, C_l, d, h, w): N = 1, or one per series (late fusion)
    g = a.grad
    if g is None:
        raise ValueError("no gradient reached the encoder's local features")
    w = g.mean(dim=tuple(range(2, g.dim())), keepdim=True)  # (N, C_l, 1, 1, 1)
    # per-series maps (each already weighted by its share in the score) add up to the study's map
    cam = torch.relu((w * a).sum(1)).sum(0)     # (d, h, w)
    return cam.detach().double().numpy()


def lesion_slices(mask, n: int = 1) -> list[int]:
    """Axial slice(s) (axis 0 of (D, H, W)) around the lesion's centre; the middle slice without one."""
    m = None if mask is None else np.asarray(mask) > 0
    if m is None or not m.any():
        d = 0 if m is None else m.shape[0]
        return [d // 2] if m is not None else [0]
    area = m.reshape(m.shape[0], -1).sum(1)  # (D,) lesion voxels per slice
    z = np.flatnonzero(area)
    centre = int(round(float((z * area[z]).sum() / area[z].sum())))
    lo = max(0, centre - n // 2)
    return [s for s in range(lo, min(m.shape[0], lo + n))]


def attention_overlay_png(image, heat, mask, path, *, sequences: Sequence[str] | None = None, title: str = "",
                          slices: Sequence[int] | None = None, n_slices: int = 1, orientation: str = "RAS"):
    """PNG: for each chosen axial slice (rows) and each sequence (columns), the image in grey with the
    upsampled attention ``heat`` (D, H, W) in colour and the lesion ``mask`` outlined in cyan, in the one
    display convention (``medalign.utils.axial_for_display``; axes as ``orientation`` says), with L/R
    markers and the sequence name on every panel."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medalign.utils import atomic_write_bytes, axial_for_display, mark_axes

    img = np.asarray(image, dtype=np.float32)  # (C, D, H, W)
    h = np.asarray(heat, dtype=np.float64)
    if img.shape[1:] != h.shape:
        raise ValueError(f"image grid {img.shape[1:]} != attention grid {h.shape}")
    slices = list(slices) if slices is not None else lesion_slices(mask, n_slices)
    c = img.shape[0]
    names = list(sequences) if sequences else [f"ch{i}" for i in range(c)]
    hn = (h - h.min()) / (h.max() - h.min() + 1e-12)
    fig, axes = plt.subplots(len(slices), c, figsize=(2.4 * c, 2.4 * len(slices)), squeeze=False)
    for r, z in enumerate(slices):
        for ch in range(c):
            ax = axes[r, ch]
            ax.imshow(display_window(axial_for_display(img[ch, z], orientation)), cmap="gray", vmin=0, vmax=1)
            ax.imshow(axial_for_display(hn[z], orientation), cmap="jet", alpha=0.4, vmin=0, vmax=1)
            if mask is not None and np.asarray(mask)[z].any():
                ax.contour(axial_for_display(np.asarray(mask)[z] > 0, orientation), levels=[0.5], colors="cyan",
                           linewidths=0.8)
            ax.set_xticks([]), ax.set_yticks([])
            name = names[ch] if ch < len(names) else f"ch{ch}"
            mark_axes(ax, name)
            ax.set_title(f"{name}, axial slice {z}", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path
