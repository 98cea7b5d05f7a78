"""Synthetic brain-pathology cohort: real MNI152 anatomy, controlled pathology, known truth.

Pipeline per study (all vectorised numpy / scipy.ndimage):

1. **Anatomy** (template grid, 2 mm; 4 mm in ``shape_mode="small"``): grey/white-matter
   probability maps and brain mask from the MNI152 templates shipped inside nilearn
   (no download), CSF = brain - GM - WM, scalp from the T1 template outside the brain.
   Age-related atrophy is one continuous number ``atrophy`` in [0, 1]: tissue within
   ``atrophy * 4 mm`` of CSF (sulcal widening) and ``atrophy * 8 mm`` of the ventricles
   (ventricular widening) turns into CSF.
2. **Pathology**: lesion components (irregular ellipsoids) with their own intensity per
   sequence (``LESION_CONTRAST``), blended over the tissue contrast (``TISSUE_CONTRAST``).
   Haemorrhage components "bloom" on T2* (dark area larger than on other sequences).
3. **Subject warp**: smooth random elastic field + radial mass effect around
   space-occupying lesions, applied once on the template grid (``map_coordinates``).
4. **Acquisition**: per sequence an axial grid in scanner space with clinical anisotropic
   voxels, field of view and orientation code, a random head pose (rotation, scale, shift)
   and a small per-sequence rigid motion, so the sequences are *not* aligned voxel-to-voxel.
   Sampled with one ``affine_transform`` each; then a multiplicative bias field and Rician
   noise; stored as int16 NIfTI (ADC in 1e-6 mm^2/s).

Realism check (``realism_brats`` vs ``realism_synthetic_tumours``; tests/synth/test_realism_brats.py):
the 6 real BraTS 2015 gliomas have FLAIR (lesion - WM) / std(WM) of 1.0..6.6 (median 3.6)
and whole-tumour volumes of 63..217 ml (median 116); 8 synthetic gliomas (clinical grids)
give 4.4..8.0 (median 5.7) and 82..241 ml. Synthetic tumours are a little brighter than
the median real one (on purpose: the demo trains a tiny CNN at 16 x 112 x 112), but inside
the real range.

``generate_brain_cohort`` plans the whole cohort (classes, splits, patients, lesion
parameters, reports) from one seed in the parent process, then synthesises the studies in
a process pool: every study has its own seed, so the output does not depend on ``workers``.
"""
from __future__ import annotations

import gzip
import json
import math
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from medalign.data.schema import CLASSES
from medalign.errors import MedAlignError

SEQUENCES: tuple[str, ...] = ("dwi", "adc", "t2s", "flair", "t1", "t2")
TISSUES: tuple[str, ...] = ("gm", "wm", "csf", "scalp")
MASK_GRID = "flair"  # the lesion mask is written on the FLAIR grid
PAPER_SPLIT = {"train": 211, "val": 24, "test": 27}  # brain-CLIP Table 1 (n = 262)

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

# Region centres in MNI mm for the right hemisphere (x > 0); the left side flips x.
LOBES = {"frontal": (30, 32, 24), "temporal": (46, -18, -12), "parietal": (34, -50, 40),
         "occipital": (24, -82, 8)}
TERRITORIES = {"MCA": (40, -12, 14), "ACA": (9, 22, 44), "PCA": (18, -76, 4)}
DEEP = {"basal ganglia": (22, 2, 2), "thalamus": (12, -18, 6), "internal capsule": (20, -6, 8),
        "corona radiata": (25, -10, 28)}
SINUSES = {"maxillary": (30, 20, -45), "frontal": (12, 62, 8)}  # approximate, in the head

OTHERS_VARIANTS = ("atrophy", "wmh", "demyelination", "sinus")


# ----------------------------------------------------------------------------- anatomy
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


# ----------------------------------------------------------------------------- planning
def _side_sign(side: str) -> float:
    return -1.0 if side == "left" else 1.0


def _jitter(rng: np.random.Generator, c: Sequence[float], sd: float = 4.0) -> list[float]:
    return [round(float(v + rng.normal(0, sd)), 1) for v in c]


def sample_truth(label: str, rng: np.random.Generator, *, age: float | None = None) -> dict:
    """Sample the ground truth of one study of class ``label`` (no images): findings with
    variant, side, region, size, count, age; patient age and atrophy; incidental findings."""
    if label not in CLASSES:
        raise MedAlignError(f"unknown class '{label}'; allowed: {', '.join(CLASSES)}")
    age = float(age if age is not None else rng.uniform(25, 88))
    base_atrophy = float(np.clip((age - 45) / 45 * 0.3 + rng.normal(0, 0.05), 0.0, 0.35))
    t: dict[str, Any] = {"label": label, "age_years": round(age, 1), "sex": str(rng.choice(["F", "M"])),
                         "atrophy": round(base_atrophy, 3), "findings": [], "incidental": []}
    side = str(rng.choice(["left", "right"]))
    s = _side_sign(side)
    F = t["findings"]
    if label == "infarct":
        variant = str(rng.choice(["territorial", "lacunar"], p=[0.8, 0.2]))
        chronicity = str(rng.choice(["acute", "chronic"], p=[0.7, 0.3]))
        if variant == "territorial":
            terr = str(rng.choice(list(TERRITORIES), p=[0.6, 0.15, 0.25]))
            c = TERRITORIES[terr]
            size = float(rng.uniform(38, 62) if terr == "MCA" else rng.uniform(30, 48))
            F.append({"class": "infarct", "kind": "infarct", "variant": variant, "age": chronicity,
                      "side": side, "region": terr, "count": 1, "size_mm": round(size, 1),
                      "center_mm": _jitter(rng, (s * c[0], c[1], c[2]))})
        else:
            region = str(rng.choice(["basal ganglia", "thalamus", "internal capsule", "corona radiata"]))
            c = DEEP[region]
            count = int(rng.integers(1, 3))
            for i in range(count):
                F.append({"class": "infarct", "kind": "infarct", "variant": variant, "age": chronicity,
                          "side": side, "region": region, "count": count,
                          "size_mm": round(float(rng.uniform(12, 18)), 1),
                          "center_mm": _jitter(rng, (s * c[0], c[1], c[2] + 10 * i), 3.0)})
    elif label == "tumor":
        variant = str(rng.choice(["glioma", "meningioma"], p=[0.75, 0.25]))
        lobe = str(rng.choice(list(LOBES)))
        c = LOBES[lobe]
        if variant == "glioma":
            size = float(rng.uniform(28, 50))
            F.append({"class": "tumor", "kind": "tumor", "variant": variant, "age": "unknown",
                      "side": side, "region": lobe, "count": 1, "size_mm": round(size, 1),
                      "edema_factor": round(float(rng.uniform(1.5, 2.1)), 2),
                      "necrosis": bool(rng.random() < 0.8),
                      "center_mm": _jitter(rng, (s * c[0], c[1], c[2]))})
        else:
            size = float(rng.uniform(26, 45))
            F.append({"class": "tumor", "kind": "tumor", "variant": variant, "age": "unknown",
                      "side": side, "region": lobe, "count": 1, "size_mm": round(size, 1),
                      "edema_factor": round(float(rng.uniform(1.0, 1.5)), 2), "necrosis": False,
                      "center_mm": _jitter(rng, (s * c[0] * 1.2, c[1] * 1.1, c[2] * 1.2 + 8))})
    elif label == "hemorrhage":
        variant = str(rng.choice(["lobar", "deep", "microbleeds"], p=[0.45, 0.4, 0.15]))
        chronicity = str(rng.choice(["acute", "chronic"], p=[0.75, 0.25])) if variant != "microbleeds" else "chronic"
        if variant == "lobar":
            lobe = str(rng.choice(list(LOBES)))
            c = LOBES[lobe]
            F.append({"class": "hemorrhage", "kind": "hemorrhage", "variant": variant, "age": chronicity,
                      "side": side, "region": lobe, "count": 1,
                      "size_mm": round(float(rng.uniform(25, 48)), 1),
                      "center_mm": _jitter(rng, (s * c[0] * 0.85, c[1] * 0.85, c[2] * 0.85))})
        elif variant == "deep":
            region = str(rng.choice(["basal ganglia", "thalamus"], p=[0.65, 0.35]))
            c = DEEP[region]
            F.append({"class": "hemorrhage", "kind": "hemorrhage", "variant": variant, "age": chronicity,
                      "side": side, "region": region, "count": 1,
                      "size_mm": round(float(rng.uniform(22, 40)), 1),
                      "center_mm": _jitter(rng, (s * c[0], c[1], c[2]), 3.0)})
        else:
            count = int(rng.integers(10, 26))
            distribution = str(rng.choice(["lobar", "deep"]))
            F.append({"class": "hemorrhage", "kind": "hemorrhage", "variant": variant, "age": chronicity,
                      "side": "bilateral", "region": distribution, "count": count,
                      "size_mm": round(float(rng.uniform(5, 8)), 1), "center_mm": None})
    elif label == "others":
        variant = str(rng.choice(OTHERS_VARIANTS, p=[0.35, 0.3, 0.23, 0.12]))
        f: dict[str, Any] = {"class": "others", "kind": "others", "variant": variant, "age": "chronic",
                             "side": "bilateral", "region": "", "count": 1, "size_mm": None, "center_mm": None}
        if variant == "atrophy":
            t["atrophy"] = round(float(rng.uniform(0.7, 1.0)), 3)
            f["region"] = str(rng.choice(["generalised", "ventriculomegaly"], p=[0.6, 0.4]))
        elif variant == "wmh":
            f["region"] = "periventricular"
            f["severity"] = round(float(rng.uniform(0.7, 1.0)), 3)
        elif variant == "demyelination":
            f["region"] = "periventricular"
            f["count"] = int(rng.integers(6, 14))
            f["size_mm"] = round(float(rng.uniform(8, 14)), 1)
        else:
            f["region"] = str(rng.choice(list(SINUSES)))
            f["side"] = str(rng.choice(["left", "right", "bilateral"]))
        F.append(f)
    else:  # normal: may carry mild age-related change, as real "normal" reports do
        if age > 60 and rng.random() < 0.5:
            t["mild_changes"] = str(rng.choice(["involutional", "punctate_wmh"]))
    if rng.random() < 0.25:
        t["incidental"].append(str(rng.choice(
            ["cavum septum pellucidum", "pineal cyst", "prominent perivascular spaces",
             "developmental venous anomaly", "partially empty sella", "mega cisterna magna"])))
    return t


def sample_truths(n: int, seed: int = 0, *, classes: Sequence[str] = CLASSES) -> list[dict]:
    """``n`` ground truths, classes balanced round-robin; for report-only experiments."""
    rng = np.random.default_rng([seed, 7])
    return [sample_truth(classes[i % len(classes)], rng) for i in range(n)]


def _parse_studies_per_patient(spec: str | int) -> tuple[int, int]:
    s = str(spec).strip()
    try:
        if "-" in s:
            a, b = (int(v) for v in s.split("-", 1))
        else:
            a = b = int(s)
    except ValueError:
        raise MedAlignError(f"--studies-per-patient must be K or A-B (e.g. 1-3), got '{spec}'") from None
    if not (1 <= a <= b <= 20):
        raise MedAlignError(f"--studies-per-patient must satisfy 1 <= A <= B <= 20, got '{spec}'")
    return a, b


def split_counts_for(n: int) -> dict[str, int]:
    """Paper proportions (211/24/27 of 262); exactly that for n = 262."""
    val = int(round(n * PAPER_SPLIT["val"] / 262))
    test = int(round(n * PAPER_SPLIT["test"] / 262))
    if n >= 3:
        val, test = max(val, 1), max(test, 1)
    return {"train": n - val - test, "val": val, "test": test}


def _follow_up(truth: dict, rng: np.random.Generator, years: float) -> dict:
    """A later study of the same patient: same class and lesion site, evolved."""
    t = json.loads(json.dumps(truth))
    t["age_years"] = round(truth["age_years"] + years, 1)
    t["atrophy"] = round(min(1.0, truth["atrophy"] + 0.01 * years), 3)
    for f in t["findings"]:
        if f["kind"] in ("infarct", "hemorrhage") and f["variant"] != "microbleeds":
            f["age"] = "chronic"
            if f["kind"] == "infarct":
                f["size_mm"] = round(f["size_mm"] * 0.85, 1)
        if f["kind"] == "tumor":
            f["size_mm"] = round(f["size_mm"] * float(rng.uniform(1.05, 1.25)), 1)
    t["incidental"] = list(truth["incidental"])
    return t


def plan_cohort(n: int = 262, seed: int = 0, *, label_noise: float = 0.0,
                studies_per_patient: str | int = "1", heldout_phrasing: bool = False,
                split_counts: dict[str, int] | None = None) -> list[dict]:
    """Plan a cohort (no images): one truth dict per study, with study/patient ids, split,
    true ``label``, ``manifest_label`` (after label noise), ``report`` and ``seed``.

    Splits are class-balanced (round-robin within each split) and patient-grouped: all
    studies of a patient share a split and a class (follow-ups of the same disease).
    """
    from medalign.data.synth.report_grammar import generate_report

    if not (20 <= n <= 10_000):
        raise MedAlignError(f"--n must be between 20 and 10000, got {n}")
    if seed < 0:
        raise MedAlignError(f"--seed must be >= 0, got {seed}")
    if not (0.0 <= label_noise <= 1.0):
        raise MedAlignError(f"--label-noise must be in [0, 1], got {label_noise}")
    lo, hi = _parse_studies_per_patient(studies_per_patient)
    counts = dict(split_counts) if split_counts else split_counts_for(n)
    if sum(counts.values()) != n or any(v < 0 for v in counts.values()):
        raise MedAlignError(f"split counts {counts} must be non-negative and sum to n={n}")
    rng = np.random.default_rng([seed, 0])
    # 1. split x class slots, balanced within each split
    slots: list[tuple[str, str]] = []
    offset = 0
    for split in ("train", "val", "test"):
        for k in range(counts.get(split, 0)):
            slots.append((split, CLASSES[(k + offset) % len(CLASSES)]))
        offset += counts.get(split, 0)
    # 2. group slots into patients within each (split, class) bucket
    buckets: dict[tuple[str, str], int] = {}
    for key in slots:
        buckets[key] = buckets.get(key, 0) + 1
    plans: list[dict] = []
    pid = 0
    for (split, label), m in sorted(buckets.items(), key=lambda kv: (("train", "val", "test").index(kv[0][0]),
                                                                     CLASSES.index(kv[0][1]))):
        left = m
        while left > 0:
            k = min(int(rng.integers(lo, hi + 1)), left)
            left -= k
            base = sample_truth(label, rng)
            years = 0.0
            for j in range(k):
                truth = base if j == 0 else _follow_up(base, rng, years)
                plans.append({"patient_index": pid, "visit": j, "split": split, "truth": truth})
                years += float(rng.uniform(0.2, 3.0))
            pid += 1
    # 3. shuffle study order (ids are assigned after the shuffle), then ids, noise, reports
    order = rng.permutation(len(plans))
    plans = [plans[i] for i in order]
    pids = {}
    for p in plans:  # patient ids numbered by first appearance
        pids.setdefault(p["patient_index"], len(pids))
    n_noise = int(round(label_noise * n))
    noisy = set(rng.choice(n, size=n_noise, replace=False).tolist()) if n_noise else set()
    out = []
    for i, p in enumerate(plans):
        truth = dict(p["truth"])
        truth = json.loads(json.dumps(truth))
        sid = f"S{i + 1:05d}"
        truth["study_id"] = sid
        truth["patient_id"] = f"P{pids[p['patient_index']] + 1:05d}"
        truth["visit"] = p["visit"]
        truth["split"] = p["split"]
        truth["seed"] = [int(seed), 1, i]
        truth["anatomy_seed"] = [int(seed), 2, int(p["patient_index"])]
        if i in noisy:
            others = [c for c in CLASSES if c != truth["label"]]
            truth["manifest_label"] = str(rng.choice(others))
            truth["label_noise"] = True
        else:
            truth["manifest_label"] = truth["label"]
            truth["label_noise"] = False
        heldout = bool(heldout_phrasing and p["split"] == "test")
        truth["report_family"] = "heldout" if heldout else "standard"
        truth["report"] = generate_report(truth, np.random.default_rng([seed, 3, i]), heldout=heldout)
        out.append(truth)
    return out


# ----------------------------------------------------------------------------- synthesis
def _blob(shape: tuple[int, ...], center_vox: np.ndarray, radii_vox: Sequence[float],
          rng: np.random.Generator, irregular: float = 0.2, soft: float = 0.6) -> np.ndarray:
    """Soft irregular ellipsoid (values 0..1) with random orientation, full-size float32."""
    import scipy.ndimage as ndi

    out = np.zeros(shape, np.float32)
    r = np.asarray(radii_vox, float)
    ext = int(math.ceil(r.max() * (1 + irregular) + 2))
    c = np.asarray(center_vox, float)
    lo = np.maximum(np.floor(c - ext).astype(int), 0)
    hi = np.minimum(np.ceil(c + ext).astype(int) + 1, shape)
    if np.any(hi <= lo):
        return out
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))  # random rotation
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


def _surface_point(anat: dict, center_vox: np.ndarray) -> np.ndarray:
    """Walk from the brain centre through ``center_vox`` to the brain surface."""
    mask = anat["mask"]
    origin = np.array(np.nonzero(mask > 0.5)).mean(1)
    d = center_vox - origin
    d /= max(np.linalg.norm(d), 1e-6)
    p = center_vox.copy()
    for _ in range(200):
        q = np.round(p + d).astype(int)
        if np.any(q < 0) or np.any(q >= mask.shape) or mask[tuple(q)] < 0.5:
            break
        p = p + d
    return p


def _lesions(anat: dict, truth: dict, tissue: dict[str, np.ndarray], rng: np.random.Generator
             ) -> tuple[list[tuple[str, np.ndarray]], np.ndarray, list[tuple[np.ndarray, float, float]]]:
    """Lesion components (name, map), the lesion-mask map, and mass-effect sources."""
    shape = anat["mask"].shape
    vox = anat["step_mm"]
    brain = np.clip(tissue["gm"] + tissue["wm"], 0, 1)
    comps: list[tuple[str, np.ndarray]] = []
    mask = np.zeros(shape, np.float32)
    masses: list[tuple[np.ndarray, float, float]] = []
    for f in truth["findings"]:
        kind, var = f["kind"], f["variant"]
        c = _mm_to_vox(anat, f["center_mm"]) if f.get("center_mm") else None
        R = (f["size_mm"] or 0) / 2 / vox
        if kind == "infarct":
            radii = R * rng.uniform(0.75, 1.0, 3)
            b = _blob(shape, c, radii, rng, 0.25) * brain
            if f["age"] == "acute":
                comps.append(("infarct_acute", b))
            else:
                core = _blob(shape, c, radii * 0.7, rng, 0.2) * brain
                comps += [("gliosis", b), ("infarct_chronic", core)]
            mask = np.maximum(mask, b)
        elif kind == "tumor":
            if var == "glioma":
                radii = R * rng.uniform(0.8, 1.0, 3)
                ed = _blob(shape, c, radii * f["edema_factor"], rng, 0.35) * np.clip(tissue["wm"] * 1.3 + 0.25 * tissue["gm"], 0, 1)
                solid = _blob(shape, c, radii, rng, 0.2)
                comps += [("edema", ed), ("tumor_solid", solid)]
                if f["necrosis"]:
                    comps.append(("tumor_necrosis", _blob(shape, c, radii * 0.55, rng, 0.2)))
                mask = np.maximum(mask, np.maximum(ed, solid))
                masses.append((c, R, 0.35))
            else:
                cs = _surface_point(anat, c)
                radii = R * rng.uniform(0.85, 1.0, 3)
                men = _blob(shape, cs, radii, rng, 0.1)
                ed = _blob(shape, cs, radii * f["edema_factor"], rng, 0.3) * brain * (f["edema_factor"] > 1.15)
                comps += [("edema", ed), ("meningioma", men)]
                mask = np.maximum(mask, np.maximum(men, ed))
                masses.append((cs, R, 0.5))
        elif kind == "hemorrhage":
            if var == "microbleeds":
                cand = np.argwhere((tissue["wm"] > 0.5) if f["region"] == "deep" else (tissue["gm"] > 0.5))
                pick = cand[rng.choice(len(cand), size=f["count"], replace=False)]
                mb = np.zeros(shape, np.float32)
                for p in pick:
                    mb = np.maximum(mb, _blob(shape, p.astype(float), [R, R, R], rng, 0.0, soft=0.4))
                comps.append(("microbleed", mb))
                mask = np.maximum(mask, mb)
            else:
                radii = R * rng.uniform(0.75, 1.0, 3)
                hem = _blob(shape, c, radii, rng, 0.15) * np.clip(brain * 1.5, 0, 1)
                if f["age"] == "acute":
                    ed = _blob(shape, c, radii * 1.45, rng, 0.3) * brain
                    comps += [("edema", ed), ("hematoma_acute", hem)]
                    mask = np.maximum(mask, np.maximum(hem, ed))
                    masses.append((c, R, 0.3))
                else:
                    core = _blob(shape, c, radii * 0.6, rng, 0.2) * brain
                    comps += [("hematoma_chronic", hem), ("infarct_chronic", core)]
                    mask = np.maximum(mask, hem)
        elif kind == "others":
            if var == "wmh":
                import scipy.ndimage as ndi

                sev = f["severity"]
                noise = ndi.gaussian_filter(rng.normal(size=shape).astype(np.float32), 1.5)
                noise /= max(float(noise.std()), 1e-6)
                reach = (4 + 6 * sev) / vox  # periventricular caps/bands, voxels
                w = np.clip(reach - anat["dist_vent"] + 2.5 * noise / vox, 0, 1)
                w = w * np.clip(tissue["wm"] * 1.4, 0, 1) * (anat["dist_vent"] > 0)
                comps.append(("wmh", w))
                mask = np.maximum(mask, w)
            elif var == "demyelination":
                cand = np.argwhere((tissue["wm"] > 0.6) & (anat["dist_vent"] * vox < 14) & (anat["dist_vent"] > 0))
                pick = cand[rng.choice(len(cand), size=min(f["count"], len(cand)), replace=False)]
                pl = np.zeros(shape, np.float32)
                for p in pick:  # ovoid, long axis ~ perpendicular to the ventricle (Dawson)
                    rr = np.array([0.35, 0.35, 0.5]) * f["size_mm"] / vox * rng.uniform(0.8, 1.2, 3)
                    pl = np.maximum(pl, _blob(shape, p.astype(float), rr, rng, 0.1, soft=0.5))
                pl *= brain
                comps.append(("plaque", pl))
                mask = np.maximum(mask, pl)
            elif var == "sinus":
                sides = ["left", "right"] if f["side"] == "bilateral" else [f["side"]]
                sm = np.zeros(shape, np.float32)
                for sd in sides:
                    cc = SINUSES[f["region"]]
                    x = cc[0] * _side_sign(sd) if f["region"] == "maxillary" else cc[0] * _side_sign(sd) * 0.5
                    cv = _mm_to_vox(anat, (x, cc[1], cc[2]))
                    sm = np.maximum(sm, _blob(shape, cv, np.array([11, 13, 13]) / vox, rng, 0.15))
                sm *= 1 - anat["mask"]
                comps.append(("sinus_mucosa", sm))
                mask = np.maximum(mask, sm)
            # atrophy: handled in the tissue maps; its mask is set by the caller
    if truth.get("mild_changes") == "punctate_wmh":  # age-normal: a few small foci, not in the mask
        cand = np.argwhere(tissue["wm"] > 0.7)
        dots = np.zeros(shape, np.float32)
        for p in cand[rng.choice(len(cand), size=int(rng.integers(3, 7)), replace=False)]:
            dots = np.maximum(dots, _blob(shape, p.astype(float), [2.5 / vox] * 3, rng, 0.0, soft=0.4))
        comps.append(("wmh", dots))
    return comps, mask, masses


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
        if shape_mode == "small":
            shape = [32, 32, 8]
            spacing = [fov / 32, fov / 32 * float(rng.uniform(0.95, 1.05)), cover / 8]
        else:
            ip = float(rng.uniform(1.2, 1.8) if seq == "dwi" else rng.uniform(0.8, 1.2))
            th = float(rng.uniform(4.0, 6.0) if seq == "dwi" else rng.uniform(3.0, 6.0))
            phase = float(rng.choice([1.0, 0.875, 0.8]))
            shape = [int(round(fov / ip)), int(round(fov * phase / ip)), int(round(cover / th))]
            spacing = [ip, ip, th]
        acq[seq] = {"shape": shape, "spacing": [round(v, 4) for v in spacing], "orientation": orient,
                    "motion_deg": [round(float(v), 2) for v in rng.normal(0, 1.2, 3)],
                    "motion_mm": [round(float(v), 2) for v in rng.normal(0, 1.5, 3)],
                    "fov_shift_mm": [round(float(v), 2) for v in rng.normal(0, 5, 3)]}
    return acq


def _grid_affine(a: dict, center: np.ndarray) -> np.ndarray:
    signs = np.array(ORIENTATIONS[a["orientation"]], float)
    A = np.eye(4)
    A[:3, :3] = np.diag(signs * np.asarray(a["spacing"], float))
    c = center + np.asarray(a["fov_shift_mm"])
    A[:3, 3] = c - A[:3, :3] @ ((np.asarray(a["shape"], float) - 1) / 2)
    return A


def _bias(shape: Sequence[int], rng: np.random.Generator, amp: float) -> np.ndarray:
    """Smooth multiplicative field exp(sum of low-order terms), built by broadcasting."""
    axes = [np.linspace(-1, 1, n, dtype=np.float32) for n in shape]
    x, y, z = axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]
    c = rng.normal(0, amp, 8).astype(np.float32)
    log = c[0] * x + c[1] * y + c[2] * z + c[3] * x * y + c[4] * (x * x - 0.33) + c[5] * (y * y - 0.33) + c[6] * z * z + c[7] * x * z
    return np.exp(log).astype(np.float32)


def synthesize_study(truth: dict, *, shape_mode: str = "clinical", with_wm: bool = False) -> dict[str, Any]:
    """Images for one planned study (no files): dict seq -> (array, affine), ``mask`` ->
    (uint8 array, affine) on the FLAIR grid, plus ``acquisition`` and ``lesion_volume_ml``;
    ``with_wm`` adds ``wm_on_mask_grid`` (true WM probability, float32) for realism checks."""
    import scipy.ndimage as ndi

    anat = load_anatomy(4 if shape_mode == "small" else 2)
    rng_anat = np.random.default_rng(truth["anatomy_seed"])
    rng = np.random.default_rng(truth["seed"])
    lesion_rng = np.random.default_rng(truth["anatomy_seed"] + [5])  # follow-ups: same lesion shape
    tissue, atrophy_map = _tissues(anat, truth)
    comps, lmask, masses = _lesions(anat, truth, tissue, lesion_rng)
    if any(f["kind"] == "others" and f["variant"] == "atrophy" for f in truth["findings"]):
        lmask = np.maximum(lmask, (atrophy_map > 0.5).astype(np.float32))
    # (S, X, Y, Z) = sum over tissues of contrast x probability
    contrast = np.array([[TISSUE_CONTRAST[s][t] for t in TISSUES] for s in SEQUENCES], np.float32)  # (S, T)
    tstack = np.stack([tissue[t] for t in TISSUES])  # (T, X, Y, Z)
    img = np.tensordot(contrast, tstack, axes=1)  # (S, T) . (T, X, Y, Z) -> (S, X, Y, Z)
    t2s_i = SEQUENCES.index("t2s")
    for name, m in comps:
        vals = np.asarray(LESION_CONTRAST[name], np.float32)
        for si in range(len(SEQUENCES)):
            mm = m
            if si == t2s_i and name in BLOOMING:  # susceptibility blooms beyond the clot
                mm = np.clip(np.maximum(m, ndi.gaussian_filter(m, 1.5 * 2.0 / anat["step_mm"]) * 2.2), 0, 1)
            img[si] += (vals[si] - img[si]) * mm  # = img * (1 - mm) + value * mm
    # tissue texture (microstructure, partial volume): smooth multiplicative field, ~12 % CV,
    # sized so FLAIR lesion/WM contrast matches the real BraTS cases (see realism_*)
    tex = ndi.gaussian_filter(rng_anat.standard_normal(anat["mask"].shape, dtype=np.float32), 1.0)
    tex *= 0.12 / max(float(tex.std()), 1e-6)
    img *= 1 + tex[None]  # (S, X, Y, Z)
    # subject warp on the template grid: elastic + mass effect, one map_coordinates per channel
    u = _elastic(anat, rng_anat, amp_mm=3.0, masses=masses)
    grid = np.indices(anat["mask"].shape, dtype=np.float32)  # (3, X, Y, Z)
    coords = grid + u
    chans = list(img) + [lmask] + ([tissue["wm"]] if with_wm else [])
    warped = [ndi.map_coordinates(ch, coords, order=1, mode="constant", cval=0.0) for ch in chans]
    # head pose (template mm -> scanner mm): patient-specific head size, study-specific pose
    head_c = anat["affine"][:3, :3] @ (np.array(anat["mask"].shape) / 2) + anat["affine"][:3, 3]
    scale = rng_anat.uniform(0.93, 1.07, 3)
    pose = _rigid(rng.normal(0, [6, 3, 4]), rng.normal(0, 5, 3), head_c, scale)
    acq = _acquisition(rng, shape_mode)
    inv_t = np.linalg.inv(anat["affine"])
    out: dict[str, Any] = {"acquisition": acq}
    noise_sd = {"dwi": 0.06, "adc": 0.0, "t2s": 0.04, "flair": 0.04, "t1": 0.03, "t2": 0.035}
    for si, seq in enumerate(SEQUENCES):
        a = acq[seq]
        A = _grid_affine(a, head_c)
        motion = _rigid(a["motion_deg"], a["motion_mm"], head_c)
        T = inv_t @ np.linalg.inv(pose) @ np.linalg.inv(motion) @ A  # acq voxel -> template voxel
        vol = ndi.affine_transform(warped[si], T[:3, :3], T[:3, 3], output_shape=tuple(a["shape"]), order=1)
        if seq == "dwi":
            dwi_head = vol > 0.03  # ADC shares the DWI grid: computed only where DWI has signal
        if seq == "adc":
            vol = (vol + rng.standard_normal(vol.shape, dtype=np.float32) * 0.04) * dwi_head
            data = np.clip(vol * 1000.0, 0, 32000)
        else:
            vol *= _bias(a["shape"], rng, 0.15)
            sd = noise_sd[seq]
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
            data *= float(rng.uniform(600, 1400))  # scanner gain
            np.clip(data, 0, 32000, out=data)
        out[seq] = (np.rint(data, out=data).astype(np.int16), A)
        if seq == MASK_GRID:
            mk = ndi.affine_transform(warped[len(SEQUENCES)], T[:3, :3], T[:3, 3], output_shape=tuple(a["shape"]), order=1)
            binm = mk > 0.5
            if not binm.any() and mk.max() > 0.05:  # tiny lesions (microbleeds) on a coarse grid
                binm = mk >= 0.5 * mk.max()
            out["mask"] = (binm.astype(np.uint8), A)
            if with_wm:
                out["wm_on_mask_grid"] = ndi.affine_transform(warped[len(SEQUENCES) + 1], T[:3, :3], T[:3, 3],
                                                              output_shape=tuple(a["shape"]), order=1)
            out["lesion_volume_ml"] = float(out["mask"][0].sum() * np.prod(a["spacing"]) / 1000.0)
    return out


def _nifti_bytes(data: np.ndarray, affine: np.ndarray) -> bytes:
    import nibabel as nib

    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm")
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    # gzip with mtime=0 so the same seed gives byte-identical files; level 1 is fast
    return gzip.compress(img.to_bytes(), compresslevel=1, mtime=0)


FILE_NAMES = {**{s: f"{s}.nii.gz" for s in SEQUENCES}, "mask": "lesion_mask.nii.gz"}


def write_study(out_dir: Path, truth: dict, shape_mode: str = "clinical") -> dict:
    """Synthesise one study and write its NIfTI files + ground_truth.json atomically."""
    from medalign.utils import atomic_write_bytes, atomic_write_json

    res = synthesize_study(truth, shape_mode=shape_mode)
    sdir = Path(out_dir) / truth["study_id"]
    sdir.mkdir(parents=True, exist_ok=True)
    for key in (*SEQUENCES, "mask"):
        data, aff = res[key]
        atomic_write_bytes(sdir / FILE_NAMES[key], _nifti_bytes(data, aff))
    gt = dict(truth)
    gt["acquisition"] = res["acquisition"]
    gt["lesion_volume_ml"] = round(res["lesion_volume_ml"], 3)
    gt["mask_grid"] = MASK_GRID
    gt["shape_mode"] = shape_mode
    gt["files"] = {k: FILE_NAMES[k] for k in (*SEQUENCES, "mask")}
    atomic_write_json(sdir / "ground_truth.json", gt)
    return gt


def _worker(args: tuple[str, dict, str]) -> dict:
    out_dir, truth, mode = args
    return write_study(Path(out_dir), truth, mode)


def generate_brain_cohort(out_dir: str | os.PathLike, *, n: int = 262, seed: int = 0,
                          shape_mode: str = "clinical", label_noise: float = 0.0,
                          studies_per_patient: str | int = "1", heldout_phrasing: bool = False,
                          split_counts: dict[str, int] | None = None, workers: int = 2,
                          progress: bool = False) -> Path:
    """Write a synthetic cohort to ``out_dir``; returns the path of ``manifest.csv``.

    Files: ``<study_id>/{dwi,adc,t2s,flair,t1,t2}.nii.gz``, ``lesion_mask.nii.gz`` (FLAIR
    grid; empty for normal), ``ground_truth.json`` (true class, findings, acquisition, the
    possibly noisy manifest label), plus ``manifest.csv`` and ``cohort.json``.
    """
    import pandas as pd

    from medalign.utils import atomic_write_json, atomic_write_text

    if shape_mode not in ("clinical", "small"):
        raise MedAlignError(f"--shape-mode must be 'clinical' or 'small', got '{shape_mode}'")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plans = plan_cohort(n, seed, label_noise=label_noise, studies_per_patient=studies_per_patient,
                        heldout_phrasing=heldout_phrasing, split_counts=split_counts)
    load_anatomy(4 if shape_mode == "small" else 2)  # before forking: workers inherit it
    jobs = [(str(out), p, shape_mode) for p in plans]
    workers = max(1, int(workers))
    bar: Callable[[Any], Any] = (lambda it: it)
    if progress:
        from tqdm import tqdm

        bar = lambda it: tqdm(it, total=len(jobs), desc="synth brain", unit="study")  # noqa: E731
    if workers == 1:
        truths = [_worker(j) for j in bar(jobs)]
    else:
        import multiprocessing as mp

        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
        with ctx.Pool(workers) as pool:
            truths = list(bar(pool.imap(_worker, jobs, chunksize=1)))
    rows = []
    for t in truths:
        sid = t["study_id"]
        row = {"study_id": sid, "patient_id": t["patient_id"], "split": t["split"],
               "label": t["manifest_label"], "report": t["report"]}
        for s in SEQUENCES:
            row[f"image_{s}"] = f"{sid}/{FILE_NAMES[s]}"
        row["mask"] = f"{sid}/{FILE_NAMES['mask']}"
        rows.append(row)
    df = pd.DataFrame(rows)
    atomic_write_text(out / "manifest.csv", df.to_csv(index=False))
    atomic_write_json(out / "cohort.json", {
        "generator": "medalign.data.synth.brain", "n": n, "seed": seed, "shape_mode": shape_mode,
        "label_noise": label_noise, "studies_per_patient": str(studies_per_patient),
        "heldout_phrasing": heldout_phrasing, "split_counts": split_counts or split_counts_for(n),
        "classes": list(CLASSES)})
    return out / "manifest.csv"


def load_ground_truth(study_dir: str | os.PathLike) -> dict:
    """Read ``<study_dir>/ground_truth.json``."""
    p = Path(study_dir) / "ground_truth.json"
    return json.loads(p.read_text(encoding="utf-8"))


# ----------------------------------------------------------------------------- realism
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
        res = synthesize_study(t, shape_mode=shape_mode, with_wm=True)
        flair = res["flair"][0].astype(np.float32)
        les = res["mask"][0] > 0
        wm = (res["wm_on_mask_grid"] > 0.9) & (ndi.maximum_filter(les.astype(np.uint8), size=11) == 0)
        out.append({"case": t["study_id"], "contrast": _flair_contrast(flair, les, wm),
                    "volume_ml": res["lesion_volume_ml"], "size_mm": t["findings"][0]["size_mm"]})
    return out
