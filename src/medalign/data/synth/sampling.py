"""Trilinear resampling for the synthetic cohort, compiled with Numba.

Two thirds of a study's synthesis went to ``scipy.ndimage`` resampling at order 1 (the subject
warp, ``map_coordinates``, and each series' acquisition grid, ``affine_transform``), whose
generic spline code spends most of its time per voxel on bookkeeping. These kernels do the same
arithmetic in the same order as SciPy's ``mode="constant", cval=0`` path, so every file the
generator writes stays byte-identical to the SciPy version's (tested against SciPy):

- the input coordinate of an output voxel ``(i, j, k)`` of an affine map is
  ``((offset + m0 * i) + m1 * j) + m2 * k`` per input axis, in float64;
- a coordinate outside ``[0, n - 1]`` on any axis gives 0 (``constant`` mode does not
  interpolate past the edge);
- the weights are ``1 - t`` and ``1 - (1 - t)``; each corner's term is
  ``((value * w0) * w1) * w2``, summed with the last axis fastest, cast to the output's dtype.

At the upper edge (a coordinate exactly ``n - 1``) the missing corner has weight 0; it reads the
edge voxel instead, which adds exactly 0, as SciPy's mirrored read does (finite values).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from numba import njit


def _compiled(**options):
    """``numba.njit`` with its on-disk cache where a cache folder is writable (beside this module,
    ``NUMBA_CACHE_DIR`` or the user's cache); where none is (a read-only install without a writable
    home), Numba refuses ``cache=True`` at import, so the kernels are compiled once per process instead."""
    def wrap(fn):
        try:
            return njit(cache=True, **options)(fn)
        except RuntimeError:  # "cannot cache function ...: no locator available"
            return njit(**options)(fn)
    return wrap


@_compiled(nogil=True, inline="always")
def _axis(c: float, n: int) -> tuple[int, int, float, float]:
    """Lower and upper corner index and their weights along one axis (``0 <= c <= n - 1``)."""
    f = math.floor(c)
    lo = int(f)
    w_lo = 1.0 - (c - f)
    hi = lo + 1 if lo + 1 < n else lo  # weight 0 at the edge: any finite value adds exactly 0
    return lo, hi, w_lo, 1.0 - w_lo


@_compiled(nogil=True, inline="always")
def _trilinear(vol: np.ndarray, c0: float, c1: float, c2: float) -> float:
    """Order-1 interpolation of ``vol`` at one point, 0 outside its extent (see module doc)."""
    n0, n1, n2 = vol.shape
    if c0 < 0.0 or c0 > n0 - 1 or c1 < 0.0 or c1 > n1 - 1 or c2 < 0.0 or c2 > n2 - 1:
        return 0.0
    i0, j0, a0, b0 = _axis(c0, n0)
    i1, j1, a1, b1 = _axis(c1, n1)
    i2, j2, a2, b2 = _axis(c2, n2)
    acc = 0.0
    acc += ((np.float64(vol[i0, i1, i2]) * a0) * a1) * a2
    acc += ((np.float64(vol[i0, i1, j2]) * a0) * a1) * b2
    acc += ((np.float64(vol[i0, j1, i2]) * a0) * b1) * a2
    acc += ((np.float64(vol[i0, j1, j2]) * a0) * b1) * b2
    acc += ((np.float64(vol[j0, i1, i2]) * b0) * a1) * a2
    acc += ((np.float64(vol[j0, i1, j2]) * b0) * a1) * b2
    acc += ((np.float64(vol[j0, j1, i2]) * b0) * b1) * a2
    acc += ((np.float64(vol[j0, j1, j2]) * b0) * b1) * b2
    return acc


@_compiled(nogil=True)
def _affine_kernel(vol: np.ndarray, m: np.ndarray, off: np.ndarray, out: np.ndarray) -> None:
    nx, ny, nz = out.shape
    for i in range(nx):
        for j in range(ny):
            for k in range(nz):
                c0 = ((off[0] + m[0, 0] * i) + m[0, 1] * j) + m[0, 2] * k
                c1 = ((off[1] + m[1, 0] * i) + m[1, 1] * j) + m[1, 2] * k
                c2 = ((off[2] + m[2, 0] * i) + m[2, 1] * j) + m[2, 2] * k
                out[i, j, k] = _trilinear(vol, c0, c1, c2)


@_compiled(nogil=True)
def _coords_kernel(vol: np.ndarray, coords: np.ndarray, out: np.ndarray) -> None:
    nx, ny, nz = out.shape
    for i in range(nx):
        for j in range(ny):
            for k in range(nz):
                out[i, j, k] = _trilinear(vol, np.float64(coords[0, i, j, k]), np.float64(coords[1, i, j, k]),
                                          np.float64(coords[2, i, j, k]))


def _float_volume(vol: np.ndarray) -> np.ndarray:
    # SciPy returns the input's dtype (an integer volume comes back rounded): floats only here
    if vol.ndim != 3 or vol.dtype not in (np.float32, np.float64):
        raise ValueError(f"trilinear sampling takes a 3-D float32/float64 volume, got {vol.dtype} {vol.shape}")
    return np.ascontiguousarray(vol)


def affine_sample(vol: np.ndarray, matrix: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Trilinear sample of ``vol`` on a grid of ``shape``; ``matrix`` (4 x 4) maps output voxel
    indices to input voxel indices. Equals ``scipy.ndimage.affine_transform(vol, matrix[:3, :3],
    matrix[:3, 3], output_shape=shape, order=1)`` bit for bit."""
    vol = _float_volume(vol)
    out = np.empty(tuple(int(s) for s in shape), vol.dtype)  # (X, Y, Z) of the output grid
    m = np.ascontiguousarray(matrix, dtype=np.float64)
    _affine_kernel(vol, m[:3, :3].copy(), m[:3, 3].copy(), out)
    return out


def coords_sample(vol: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Trilinear sample of ``vol`` at ``coords`` (3, X, Y, Z; input voxel indices). Equals
    ``scipy.ndimage.map_coordinates(vol, coords, order=1, mode="constant", cval=0.0)`` bit for bit."""
    vol = _float_volume(vol)
    if coords.ndim != 4 or coords.shape[0] != 3:
        raise ValueError(f"coordinates must be (3, X, Y, Z), got shape {coords.shape}")
    out = np.empty(coords.shape[1:], vol.dtype)  # (X, Y, Z)
    _coords_kernel(vol, np.ascontiguousarray(coords), out)
    return out
