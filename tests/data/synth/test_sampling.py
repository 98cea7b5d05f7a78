"""The generator's compiled trilinear sampling (``synth.sampling``) against SciPy's order-1
``affine_transform`` / ``map_coordinates``, bit for bit: the cohort's files must stay what the
SciPy version wrote (every figure of the record was drawn with it)."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi
from scipy.spatial.transform import Rotation

from medalign.data.synth.sampling import affine_sample, coords_sample


def _volume(rng: np.random.Generator, dtype, shape=(19, 23, 17)) -> np.ndarray:
    vol = ndi.gaussian_filter(rng.random(shape), 1.5).astype(dtype)
    vol[:3] = 0  # air at one side, as around a head
    return vol


def _acquisition(rng: np.random.Generator) -> np.ndarray:
    """An acquisition-like map: rotation of a few degrees, anisotropic voxels, a shift that puts
    part of the output outside the volume."""
    t = np.eye(4)
    t[:3, :3] = Rotation.from_euler("xyz", rng.normal(0, 6, 3), degrees=True).as_matrix() @ np.diag(rng.uniform(0.4, 3.0, 3))
    t[:3, 3] = rng.normal(0, 4, 3)
    return t


def _bits(a: np.ndarray) -> np.ndarray:
    return a.view(np.int32 if a.dtype == np.float32 else np.int64)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_affine_sample_equals_scipy_bit_for_bit(dtype):
    rng = np.random.default_rng(0)
    for _ in range(8):
        vol, t = _volume(rng, dtype), _acquisition(rng)
        shape = tuple(int(s) for s in rng.integers(8, 30, 3))
        ref = ndi.affine_transform(vol, t[:3, :3], t[:3, 3], output_shape=shape, order=1)
        out = affine_sample(vol, t, shape)
        assert out.dtype == ref.dtype and out.shape == ref.shape
        assert np.array_equal(_bits(out), _bits(ref))
        assert (out == 0).any() and (out != 0).any()  # both the outside and the inside were exercised


def test_edges_identity_and_points_just_outside():
    rng = np.random.default_rng(1)
    vol = _volume(rng, np.float32) + 1.0  # no zeros inside: an edge read as 0 would show
    assert np.array_equal(affine_sample(vol, np.eye(4), vol.shape), vol)  # every coordinate an integer, the far edges too
    n = np.array(vol.shape, float) - 1
    pts = np.array([[0, 0, 0], n, [n[0], 5.5, 3.25], [-1e-9, 4, 4], [n[0] + 1e-9, 4, 4], [4, 4, -0.5],
                    [n[0] - 1e-12, n[1], n[2] - 0.5]]).T  # (3, P)
    coords = pts[:, :, None, None]  # (3, P, 1, 1)
    ref = ndi.map_coordinates(vol, coords, order=1, mode="constant", cval=0.0)
    out = coords_sample(vol, coords)
    assert np.array_equal(_bits(out), _bits(ref))
    assert out[3, 0, 0] == 0 and out[4, 0, 0] == 0 and out[1, 0, 0] == vol[-1, -1, -1]  # no interpolation past the edge


@pytest.mark.parametrize("coord_dtype", [np.float32, np.float64])
def test_coords_sample_equals_scipy_on_a_warp(coord_dtype):
    rng = np.random.default_rng(2)
    vol = _volume(rng, np.float32)
    u = ndi.gaussian_filter(rng.normal(0, 1, (3, *vol.shape)), (0, 2, 2, 2)) * 12  # smooth displacement, voxels
    coords = (np.indices(vol.shape) + u).astype(coord_dtype)  # (3, X, Y, Z)
    ref = ndi.map_coordinates(vol, coords, order=1, mode="constant", cval=0.0)
    out = coords_sample(vol, coords)
    assert np.array_equal(_bits(out), _bits(ref))
    assert (out == 0).any()  # some points pushed outside


def test_without_a_writable_cache_folder_the_kernels_still_load_and_agree():
    """A read-only install without a writable home leaves Numba no cache location; it then refuses
    ``cache=True`` when the module is imported. The kernels must compile in memory instead."""
    import subprocess
    import sys

    code = ("import numba.core.caching as c; c.CacheImpl._locator_classes = []\n"  # no location is usable
            "import numpy as np, scipy.ndimage as ndi\n"
            "from medalign.data.synth.sampling import affine_sample\n"
            "v = np.random.default_rng(0).random((9, 10, 11)).astype(np.float32)\n"
            "t = np.eye(4); t[:3, :3] = [[0.9, 0.1, 0], [-0.1, 0.9, 0], [0, 0, 2.5]]; t[:3, 3] = [-1.5, 0.7, -2]\n"
            "ref = ndi.affine_transform(v, t[:3, :3], t[:3, 3], output_shape=(12, 12, 5), order=1)\n"
            "assert np.array_equal(affine_sample(v, t, (12, 12, 5)).view(np.int32), ref.view(np.int32))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="float32/float64"):
        affine_sample(np.zeros((4, 4, 4), np.uint8), np.eye(4), (4, 4, 4))  # SciPy would round: not this path
    with pytest.raises(ValueError, match="3-D"):
        coords_sample(np.zeros((4, 4), np.float32), np.zeros((3, 2, 2, 2)))
    with pytest.raises(ValueError, match=r"\(3, X, Y, Z\)"):
        coords_sample(np.zeros((4, 4, 4), np.float32), np.zeros((2, 2, 2, 2)))
