"""MR sequences of the synthetic brain cohort: contrast, acquisition geometry and noise.

Per sequence this makes:

- the noise-free signal on the template grid (``_signal``): tissue contrast
  (``TISSUE_CONTRAST``) with lesion components blended over it (``LESION_CONTRAST``;
  haemorrhage "blooms" on T2*: its dark area is larger than on other sequences) and a smooth
  tissue texture;
- the acquisition (``_acquisition``, ``_grid_affine``, ``_rigid``): an axial grid in scanner
  space with clinical anisotropic voxels, field of view and orientation code, plus a small
  per-sequence rigid motion, so the sequences are *not* aligned voxel-to-voxel;
- the recorded image (``_record``): a multiplicative bias field, Rician noise and scanner gain,
  as int16 (ADC in 1e-6 mm^2/s).

The post-contrast T1 (``POST_CONTRAST``; its contrast in ``synth.enhancement``) is acquired
last, after the injection: its own axial grid and field of view (``_acquisition_t1c``), a
larger motion, its own bias field and noise, all from the study's own t1c random stream, so
adding it leaves the ``SEQUENCES`` (drawn from the shared study stream) unchanged.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from medalign.data.synth.anatomy import TISSUES

SEQUENCES: tuple[str, ...] = ("dwi", "adc", "t2s", "flair", "t1", "t2")
POST_CONTRAST: tuple[str, ...] = ("t1c",)  # written after SEQUENCES, from their own random stream
MASK_GRID = "flair"  # the lesion mask is written on the FLAIR grid
NOISE_SD = {"dwi": 0.06, "adc": 0.0, "t2s": 0.04, "flair": 0.04, "t1": 0.03, "t2": 0.035,
            "t1c": 0.03}  # signal units (WM ~0.5)

# Normal tissue signal per sequence (arbitrary units, WM ~0.5; ADC in 1e-3 mm^2/s).
# CSF: dark on FLAIR/DWI, bright on T2/ADC; WM brighter than GM on T1, darker on T2/FLAIR.
TISSUE_CONTRAST: dict[str, dict[str, float]] = {
    #          gm     wm    csf   scalp
    "dwi":   {"gm": 0.60, "wm": 0.50, "csf": 0.10, "scalp": 0.10},
    "adc":   {"gm": 0.85, "wm": 0.72, "csf": 3.00, "scalp": 0.40},
    "t2s":   {"gm": 0.62, "wm": 0.50, "csf": 0.95, "scalp": 0.35},
    "flair": {"gm": 0.62, "wm": 0.48, "csf": 0.08, "scalp": 0.45},
    "t1":    {"gm": 0.50, "wm": 0.78, "csf": 0.15, "scalp": 0.90},
    "t2":    {"gm": 0.62, "wm": 0.45, "csf": 1.00, "scalp": 0.55},
}

# Lesion component signal per sequence, same units: (dwi, adc, t2s, flair, t1, t2).
LESION_CONTRAST: dict[str, tuple[float, ...]] = {
    "infarct_acute":   (1.60, 0.40, 0.62, 0.95, 0.40, 0.90),  # restricted diffusion
    "infarct_chronic": (0.12, 2.40, 0.85, 0.15, 0.20, 0.95),  # CSF-like encephalomalacia
    "gliosis":         (0.60, 1.20, 0.60, 0.95, 0.45, 0.85),  # FLAIR-bright rim
    "tumor_necrosis":  (0.25, 2.20, 0.85, 0.70, 0.25, 1.00),
    "tumor_solid":     (0.90, 0.75, 0.55, 0.90, 0.45, 0.75),  # cellular: DWI bright-ish
    "edema":           (0.65, 1.35, 0.60, 0.98, 0.42, 0.90),  # vasogenic, FLAIR bright
    "meningioma":      (0.75, 0.80, 0.55, 0.75, 0.48, 0.70),
    "hematoma_acute":  (0.30, 0.55, 0.05, 0.45, 0.55, 0.25),  # deoxy-Hb: T2*/T2 dark
    "hematoma_chronic": (0.25, 1.80, 0.08, 0.35, 0.30, 0.60),  # haemosiderin
    "microbleed":      (0.45, 0.75, 0.04, 0.48, 0.75, 0.42),
    "wmh":             (0.60, 1.10, 0.60, 1.00, 0.58, 0.85),
    "plaque":          (0.70, 1.20, 0.60, 1.05, 0.50, 0.90),
    "sinus_mucosa":    (0.20, 1.80, 0.80, 0.90, 0.35, 0.95),
}
BLOOMING = {"hematoma_acute", "hematoma_chronic", "microbleed"}


# ----------------------------------------------------------------------------- signal
def _signal(anat: dict, tissue: dict[str, np.ndarray], comps: list[tuple[str, np.ndarray]],
            rng_anat: np.random.Generator, tissue_contrast: dict[str, dict[str, float]] | None = None,
            lesion_contrast: dict[str, tuple[float, ...]] | None = None,
            tex_cv: float = 0.12) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free signal (S, X, Y, Z) of every sequence on the template grid, and the tissue
    texture (X, Y, Z) it was multiplied by (t1c uses the same one). ``tissue_contrast`` /
    ``lesion_contrast`` / ``tex_cv`` replace ``TISSUE_CONTRAST`` / ``LESION_CONTRAST`` / the
    12 % texture for one study (domain randomisation, ``synth.randomise``)."""
    import scipy.ndimage as ndi

    tc = TISSUE_CONTRAST if tissue_contrast is None else tissue_contrast
    lc = LESION_CONTRAST if lesion_contrast is None else lesion_contrast
    # (S, X, Y, Z) = sum over tissues of contrast x probability
    contrast = np.array([[tc[s][t] for t in TISSUES] for s in SEQUENCES], np.float32)  # (S, T)
    tstack = np.stack([tissue[t] for t in TISSUES])  # (T, X, Y, Z)
    img = np.tensordot(contrast, tstack, axes=1)  # (S, T) . (T, X, Y, Z) -> (S, X, Y, Z)
    t2s_i = SEQUENCES.index("t2s")
    for name, m in comps:
        vals = np.asarray(lc[name], np.float32)
        for si in range(len(SEQUENCES)):
            mm = m
            if si == t2s_i and name in BLOOMING:  # susceptibility blooms beyond the clot
                mm = np.clip(np.maximum(m, ndi.gaussian_filter(m, 1.5 * 2.0 / anat["step_mm"]) * 2.2), 0, 1)
            img[si] += (vals[si] - img[si]) * mm  # = img * (1 - mm) + value * mm
    # tissue texture (microstructure, partial volume): smooth multiplicative field, ~12 % CV,
    # sized so FLAIR lesion/WM contrast matches the real BraTS cases (see synth.realism)
    tex = ndi.gaussian_filter(rng_anat.standard_normal(anat["mask"].shape, dtype=np.float32), 1.0)
    tex *= tex_cv / max(float(tex.std()), 1e-6)
    img *= 1 + tex[None]  # (S, X, Y, Z)
    return img, tex


# ----------------------------------------------------------------------------- acquisition
def _rotation(deg: Sequence[float]) -> np.ndarray:
    ax, ay, az = (math.radians(v) for v in deg)
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _rigid(deg: Sequence[float], shift: Sequence[float], center: np.ndarray, scale=(1.0, 1.0, 1.0)) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = _rotation(deg) @ np.diag(scale)
    m[:3, 3] = center + np.asarray(shift) - m[:3, :3] @ center
    return m


ORIENTATIONS = {"RAS": (1, 1, 1), "LPS": (-1, -1, 1), "LAS": (-1, 1, 1), "RPI": (1, -1, -1)}


def _acquisition(rng: np.random.Generator, shape_mode: str) -> dict[str, dict]:
    """Per-sequence grid (shape, spacing, orientation) and small head motion."""
    acq: dict[str, dict] = {}
    orient = str(rng.choice(list(ORIENTATIONS)))
    fov = float(rng.uniform(200, 230))
    cover = float(rng.uniform(130, 160))
    for seq in SEQUENCES:
        if seq == "adc":  # ADC is computed from the DWI: same grid, same motion
            acq[seq] = dict(acq["dwi"])
            continue
        acq[seq] = _axial_grid(rng, shape_mode, fov, cover, orient, dwi=seq == "dwi")
    return acq


def _axial_grid(rng: np.random.Generator, shape_mode: str, fov: float, cover: float, orient: str, *,
                dwi: bool = False, motion_sd: tuple[float, float] = (1.2, 1.5)) -> dict:
    """One sequence's axial grid (shape, spacing, orientation) and its motion (deg, mm)."""
    if shape_mode == "small":
        shape = [32, 32, 8]
        spacing = [fov / 32, fov / 32 * float(rng.uniform(0.95, 1.05)), cover / 8]
    else:
        ip = float(rng.uniform(1.2, 1.8) if dwi else rng.uniform(0.8, 1.2))
        th = float(rng.uniform(4.0, 6.0) if dwi else rng.uniform(3.0, 6.0))
        phase = float(rng.choice([1.0, 0.875, 0.8]))
        shape = [int(round(fov / ip)), int(round(fov * phase / ip)), int(round(cover / th))]
        spacing = [ip, ip, th]
    return {"shape": shape, "spacing": [round(v, 4) for v in spacing], "orientation": orient,
            "motion_deg": [round(float(v), 2) for v in rng.normal(0, motion_sd[0], 3)],
            "motion_mm": [round(float(v), 2) for v in rng.normal(0, motion_sd[1], 3)],
            "fov_shift_mm": [round(float(v), 2) for v in rng.normal(0, 5, 3)]}


def _acquisition_t1c(rng: np.random.Generator, shape_mode: str, orient: str) -> dict:
    """The post-contrast axial T1 SE, acquired last: the study's orientation code, its own
    field of view and slices, and more motion than the others (the injection in between)."""
    fov = float(rng.uniform(200, 230))
    cover = float(rng.uniform(130, 160))
    return _axial_grid(rng, shape_mode, fov, cover, orient, motion_sd=(1.8, 2.2))


def _grid_affine(a: dict, center: np.ndarray) -> np.ndarray:
    signs = np.array(ORIENTATIONS[a["orientation"]], float)
    A = np.eye(4)
    A[:3, :3] = np.diag(signs * np.asarray(a["spacing"], float))
    c = center + np.asarray(a["fov_shift_mm"])
    A[:3, 3] = c - A[:3, :3] @ ((np.asarray(a["shape"], float) - 1) / 2)
    return A


def _sample_grid(vol: np.ndarray, T: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Trilinear sample of a template-grid volume on an acquisition grid of ``shape``;
    ``T`` (4 x 4) maps acquisition voxels to template voxels (``synth.sampling``: SciPy's
    ``affine_transform`` at order 1, bit for bit, about 4x faster)."""
    from medalign.data.synth.sampling import affine_sample  # Numba: imported when a study is drawn

    return affine_sample(vol, T, shape)


# ----------------------------------------------------------------------------- recording
def _bias(shape: Sequence[int], rng: np.random.Generator, amp: float) -> np.ndarray:
    """Smooth multiplicative field exp(sum of low-order terms), built by broadcasting."""
    axes = [np.linspace(-1, 1, n, dtype=np.float32) for n in shape]
    x, y, z = axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]
    c = rng.normal(0, amp, 8).astype(np.float32)
    log = c[0] * x + c[1] * y + c[2] * z + c[3] * x * y + c[4] * (x * x - 0.33) + c[5] * (y * y - 0.33) + c[6] * z * z + c[7] * x * z
    return np.exp(log).astype(np.float32)


def _record(vol: np.ndarray, seq: str, shape: Sequence[int], rng: np.random.Generator,
            dwi_head: np.ndarray | None, bias_amp: float = 0.15, noise_scale: float = 1.0,
            sharpen: tuple[float, Sequence[float]] | None = None) -> np.ndarray:
    """What the scanner stores for one sampled sequence (int16; ``vol`` is overwritten).

    ADC is computed from the DWI: Gaussian noise, 1e-6 mm^2/s, only inside ``dwi_head``
    (where the DWI has signal). Every other sequence: bias field (log-coefficients' sd
    ``bias_amp``), Rician noise (``NOISE_SD`` x ``noise_scale``), the reconstruction's edge
    enhancement when ``sharpen`` = (amount a, Gaussian sigma per axis in voxels) is given (x + a (x - G x),
    on the noisy magnitude image, as scanners apply it; ``randomise.record_options``), scanner gain.
    """
    if seq == "adc":
        vol = (vol + rng.standard_normal(vol.shape, dtype=np.float32) * (0.04 * noise_scale)) * dwi_head
        data = np.clip(vol * 1000.0, 0, 32000)
    else:
        vol *= _bias(shape, rng, bias_amp)
        sd = NOISE_SD[seq] * noise_scale
        # Rician magnitude noise sqrt((s + n1)^2 + n2^2), computed in place (big arrays)
        n1 = rng.standard_normal(vol.shape, dtype=np.float32)
        n1 *= sd
        n1 += vol
        np.square(n1, out=n1)
        n2 = rng.standard_normal(vol.shape, dtype=np.float32)
        n2 *= sd
        np.square(n2, out=n2)
        n1 += n2
        data = np.sqrt(n1, out=n1)
        if sharpen is not None:
            from scipy import ndimage

            amount, sigma = sharpen
            detail = ndimage.gaussian_filter(data, sigma)  # the blur, turned in place into -(x - G x)
            detail -= data
            detail *= np.float32(-amount)
            data += detail
            np.maximum(data, 0, out=data)  # a magnitude image: the undershoot next to bright edges stops at 0
        data *= float(rng.uniform(600, 1400))  # scanner gain
        np.clip(data, 0, 32000, out=data)
    return np.rint(data, out=data).astype(np.int16)
