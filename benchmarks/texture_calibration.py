"""Tissue texture of real FLAIRs vs synthetic ones, on the native grids (how ``TEXTURE_CV`` was set).

    python benchmarks/texture_calibration.py --study COHORT/S00031/ground_truth.json \
        [--cv 0 0.04 0.09 0.12] [--shared ../shared/data]

Texture = robust SD (1.4826 x MAD) of an in-plane band-pass (Gaussian sigma 1 mm minus sigma 4 mm)
divided by the 4 mm local mean, inside the brain eroded by 6 mm, away from the lesion (dilated
4 mm), over voxels between the 40th and 90th percentile of the local mean (white and grey
matter, not CSF). Real: the three clinical WMH FLAIRs of ``real_dev/`` and the six BraTS 2015
FLAIRs (native grids). Synthetic: the given randomised study re-synthesised with each texture CV
(skull-stripped, everything else as drawn). A synthetic CV whose figure lies above every real one
draws blotches no real FLAIR has (they hide the gyri and look like punctate lesions).
"""
from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import numpy as np

DEFAULT_SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def texture(x: np.ndarray, spacing, brain: np.ndarray, lesion: np.ndarray | None = None) -> float:
    """The texture figure of one volume (X, Y, Z) with voxel ``spacing`` (mm), axial slices."""
    import scipy.ndimage as ndi

    x = np.asarray(x, np.float32)
    fine = ndi.gaussian_filter(x, [1.0 / spacing[0], 1.0 / spacing[1], 0])
    local = ndi.gaussian_filter(x, [4.0 / spacing[0], 4.0 / spacing[1], 0])
    plane = np.ones((3, 3, 1), bool)  # in-plane only: slices are thick
    inner = ndi.binary_erosion(brain, structure=plane, iterations=max(1, round(6 / spacing[0])))
    if lesion is not None:
        inner &= ~ndi.binary_dilation(lesion > 0, structure=plane, iterations=max(1, round(4 / spacing[0])))
    lo, hi = np.percentile(local[inner], [40, 90])
    r = ((fine - local) / np.maximum(local, 1e-6))[inner & (local > lo) & (local < hi)]
    return float(1.4826 * np.median(np.abs(r - np.median(r))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", required=True, help="ground_truth.json of a randomised synthetic study")
    ap.add_argument("--cv", type=float, nargs="+", default=[0.0, 0.02, 0.04, 0.06, 0.09, 0.12])
    ap.add_argument("--shared", type=Path, default=DEFAULT_SHARED)
    a = ap.parse_args()

    import nibabel as nib

    from medalign.data.synth.brain import synthesize_study

    for d in sorted((a.shared / "real_dev").glob("wmh_*")):
        img = nib.load(d / "flair.nii.gz")
        x = img.get_fdata()
        print(f"real {d.name:<30} {texture(x, img.header.get_zooms(), x > 0, nib.load(d / 'mask.nii.gz').get_fdata()):.4f}")
    for d in sorted((a.shared / "brats2015").glob("*/*")):
        if not (d / "Flair_subtrMeanDivStd.nii.gz").is_file():
            continue
        img = nib.load(d / "Flair_subtrMeanDivStd.nii.gz")
        brain = nib.load(d / "brainmask.nii.gz").get_fdata() > 0
        x = img.get_fdata()
        x = np.where(brain, x - x[brain].min() + 0.1, 0.0)  # z-scored: shift positive for the local mean
        print(f"real {d.name:<30} {texture(x, img.header.get_zooms(), brain, nib.load(d / 'OTMultiClass.nii.gz').get_fdata()):.4f}")
    truth = json.loads(Path(a.study).read_text(encoding="utf-8"))
    if "domain" not in truth:
        raise SystemExit(f"{a.study}: not a randomised study (no 'domain')")
    for cv in a.cv:
        t = copy.deepcopy(truth)
        t["domain"]["texture_cv"] = cv
        t["domain"]["skull_stripped"] = True
        out = synthesize_study(t)
        x, affine = out["flair"]
        print(f"synthetic texture CV {cv:<5} {texture(x.astype(np.float32), np.linalg.norm(affine[:3, :3], axis=0), x > 0, out['mask'][0]):.4f}")


if __name__ == "__main__":
    main()
