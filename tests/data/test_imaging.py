"""Readers (NIfTI, DICOM series), geometry and preprocess_study on tiny hand-made volumes."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medalign.data.imaging import PreprocessConfig, canonical_direction, head_mask, preprocess_study
from medalign.data.volume_io import read_volume
from medalign.errors import CohortError


def ellipsoid(shape=(20, 24, 12), center=None, radii=None, value=100.0, noise=2.0, seed=0) -> np.ndarray:
    """Array (i, j, k) with a bright ellipsoid 'head' and a brighter blob 'lesion'."""
    rng = np.random.default_rng(seed)
    idx = np.indices(shape).astype(float)
    c = np.asarray(center if center is not None else [(s - 1) / 2 for s in shape], float)
    r = np.asarray(radii if radii is not None else [s * 0.35 for s in shape], float)
    d = sum(((idx[i] - c[i]) / r[i]) ** 2 for i in range(3))
    vol = np.where(d <= 1, value, 0.0)
    blob = sum(((idx[i] - (c[i] + r[i] * 0.3)) / (r[i] * 0.3)) ** 2 for i in range(3)) <= 1
    vol[blob] = value * 2
    return (vol + rng.normal(0, noise, shape) * (d <= 1.2)).astype(np.float32)


def write_nifti(path: Path, arr: np.ndarray, affine: np.ndarray | None = None) -> Path:
    nib.save(nib.Nifti1Image(arr, np.eye(4) if affine is None else affine), str(path))
    return path


def test_read_nifti_keeps_spacing_and_world_orientation(tmp_path):
    arr = ellipsoid()
    aff = np.diag([2.0, 3.0, 4.0, 1.0])
    img = read_volume(write_nifti(tmp_path / "a.nii.gz", arr, aff))
    assert img.GetSize() == arr.shape  # sitk size is (x, y, z) = nibabel (i, j, k)
    assert img.GetSpacing() == pytest.approx((2.0, 3.0, 4.0))
    # NIfTI RAS affine -> ITK LPS: x and y flip sign.
    assert np.reshape(img.GetDirection(), (3, 3)) == pytest.approx(np.diag([-1.0, -1.0, 1.0]))
    np.testing.assert_allclose(sitk.GetArrayFromImage(img), arr.transpose(2, 1, 0))


def test_read_4d_needs_volume_index(tmp_path):
    arr = np.stack([ellipsoid(), ellipsoid() * 2], axis=-1)  # (i, j, k, t)
    p = write_nifti(tmp_path / "dwi4d.nii.gz", arr)
    with pytest.raises(CohortError, match="4D image with 2 volumes"):
        read_volume(p, study_id="s1")
    img = read_volume(p, volume_index=1)
    np.testing.assert_allclose(sitk.GetArrayFromImage(img), arr[..., 1].transpose(2, 1, 0))
    with pytest.raises(CohortError, match="out of range"):
        read_volume(p, volume_index=5)


def test_read_dicom_series_folder(tmp_path):
    arr = (ellipsoid(shape=(16, 16, 6)) * 10).astype(np.int16)  # (x, y, z)
    img = sitk.GetImageFromArray(arr.transpose(2, 1, 0))  # sitk wants (z, y, x)
    img.SetSpacing((0.9, 0.9, 5.0))
    img.SetOrigin((-10.0, 20.0, 30.0))
    folder = tmp_path / "dicom"
    folder.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    series_uid = "1.2.826.0.1.3680043.2.1125.1.1"
    for k in range(img.GetDepth()):
        sl = img[:, :, k]
        for tag, val in {"0008|0060": "MR", "0020|000e": series_uid, "0020|000d": series_uid + ".0",
                         "0020|0013": str(k + 1), "0020|0037": "1\\0\\0\\0\\1\\0",
                         "0020|0032": "\\".join(map(str, img.TransformIndexToPhysicalPoint((0, 0, k)))),
                         "0028|0030": "0.9\\0.9", "0018|0050": "5.0"}.items():
            sl.SetMetaData(tag, val)
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(sl)
    vol = read_volume(folder, study_id="d1")
    assert vol.GetSize() == (16, 16, 6)
    assert vol.GetSpacing() == pytest.approx((0.9, 0.9, 5.0), abs=1e-3)
    assert vol.GetOrigin() == pytest.approx((-10.0, 20.0, 30.0), abs=1e-3)
    np.testing.assert_allclose(sitk.GetArrayFromImage(vol), arr.transpose(2, 1, 0))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CohortError, match="no DICOM series"):
        read_volume(empty, study_id="d2")


def test_canonical_direction_codes():
    assert canonical_direction("LPS") == (1, 0, 0, 0, 1, 0, 0, 0, 1)
    assert np.reshape(canonical_direction("RAS"), (3, 3)).tolist() == np.diag([-1.0, -1.0, 1.0]).tolist()
    with pytest.raises(CohortError, match="third letter"):
        canonical_direction("RSA")
    with pytest.raises(CohortError, match="3-letter"):
        canonical_direction("RRS")


def test_head_mask_constant_background_and_otsu():
    arr = np.full((8, 10, 10), -3.0, np.float32)
    arr[2:6, 3:7, 3:7] = np.linspace(-5, 5, 64).reshape(4, 4, 4)  # tissue darker AND brighter than bg
    m = head_mask(arr)
    assert m[2:6, 3:7, 3:7].all() and m.sum() == 64
    noisy = np.random.default_rng(0).normal(0, 1, (8, 10, 10)).astype(np.float32)
    noisy[2:6, 3:7, 3:7] += 50
    assert head_mask(noisy)[2:6, 3:7, 3:7].all()


def _cfg(**kw):
    base = dict(sequences=("dwi", "t2s", "flair"), shape=(8, 16, 16), reference="flair", register=False,
                reg_spacing=2.0)
    base.update(kw)
    return PreprocessConfig(**base)


def test_preprocess_is_orientation_invariant(tmp_path):
    """The same anatomy stored with flipped/permuted voxel axes gives the same output grid."""
    arr = ellipsoid(shape=(20, 24, 12))
    aff = np.diag([2.0, 2.0, 3.0, 1.0])
    aff[:3, 3] = [-19.0, -23.0, -16.5]
    a = write_nifti(tmp_path / "ras.nii.gz", arr, aff)
    # Flip i (x -> left) and swap j/k: new voxel (i', j', k') = old (19 - i, k, j) with a matching affine.
    arr2 = np.ascontiguousarray(arr[::-1].transpose(0, 2, 1))
    aff2 = np.zeros((4, 4))
    aff2[0, 0] = -2.0
    aff2[1, 2] = 2.0
    aff2[2, 1] = 3.0
    aff2[:3, 3] = aff[:3, 3] + [19 * 2.0, 0, 0]
    aff2[3, 3] = 1
    b = write_nifti(tmp_path / "las.nii.gz", arr2, aff2)
    assert nib.aff2axcodes(aff2) != nib.aff2axcodes(aff)
    ra = preprocess_study({"flair": a}, _cfg(), study_id="a")
    rb = preprocess_study({"flair": b}, _cfg(), study_id="b")
    np.testing.assert_allclose(ra.image, rb.image, atol=1e-4)
    assert ra.info["spacing_dhw_mm"] == pytest.approx(rb.info["spacing_dhw_mm"])


def test_preprocess_output_contract_and_missing_channel(tmp_path):
    arr = ellipsoid()
    f = write_nifti(tmp_path / "flair.nii.gz", arr, np.diag([2.0, 2.0, 3.0, 1.0]))
    d = write_nifti(tmp_path / "dwi.nii.gz", arr * 0.5 + 10, np.diag([2.0, 2.0, 3.0, 1.0]))
    lesion = (arr > 150).astype(np.uint8) * 2
    m = write_nifti(tmp_path / "mask.nii.gz", lesion, np.diag([2.0, 2.0, 3.0, 1.0]))
    assert _cfg().normalise == "zscore_unclipped"  # the default
    r = preprocess_study({"dwi": d, "t2s": None, "flair": f}, _cfg(normalise="robust"), study_id="s", mask_path=m)
    assert r.image.shape == (3, 8, 16, 16) and r.image.dtype == np.float32
    assert r.sequence_mask.tolist() == [True, False, True]
    assert not r.image[1].any()  # missing sequence -> zero channel
    assert 0.0 <= r.image.min() and r.image.max() <= 1.0  # robust normalisation to [0, 1]
    assert r.image[2].max() == pytest.approx(1.0)
    # Background (corners) is 0 after normalisation inside the head mask.
    assert r.image[2, :, 0, 0].max() == 0.0
    assert r.mask is not None and r.mask.shape == (8, 16, 16) and r.mask.dtype == np.uint8
    assert set(np.unique(r.mask)) <= {0, 2} and (r.mask == 2).any()  # nearest neighbour keeps labels
    # The lesion sits where the bright blob is.
    assert r.image[2][r.mask == 2].mean() > r.image[2][(r.mask == 0) & (r.image[2] > 0)].mean()
    for how in ("zscore", "zscore_unclipped"):
        z = preprocess_study({"flair": f}, _cfg(normalise=how), study_id="s")
        head = z.image[2] != 0
        assert abs(float(z.image[2][head].mean())) < 0.2


def test_preprocess_fixed_spacing_and_reference_fallback(tmp_path):
    arr = ellipsoid()
    d = write_nifti(tmp_path / "dwi.nii.gz", arr, np.diag([2.0, 2.0, 3.0, 1.0]))
    r = preprocess_study({"dwi": d}, _cfg(spacing=(4.0, 3.0, 3.0)), study_id="s")
    assert r.info["reference"] == "dwi"  # flair absent -> first available sequence
    assert r.info["spacing_dhw_mm"] == pytest.approx([4.0, 3.0, 3.0])
    assert r.sequence_mask.tolist() == [True, False, False]
    with pytest.raises(CohortError, match="none of the sequences"):
        preprocess_study({"t1": d}, _cfg(), study_id="s9")


def test_registration_recovers_a_known_shift(tmp_path):
    shape = (40, 40, 24)
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    ref = ellipsoid(shape=shape, radii=(13, 11, 8), seed=1)
    # Same anatomy moved by 3 voxels (6 mm) along i and 2 voxels along k, different contrast.
    mov = 300.0 - ellipsoid(shape=shape, center=(22.5, 19.5, 13.5), radii=(13, 11, 8), seed=2)
    mov[ellipsoid(shape=shape, center=(22.5, 19.5, 13.5), radii=(13, 11, 8), noise=0) == 0] = 0
    f = write_nifti(tmp_path / "flair.nii.gz", ref, aff)
    t = write_nifti(tmp_path / "t2s.nii.gz", mov.astype(np.float32), aff)
    cfg = _cfg(sequences=("t2s", "flair"), shape=(12, 20, 20), register=True, reg_iterations=60)
    r = preprocess_study({"t2s": t, "flair": f}, cfg, study_id="reg")
    reg = r.info["per_sequence"]["t2s"]["registration"]
    assert not reg["reverted"]
    assert reg["metric_after"] < reg["metric_before"]  # Mattes MI is negative: lower is better
    # NIfTI i axis -> ITK x with flipped sign; k -> z. Moving content sits at +6 mm (i), +4 mm (k) in RAS.
    tx = reg["translation_mm"]
    assert abs(abs(tx[0]) - 6.0) < 1.5 and abs(abs(tx[2]) - 4.0) < 1.5 and abs(tx[1]) < 1.5
    # Deterministic (fixed non-zero sampling seed): the cache must not depend on when it was built.
    again = preprocess_study({"t2s": t, "flair": f}, cfg, study_id="reg")
    np.testing.assert_allclose(again.image, r.image, atol=1e-5)
    # Aligned: the two heads (un-normalised, background 0) overlap better than without registration.
    kw = dict(sequences=("t2s", "flair"), shape=(12, 20, 20), normalise="none")
    yes = preprocess_study({"t2s": t, "flair": f}, _cfg(register=True, reg_iterations=60, **kw), study_id="r")
    no = preprocess_study({"t2s": t, "flair": f}, _cfg(**kw), study_id="n")

    def dice(img):
        a, b = img[0] > 50, img[1] > 50
        return 2 * (a & b).sum() / (a.sum() + b.sum())

    assert dice(yes.image) > dice(no.image) + 0.05


def test_normalisers_known_values_and_bright_lesion_contrast():
    from medalign.data.imaging import _normalise

    # head = 200 voxels of tissue from 0.5 to 1.5 plus one lesion voxel at 5.0; background 0
    arr = np.zeros((2, 201), np.float32)
    arr[0, :200] = np.linspace(0.5, 1.5, 200)
    arr[0, 200] = 5.0
    head = np.zeros_like(arr, dtype=bool)
    head[0] = True
    lo, hi = np.percentile(arr[head], [1.0, 99.0])
    assert hi < 5.0  # the lesion is above the 99th percentile
    robust, info = _normalise(arr, head, "robust", (1.0, 99.0))
    assert (info["p_lo"], info["p_hi"]) == pytest.approx((lo, hi))
    assert robust[0, 200] == pytest.approx(1.0) and robust[0, 0] == pytest.approx(0.0)
    c = np.clip(arr[0], lo, hi)
    mu, sd = c.mean(), c.std()
    clipped, _ = _normalise(arr, head, "zscore", (1.0, 99.0))
    unclipped, _ = _normalise(arr, head, "zscore_unclipped", (1.0, 99.0))
    # the clipped z-score flattens the lesion to the brightest tissue ...
    assert clipped[0, 200] == pytest.approx((hi - mu) / sd, rel=1e-5)
    assert clipped[0, 200] == pytest.approx(clipped[0, 199], abs=0.05)
    # ... the unclipped one keeps it at its distance, with the same (outlier-robust) statistics
    assert unclipped[0, 200] == pytest.approx((5.0 - mu) / sd, rel=1e-5)
    assert unclipped[0, 200] > clipped[0, 200] + 5
    np.testing.assert_allclose(unclipped[0, 2:198], clipped[0, 2:198], atol=1e-6)
    assert not unclipped[1].any() and not clipped[1].any()  # outside the head stays 0


def _atrophic_head(csf_share: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 1-D "head": tissue ~ N(1, 0.1), a share of dark CSF ~ N(0.2, 0.1), 20 lesion voxels at 1.5."""
    rng = np.random.default_rng(seed)
    n = 4000
    x = rng.normal(1.0, 0.1, n).astype(np.float32)
    k = int(csf_share * n)
    x[:k] = rng.normal(0.2, 0.1, k)
    lesion = np.zeros(n, bool)
    lesion[-20:] = True
    x[lesion] = 1.5
    return x[None], np.ones((1, n), bool), lesion[None]


def test_median_mad_keeps_the_tissue_unit_whatever_the_csf_share():
    from medalign.data.imaging import _normalise

    arr, head, _ = _atrophic_head(0.0)
    out, _ = _normalise(arr, head, "median_mad", (1.0, 99.0))
    med = np.median(arr)
    mad = 1.4826 * np.median(np.abs(arr - med))
    np.testing.assert_allclose(out, (arr - med) / mad, rtol=1e-5, atol=1e-6)
    contrast = {}
    for how in ("zscore_unclipped", "median_mad"):
        for share in (0.05, 0.2):  # a young brain vs an atrophic one with wide sulci and ventricles
            a, h, les = _atrophic_head(share)
            o, _ = _normalise(a, h, how, (1.0, 99.0))
            tissue = (a > 0.5) & ~les
            contrast[how, share] = float(o[les].mean() - o[tissue].mean())
    # the z-score's SD grows with the CSF share, so the same lesion fades (real WMH FLAIRs: SD / MAD
    # 1.7-2.3 vs 1.1-1.7 in the synthetic cohort) ...
    assert contrast["zscore_unclipped", 0.2] < 0.65 * contrast["zscore_unclipped", 0.05]
    # ... the median / MAD of the head stay on the tissue (while it is most of the head): the lesion
    # keeps most of its contrast (above 40 % CSF the median leaves the tissue too)
    assert contrast["median_mad", 0.2] > 0.75 * contrast["median_mad", 0.05]
    assert contrast["median_mad", 0.05] == pytest.approx(5.0, rel=0.1)  # 0.5 above tissue of SD 0.1
    # outside the head stays 0; a head of one value (MAD 0) falls back to the percentile range
    a2 = np.concatenate([np.full((1, 100), 1.0, np.float32), np.zeros((1, 100), np.float32)], 0)
    a2[0, :10] = 3.0
    h2 = np.zeros_like(a2, bool)
    h2[0] = True
    o2, _ = _normalise(a2, h2, "median_mad", (1.0, 99.0))
    assert np.isfinite(o2).all() and not o2[1].any() and o2[0, 0] > o2[0, 50]


def test_display_window_keeps_background_black():
    from medalign.utils import display_window

    sl = np.zeros((4, 4), np.float32)
    sl[1:3, 1:3] = [[-1.0, 0.5], [1.0, 2.0]]  # a z-scored head; the background is exactly 0
    out = display_window(sl, (0.0, 100.0))
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == 1.0
    assert not out[0].any() and not out[:, 0].any()  # background black, not mid-grey
    np.testing.assert_allclose(out[1:3, 1:3], [[0.0, 0.5], [2 / 3, 1.0]], atol=1e-6)
    assert display_window(np.zeros((2, 2))).max() == 0.0  # empty image: no division by zero


def test_skull_stripped_edges_keep_the_brain_intensity(tmp_path):
    """A skull-stripped brain (constant 0 outside) on thick native slices: no output voxel blends
    brain with the background. Before, a voxel straddling the brain's edge took a value between the
    two, which z-scoring turned into a dark rim (and, where the outline changes between thick
    slices, dark crescents) that no tissue has."""
    rng = np.random.default_rng(0)
    shape = (64, 64, 9)  # (i, j, k): 1 mm in-plane, 8 mm slices, like a clinical 2D FLAIR
    idx = np.indices(shape).astype(float)
    brain = ((idx[0] - 31.5) / 26) ** 2 + ((idx[1] - 31.5) / 22) ** 2 + ((idx[2] - 4) / 3.6) ** 2 <= 1
    arr = np.where(brain, 100.0 + rng.normal(0, 3, shape), 0.0).astype(np.float32)
    p = write_nifti(tmp_path / "stripped.nii.gz", arr, np.diag([1.0, 1.0, 8.0, 1.0]))
    raw = preprocess_study({"flair": p}, _cfg(shape=(12, 24, 24), normalise="none"), study_id="s").image[2]
    assert (raw > 85).sum() > 0.2 * raw.size  # the brain is there, at its own intensity
    assert ((raw > 5) & (raw < 85)).sum() == 0  # and nothing between it and the background
    z = preprocess_study({"flair": p}, _cfg(shape=(12, 24, 24)), study_id="s").image[2]
    assert z[z != 0].min() > -5.0  # z-scored: the head holds one tissue and its noise, no dark rim


def test_head_mask_from_foreground_share():
    share = np.zeros((6, 8, 8), np.float32)
    share[1:5, 2:6, 2:6] = 0.6
    share[1:5, 1, 2:6] = 0.4  # an edge voxel that was mostly background
    share[2:4, 3:5, 3:5] = 0.0  # an enclosed cavity: filled
    m = head_mask(np.zeros_like(share), foreground=share)
    assert m[1:5, 2:6, 2:6].all() and not m[:, 1].any() and m.sum() == 64
