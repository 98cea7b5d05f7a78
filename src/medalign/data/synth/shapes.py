"""Lesion shapes of the synthetic brain cohort: the soft irregular ellipsoid most lesion drawers
(``synth.lesions``, ``synth.wm_disease``) are made of, and the cone of an arterial territory."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def blob(shape: tuple[int, ...], center_vox: np.ndarray, radii_vox: Sequence[float],
         rng: np.random.Generator, irregular: float = 0.2, soft: float = 0.6,
         axes: np.ndarray | None = None) -> np.ndarray:
    """Soft irregular ellipsoid (values 0..1), full-size float32; random orientation, or the
    orthonormal columns of ``axes`` (3 x 3: axis k of the blob has radius ``radii_vox[k]``)."""
    import scipy.ndimage as ndi

    out = np.zeros(shape, np.float32)
    r = np.asarray(radii_vox, float)
    ext = int(math.ceil(r.max() * (1 + irregular) + 2))
    c = np.asarray(center_vox, float)
    lo = np.maximum(np.floor(c - ext).astype(int), 0)
    hi = np.minimum(np.ceil(c + ext).astype(int) + 1, shape)
    if np.any(hi <= lo):
        return out
    q = np.linalg.qr(rng.normal(size=(3, 3)))[0] if axes is None else np.asarray(axes, float)  # rotation
    zz = np.stack(np.meshgrid(*[np.arange(a, b, dtype=np.float32) for a, b in zip(lo, hi)], indexing="ij"))
    d = zz - c.astype(np.float32)[:, None, None, None]  # (3, x, y, z)
    loc = np.einsum("ij,jxyz->ixyz", q.T.astype(np.float32), d)  # (3, x, y, z) in blob axes
    rho = np.sqrt(np.sum((loc / r.astype(np.float32)[:, None, None, None]) ** 2, axis=0))  # (x, y, z)
    if irregular > 0:
        noise = ndi.gaussian_filter(rng.normal(size=rho.shape).astype(np.float32), max(r.min() / 2, 1.0))
        noise /= max(float(np.abs(noise).max()), 1e-6)
        rho = rho * (1 + irregular * noise)
    val = np.clip((1 - rho) * (r.mean() / soft) + 0.5, 0, 1)
    out[tuple(slice(a, b) for a, b in zip(lo, hi))] = val
    return out


def wedge(shape: tuple[int, ...], apex_vox: np.ndarray, tip_vox: np.ndarray, tan_half: float,
          rng: np.random.Generator, irregular: float = 0.15, soft: float = 1.0, beyond: float = 0.0) -> np.ndarray:
    """Soft irregular cone (values 0..1), full-size float32: its apex at ``apex_vox``, opening towards
    ``tip_vox`` with half-angle ``atan(tan_half)`` and running ``beyond`` voxels past it (the caller cuts
    it with the brain mask); the side edge wanders by ``irregular`` (smooth noise), ``soft`` voxels wide."""
    import scipy.ndimage as ndi

    out = np.zeros(shape, np.float32)
    a, tip = np.asarray(apex_vox, float), np.asarray(tip_vox, float)
    axis = tip - a
    length = float(np.linalg.norm(axis))
    if length < 1.0:
        return out
    u = axis / length
    reach = length + beyond
    r_max = reach * tan_half * (1 + irregular) + 2
    ends = np.stack([a, a + u * reach])
    lo = np.maximum(np.floor(ends.min(0) - r_max).astype(int), 0)
    hi = np.minimum(np.ceil(ends.max(0) + r_max).astype(int) + 1, shape)
    if np.any(hi <= lo):
        return out
    zz = np.stack(np.meshgrid(*[np.arange(p, q, dtype=np.float32) for p, q in zip(lo, hi)], indexing="ij"))
    d = zz - a.astype(np.float32)[:, None, None, None]  # (3, x, y, z) from the apex
    t = np.einsum("i,ixyz->xyz", u.astype(np.float32), d)  # (x, y, z) depth along the axis
    side = np.sqrt(np.maximum((d ** 2).sum(0) - t ** 2, 0.0))  # (x, y, z) distance from the axis
    if irregular > 0:
        noise = ndi.gaussian_filter(rng.normal(size=t.shape).astype(np.float32), max(length / 8, 1.0))
        noise /= max(float(np.abs(noise).max()), 1e-6)
        side = side * (1 + irregular * noise)
    val = np.clip((t * tan_half - side) / soft + 0.5, 0, 1)  # inside the cone's side
    val *= np.clip(t / soft + 0.5, 0, 1) * np.clip((reach - t) / soft + 0.5, 0, 1)  # between apex and far end
    out[tuple(slice(p, q) for p, q in zip(lo, hi))] = val
    return out
