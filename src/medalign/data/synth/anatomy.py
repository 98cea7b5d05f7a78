"""Template anatomy of the synthetic brain cohort: tissue maps, atrophy and the subject warp.

On the MNI152 template grid (2 mm; 4 mm in ``shape_mode="small"``) this makes:

- ``load_anatomy``: grey/white-matter probability maps and brain mask from the MNI152
  templates shipped inside nilearn (no download), CSF = brain - GM - WM, scalp from the T1
  template outside the brain, the lateral ventricles and distance maps to CSF / ventricles;
- ``_tissues``: the maps after age-related atrophy, one continuous number ``atrophy`` in
  [0, 1]: tissue within ``atrophy * 4 mm`` of CSF (sulcal widening) and ``atrophy * 8 mm`` of
  the ventricles (ventricular widening) turns into CSF;
- ``open_sulci``: the template's partial sulcal CSF raised to a per-patient power (randomised
  cohorts), so the gyri show as in real scans;
- ``_elastic``: the subject warp, a smooth random elastic field + radial mass effect around
  space-occupying lesions (applied once on the template grid by ``brain.synthesize_study``).
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from medalign.errors import MedAlignError

TISSUES: tuple[str, ...] = ("gm", "wm", "csf", "scalp")
_ANATOMY_VERSION = 1  # bump when _build_anatomy changes (invalidates the disk cache)


def _anatomy_cache_dir() -> Path:
    env = os.environ.get("MEDALIGN_CACHE_DIR")
    base = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "medalign"
    return base / "anatomy"


@lru_cache(maxsize=4)
def load_anatomy(step_mm: int = 2) -> dict[str, Any]:
    """MNI152 tissue maps from nilearn (bundled, offline), block-averaged to ``step_mm``.

    Returns dict of float32 arrays ``gm, wm, csf, scalp, mask`` on one grid, its ``affine``
    (voxel -> MNI mm), ``ventricles`` and distance maps (voxels) to CSF and to the
    ventricles. Cached per process (forked workers inherit it) and on disk
    (``$MEDALIGN_CACHE_DIR`` or ``~/.cache/medalign``; keyed by nilearn version), because
    reading the 1 mm templates takes seconds.
    """
    import importlib.metadata as md

    if step_mm not in (2, 4):
        raise MedAlignError(f"anatomy step must be 2 or 4 mm, got {step_mm}")
    try:
        ver = md.version("nilearn")
    except md.PackageNotFoundError:  # pragma: no cover
        ver = "unknown"
    path = _anatomy_cache_dir() / f"mni152_{step_mm}mm_v{_ANATOMY_VERSION}_nilearn{ver}.npz"
    if path.exists():
        try:
            with np.load(path) as z:
                res: dict[str, Any] = {k: z[k] for k in z.files}
            res["step_mm"] = float(res["step_mm"])
            return res
        except Exception:  # noqa: BLE001 - a broken cache file is rebuilt
            pass
    res = _build_anatomy(step_mm)
    try:
        from medalign.utils import atomic_path

        with atomic_path(path, suffix=".npz") as tmp:
            np.savez(tmp, **res)
    except OSError:  # read-only home: fine, just slower next time
        pass
    return res


def _build_anatomy(step_mm: int) -> dict[str, Any]:
    import scipy.ndimage as ndi
    from nilearn import datasets
    imgs = {
        "t1": datasets.load_mni152_template(resolution=1),
        "gm": datasets.load_mni152_gm_template(resolution=1),
        "wm": datasets.load_mni152_wm_template(resolution=1),
        "mask": datasets.load_mni152_brain_mask(resolution=1),
    }
    k = step_mm
    ref = imgs["t1"]
    shape = np.array(ref.shape) // k * k
    out: dict[str, Any] = {}
    for name, img in imgs.items():
        a = np.asarray(img.get_fdata(), dtype=np.float32)[: shape[0], : shape[1], : shape[2]]
        # block mean: (X, Y, Z) -> (X/k, k, Y/k, k, Z/k, k) -> mean over the k axes
        a = a.reshape(shape[0] // k, k, shape[1] // k, k, shape[2] // k, k).mean(axis=(1, 3, 5))
        out[name] = a
    affine = ref.affine.copy()
    affine[:3, :3] = affine[:3, :3] * k
    affine[:3, 3] = affine[:3, 3] + ref.affine[:3, :3] @ np.full(3, (k - 1) / 2.0)
    mask = np.clip(out["mask"], 0, 1)
    gm = np.clip(out["gm"], 0, 1) * mask
    wm = np.clip(out["wm"], 0, 1) * mask
    tot = gm + wm
    over = tot > 1
    gm[over] /= tot[over]
    wm[over] /= tot[over]
    csf = np.clip(mask - gm - wm, 0, 1)
    t1 = out["t1"] / max(float(out["t1"].max()), 1e-6)
    scalp = np.clip((t1 - 0.2) / 0.3, 0, 1) * (1 - mask)
    scalp = ndi.gaussian_filter(scalp, 0.5)
    # crop to the head's bounding box (+ margin) to keep every later step small
    head = (scalp + mask) > 0.05
    idx = np.argwhere(head)
    lo = np.maximum(idx.min(0) - 2, 0)
    hi = np.minimum(idx.max(0) + 3, head.shape)
    sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    affine[:3, 3] = affine[:3, 3] + affine[:3, :3] @ lo
    res: dict[str, Any] = {"gm": gm[sl], "wm": wm[sl], "csf": csf[sl], "scalp": scalp[sl], "mask": mask[sl],
           "affine": affine, "step_mm": float(k)}
    res["dist_csf"] = ndi.distance_transform_edt(res["csf"] < 0.5).astype(np.float32)
    depth = ndi.distance_transform_edt(res["mask"] > 0.5)
    vent = (res["csf"] > 0.5) & (depth > 16.0 / k)
    lab, nlab = ndi.label(vent)
    if nlab:  # keep the big components: the lateral ventricles
        sizes = ndi.sum(vent, lab, index=np.arange(1, nlab + 1))
        keep = np.flatnonzero(sizes >= 0.2 * sizes.max()) + 1
        vent = np.isin(lab, keep)
    res["ventricles"] = vent
    res["dist_vent"] = ndi.distance_transform_edt(~vent).astype(np.float32)
    for key in ("gm", "wm", "csf", "scalp", "mask"):
        res[key] = np.ascontiguousarray(res[key], dtype=np.float32)
    return res


def _mm_to_vox(anat: dict, xyz_mm: Sequence[float]) -> np.ndarray:
    return np.linalg.solve(anat["affine"], np.r_[np.asarray(xyz_mm, float), 1.0])[:3]


def _tissues(anat: dict, truth: dict) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Tissue maps after atrophy; also returns the map of tissue that became CSF."""
    vox = anat["step_mm"]
    a = float(truth["atrophy"])
    vent_gain = 1.0
    for f in truth["findings"]:
        if f["kind"] == "others" and f["variant"] == "atrophy" and f["region"] == "ventriculomegaly":
            vent_gain = 1.8
    rs = a * 4.0 / vox          # sulcal widening, voxels
    rv = a * 8.0 * vent_gain / vox  # ventricular widening, voxels
    m = anat["mask"]
    csf0 = anat["csf"]
    grow = np.maximum(np.clip(rs - anat["dist_csf"] + 0.5, 0, 1), np.clip(rv - anat["dist_vent"] + 0.5, 0, 1)) * m
    csf = np.maximum(csf0, grow)
    gm, wm = anat["gm"], anat["wm"]
    tot = gm + wm
    room = np.clip(m - csf, 0, 1)
    scale = np.where(tot > room, room / np.maximum(tot, 1e-6), 1.0).astype(np.float32)
    return {"gm": gm * scale, "wm": wm * scale, "csf": csf, "scalp": anat["scalp"]}, np.clip(csf - csf0, 0, 1)


def _elastic(anat: dict, rng: np.random.Generator, amp_mm: float,
             masses: list[tuple[np.ndarray, float, float]]) -> np.ndarray:
    """Sampling displacement (3, X, Y, Z) in voxels: smooth random field + mass effect."""
    shape = anat["mask"].shape
    coarse = rng.normal(size=(3, 5, 6, 5)).astype(np.float32) * (amp_mm / anat["step_mm"])
    # smooth upsampling of the coarse random field as a tensor product of 1D Gaussian
    # interpolation weights (separable: three small einsums instead of a 3D zoom)
    w = []
    for n, m in zip(shape, coarse.shape[1:]):
        x = np.linspace(0, m - 1, n, dtype=np.float32)[:, None] - np.arange(m, dtype=np.float32)[None]  # (n, m)
        k = np.exp(-0.5 * (x / 0.7) ** 2)
        w.append(k / k.sum(1, keepdims=True))
    u = np.einsum("ia,dabc->dibc", w[0], coarse)  # (3, X, 6, 5)
    u = np.einsum("jb,dibc->dijc", w[1], u)  # (3, X, Y, 5)
    u = np.einsum("kc,dijc->dijk", w[2], u)  # (3, X, Y, Z)
    u = np.ascontiguousarray(u, dtype=np.float32)
    for c, R, k in masses:  # push tissue outwards: sample from nearer the centre
        ext = int(4 * R + 2)
        lo = np.maximum(np.floor(c - ext).astype(int), 0)
        hi = np.minimum(np.ceil(c + ext).astype(int) + 1, shape)
        zz = np.stack(np.meshgrid(*[np.arange(a, b, dtype=np.float32) for a, b in zip(lo, hi)], indexing="ij"))
        d = zz - c.astype(np.float32)[:, None, None, None]  # (3, x, y, z)
        r = np.sqrt((d ** 2).sum(0)) + 1e-3
        mag = k * R * np.minimum(r / R, 1.0) * (R / np.maximum(r, R)) ** 2
        u[(slice(None),) + tuple(slice(a, b) for a, b in zip(lo, hi))] -= d / r * mag
    return u


def open_sulci(tissue: dict[str, np.ndarray], gamma: float) -> dict[str, np.ndarray]:
    """Tissue maps with the template's sulcal CSF raised to the power ``gamma`` (< 1 opens sulci).

    The MNI152 average keeps only partial CSF in the sulci (0.1-0.5 after 2 mm block means), so
    synthetic images barely show the gyri that every real scan shows; ``csf ** gamma`` brings
    those voxels towards CSF, taking the volume from grey matter first (sulcal CSF borders
    cortex), then from white matter. Full CSF (ventricles, the outer surface) is unchanged.
    """
    csf, gm, wm = tissue["csf"], tissue["gm"], tissue["wm"]
    gain = np.clip(np.power(np.clip(csf, 0.0, 1.0), float(gamma)) - csf, 0.0, None)
    gain = np.minimum(gain, gm + wm)
    from_gm = np.minimum(gain, gm)
    return {**tissue, "csf": (csf + gain).astype(np.float32), "gm": (gm - from_gm).astype(np.float32),
            "wm": (wm - (gain - from_gm)).astype(np.float32)}
