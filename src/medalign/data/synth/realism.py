"""Realism check of the synthetic cohort: FLAIR lesion contrast and volume vs real BraTS.

``realism_brats`` and ``realism_synthetic_tumours`` make the same two figures per case
(tests/synth/test_realism_brats.py): the 6 real BraTS 2015 gliomas have FLAIR (lesion - WM) /
std(WM) of 1.0..6.6 (median 3.6) and whole-tumour volumes of 63..217 ml (median 116); 8
synthetic gliomas (clinical grids) give 4.4..8.0 (median 5.7) and 82..241 ml. Synthetic tumours
are a little brighter than the median real one (on purpose: the demo trains a tiny CNN at
16 x 112 x 112), but inside the real range.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from medalign.data.synth.brain import synthesize_study
from medalign.data.synth.lesions import sample_truth


def _flair_contrast(flair: np.ndarray, lesion: np.ndarray, wm: np.ndarray) -> float:
    """(mean lesion - mean WM) / std WM on FLAIR."""
    if lesion.sum() == 0 or wm.sum() < 10:
        return float("nan")
    return float((flair[lesion].mean() - flair[wm].mean()) / max(flair[wm].std(), 1e-6))


def realism_brats(root: str | os.PathLike) -> list[dict]:
    """FLAIR lesion/WM contrast and whole-tumour volume (ml) of the real BraTS cases.

    WM is approximated (no WM label in BraTS): brain voxels > 5 voxels (box) from the tumour with
    T1c between its 60th and 99th percentile (WM is the bright brain tissue on T1).
    """
    import nibabel as nib
    import scipy.ndimage as ndi

    out = []
    for case in sorted(Path(root).glob("*/*")):
        fl = case / "Flair_subtrMeanDivStd.nii.gz"
        if not fl.exists():
            continue
        img = nib.load(fl)
        f = np.asarray(img.get_fdata(), np.float32)
        t1 = np.asarray(nib.load(case / "T1c_subtrMeanDivStd.nii.gz").get_fdata(), np.float32)
        les = np.asarray(nib.load(case / "OTMultiClass.nii.gz").get_fdata()) > 0
        brain = np.asarray(nib.load(case / "brainmask.nii.gz").get_fdata()) > 0
        cand = brain & (ndi.maximum_filter(les.astype(np.uint8), size=11) == 0)  # > 5 voxels away (separable)
        lo, hi = np.percentile(t1[cand], [60, 99])
        wm = cand & (t1 > lo) & (t1 < hi)
        out.append({"case": case.name, "contrast": _flair_contrast(f, les, wm),
                    "volume_ml": float(les.sum() * np.prod(img.header.get_zooms()[:3]) / 1000.0)})
    return out


def realism_synthetic_tumours(n: int = 6, seed: int = 0, shape_mode: str = "clinical") -> list[dict]:
    """Same figures for ``n`` synthetic gliomas (mask = oedema + tumour, as BraTS's whole
    tumour; WM = true WM probability > 0.9 on the FLAIR grid, > 5 voxels from the lesion)."""
    import scipy.ndimage as ndi

    rng = np.random.default_rng([seed, 11])
    out = []
    for i in range(n):
        t = sample_truth("tumor", rng)
        while t["findings"][0]["variant"] != "glioma":
            t = sample_truth("tumor", rng)
        t.update(study_id=f"R{i:03d}", seed=[seed, 12, i], anatomy_seed=[seed, 13, i])
        res = synthesize_study(t, shape_mode=shape_mode, with_wm=True, with_t1c=False)  # t1c unused here
        flair = res["flair"][0].astype(np.float32)
        les = res["mask"][0] > 0
        wm = (res["wm_on_mask_grid"] > 0.9) & (ndi.maximum_filter(les.astype(np.uint8), size=11) == 0)
        out.append({"case": t["study_id"], "contrast": _flair_contrast(flair, les, wm),
                    "volume_ml": res["lesion_volume_ml"], "size_mm": t["findings"][0]["size_mm"]})
    return out
