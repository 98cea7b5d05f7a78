"""White-matter disease of the synthetic brain cohort, drawn by shape (issue 20).

With domain randomisation on (``synth.randomise``) the two white-matter findings of the
"others" class are drawn the way they look on real FLAIR, not as round blobs:

- **small vessel disease** (``variant="wmh"``) by Fazekas grade (``f["fazekas"]``):
  periventricular caps at the frontal and occipital horns and a band along the lateral
  ventricles (1: caps / pencil-thin lining, 2: smooth halo, 3: irregular, extending into the
  deep white matter), broken into separate confluent patches at grades 2-3 (``PATCHES``), plus
  deep white-matter foci (1: punctate, 2: beginning confluence, 3: large confluent areas);
- **multiple sclerosis** (``variant="demyelination"``, ``f["locations"]``): ovoid
  periventricular lesions with their long axis perpendicular to the ventricle wall (Dawson's
  fingers: along the gradient of the distance to the ventricles), juxtacortical lesions at the
  grey-white junction and infratentorial lesions (brainstem, cerebellar white matter).

``refine_wmd`` draws the grade / locations into a finding (patient stream: follow-ups keep
them); ``draw_wmd`` draws the lesion map on the template grid as the ``wmh`` / ``plaque``
components of ``synth.sequences``; ``wmd_sentence`` writes what was drawn in each report
family (``synth.report_grammar``).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from medalign.data.synth.shapes import blob

FAZEKAS_P = (0.2, 0.4, 0.4)  # grades 1, 2, 3 of small vessel disease
# per grade: periventricular band and cap (mm from the ventricle wall), deep foci (count, radius mm)
# ``rough``: amplitude (mm) of the smooth noise on the band's edge (smooth halo vs irregular).
# Volumes this gives on the 2 mm template grid (lesion map > 0.5), by grade: see the issue-20 report;
# the three real clinical WMH cases in ../shared/data/real_dev have 11, 24 and 34 ml.
# Grades 2-3 (stop 43): wider band and caps and 20-40 deep foci (at grade 2 in groups of 2-4), so that,
# broken into patches (PATCHES), grade 3 keeps its volume and grade 2 nears the milder real cases.
SVD_SHAPE: dict[int, dict[str, tuple[float, float]]] = {
    1: {"band": (0.0, 0.5), "cap": (2.0, 4.0), "rough": (0.5, 0.5), "foci": (3, 10), "radius": (1.5, 2.5)},
    2: {"band": (1.5, 3.5), "cap": (5.0, 9.0), "rough": (1.0, 1.0), "foci": (20, 40), "radius": (2.0, 3.5)},
    3: {"band": (3.5, 6.0), "cap": (8.0, 12.0), "rough": (2.5, 2.5), "foci": (20, 40), "radius": (3.0, 5.0)},
}
# Periventricular and confluent signal broken into separate patches (grade: (noise sigma mm, share kept)).
# Real WMH are many separate areas: on the three real clinical FLAIRs (real_dev, manual masks) the
# largest connected lesion is 20-34 % of the lesion volume (2.2 of 11, 7.1 of 24, 11.7 of 34 ml), in
# 48-77 26-connected pieces; one continuous ring around the ventricles reads as one big lesion. The
# realism report measures it (lesion_largest_share). With (4 mm, 0.5 / 0.6) and the grade-3 confluent
# areas left whole, the demo cohort's grades 2-3 kept one piece of 36-83 % (26-connected, template
# grid): a kept share near a half percolates along the thin periventricular shell. Now (seed-0 cohort,
# template grid) grade 2 is 9-15 ml in 59-77 pieces, the largest 18-35 %; grade 3 29-47 ml in 70-97
# pieces, the largest 24-48 % in six of seven studies.
PATCHES: dict[int, tuple[float, float]] = {2: (2.5, 0.3), 3: (3.0, 0.4)}
PV_Z_MM = (-10.0, 45.0)  # periventricular and confluent signal: MNI z, around the lateral ventricles
MS_COUNTS = {"periventricular": (4, 12), "juxtacortical": (0, 4), "infratentorial": (0, 3)}
_LATERAL_CACHE: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}


# ----------------------------------------------------------------------------- truth
def refine_wmd(findings: list[dict], rng: np.random.Generator) -> dict[str, Any]:
    """Fazekas grade / MS lesion locations into the white-matter findings (in place); every
    value is drawn whatever the class, so the stream does not depend on it. Returns the draws."""
    grade = int(rng.choice([1, 2, 3], p=FAZEKAS_P))
    locs = {k: int(rng.integers(lo, hi + 1)) for k, (lo, hi) in MS_COUNTS.items()}
    length = round(float(rng.uniform(10, 18)), 1)
    for f in findings:
        if f.get("kind") != "others":
            continue
        if f["variant"] == "wmh":
            f["fazekas"] = grade
            f["region"] = "periventricular and deep"
        elif f["variant"] == "demyelination":
            f["locations"] = dict(locs)
            f["count"] = int(sum(locs.values()))
            f["size_mm"] = length
    return {"fazekas": grade, "ms_locations": locs, "ms_length_mm": length}


# ----------------------------------------------------------------------------- maps
def _mni(anat: dict, axis: int) -> np.ndarray:
    """MNI mm of every index along ``axis`` of the template grid (axis-aligned affine)."""
    n = anat["mask"].shape[axis]
    return anat["affine"][axis, axis] * np.arange(n) + anat["affine"][axis, 3]


def _lateral(anat: dict) -> tuple[np.ndarray, np.ndarray]:
    """The lateral ventricles (the template's ventricle map without the midline fissure, the
    fourth ventricle and the cisterns) and the distance to them in mm; cached per grid."""
    import scipy.ndimage as ndi

    key = (anat["step_mm"], anat["mask"].shape)
    if key not in _LATERAL_CACHE:
        x, y, z = (_mni(anat, a) for a in range(3))
        box = ((np.abs(x) >= 3)[:, None, None] & ((y >= -85) & (y <= 40))[None, :, None]
               & ((z >= -10) & (z <= 34))[None, None, :])
        lat = anat["ventricles"] & box
        _LATERAL_CACHE[key] = (lat, (ndi.distance_transform_edt(~lat) * anat["step_mm"]).astype(np.float32))
    return _LATERAL_CACHE[key]


def _ventricle_distance(anat: dict, tissue: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Distance (mm) to the lateral ventricles as atrophy has widened them, and the unit
    gradient of that distance (3, X, Y, Z): the direction away from the ventricle wall."""
    import scipy.ndimage as ndi

    lat, d0 = _lateral(anat)
    now = lat | ((tissue["csf"] > 0.5) & (d0 < 12.0))
    d = (ndi.distance_transform_edt(~now) * anat["step_mm"]).astype(np.float32)
    g = np.stack(np.gradient(ndi.gaussian_filter(d, 1.0)))  # (3, X, Y, Z)
    g /= np.maximum(np.sqrt((g ** 2).sum(0)), 1e-6)
    return d, g


def _smooth_noise(shape: tuple[int, ...], rng: np.random.Generator, sigma_vox: float) -> np.ndarray:
    import scipy.ndimage as ndi

    n = ndi.gaussian_filter(rng.normal(size=shape).astype(np.float32), sigma_vox)
    return n / max(float(n.std()), 1e-6)


def _pick(cand: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` candidate voxels (rows of ``cand``) without replacement; fewer if there are fewer."""
    if len(cand) == 0 or k <= 0:
        return cand[:0]
    return cand[rng.choice(len(cand), size=min(k, len(cand)), replace=False)]


def _draw_svd(canvas: Any, f: dict) -> np.ndarray:
    """Periventricular caps/band + deep foci by Fazekas grade; returns the lesion map."""
    anat, tissue, rng, shape, vox = canvas.anat, canvas.tissue, canvas.rng, canvas.shape, canvas.vox
    g = int(f["fazekas"])
    p = SVD_SHAPE[g]
    d, _ = _ventricle_distance(anat, tissue)
    lat, _ = _lateral(anat)
    y = _mni(anat, 1)[None, :, None]
    ys = _mni(anat, 1)[np.nonzero(lat)[1]]
    front, back = np.percentile(ys, 97), np.percentile(ys, 3)
    # cap weight: 1 beyond the horn tips, falling off over 10 mm towards the ventricular body
    capw = np.clip(np.maximum((y - (front - 12.0)) / 10.0, ((back + 12.0) - y) / 10.0), 0, 1)
    band, cap = rng.uniform(*p["band"]), rng.uniform(*p["cap"])
    reach = band + (cap - band) * capw  # (1, Y, 1) mm
    rough = p["rough"][0] * _smooth_noise(shape, rng, 2.0 / vox)  # smooth halo (2) vs irregular (3)
    wm_like = np.clip(tissue["wm"] * 1.4, 0, 1)
    z = _mni(anat, 2)[None, None, :]
    zband = (z > PV_Z_MM[0]) & (z < PV_Z_MM[1])
    pv = np.clip((reach + rough - d) / vox + 0.5, 0, 1) * wm_like * (d > 0) * zband
    # deep white matter (centrum semiovale, corona radiata): away from the ventricles and the sulci
    deep = (tissue["wm"] > 0.7) & (d > 6.0) & (d < 30.0) & (z > -5.0) & (anat["dist_csf"] * vox > 3.0)
    cand = np.argwhere(deep)
    foci = np.zeros(shape, np.float32)
    n = int(rng.integers(p["foci"][0], p["foci"][1] + 1))
    centres = _pick(cand, n if g != 2 else max(2, n // 3), rng).astype(float)
    if g == 2:  # beginning confluence: foci in small groups that touch
        centres = np.concatenate([c + rng.normal(0, 2.5 / vox, (int(rng.integers(2, 5)), 3)) for c in centres])
    for c in centres:
        r = rng.uniform(*p["radius"]) / vox
        foci = np.maximum(foci, blob(shape, c, r * rng.uniform(0.7, 1.3, 3), rng, 0.2, soft=0.5))
    if g == 3:  # large confluent areas joining the periventricular signal
        conf = _smooth_noise(shape, rng, 4.0 / vox)
        # part of the periventricular signal, so that the patches break it up as well
        pv = np.maximum(pv, np.clip(conf - 1.4 + (12.0 - d) / 12.0, 0, 1) * (d < 15.0) * zband * wm_like)
    if g in PATCHES:  # drawn last, so every earlier draw of the stream is unchanged
        from scipy.stats import norm

        sigma_mm, keep = PATCHES[g]
        thr = float(norm.ppf(1.0 - keep))  # the unit-SD noise exceeds it on a share ``keep`` of voxels
        patch = _smooth_noise(shape, rng, sigma_mm / vox)  # (X, Y, Z), unit SD
        pv = pv * np.clip((patch - thr) / 0.25 + 0.5, 0, 1)  # soft edge ~0.25 SD
    return np.maximum(pv, foci * wm_like).astype(np.float32)


def _draw_ms(canvas: Any, f: dict) -> np.ndarray:
    """Dawson's fingers, juxtacortical and infratentorial plaques; returns the lesion map."""
    anat, tissue, rng, shape, vox = canvas.anat, canvas.tissue, canvas.rng, canvas.shape, canvas.vox
    d, grad = _ventricle_distance(anat, tissue)
    z = _mni(anat, 2)[None, None, :]
    y = _mni(anat, 1)[None, :, None]
    wm, gm = tissue["wm"], tissue["gm"]
    loc = f["locations"]
    pl = np.zeros(shape, np.float32)
    length = float(f.get("size_mm") or 12.0)
    for c in _pick(np.argwhere((wm > 0.5) & (d > 1.0) & (d < 7.0) & (z > -5.0) & (z < 36.0)),
                   loc.get("periventricular", 0), rng):
        axis = grad[(slice(None), *c)]  # away from the ventricle wall: the long axis
        axes = np.linalg.qr(np.column_stack([axis, rng.normal(size=(3, 2))]))[0]  # first column = +-axis
        radii = np.array([length / 2 * rng.uniform(0.75, 1.25), rng.uniform(2.5, 4.5), rng.uniform(2.5, 4.5)]) / vox
        cc = c + axis * 0.4 * radii[0]  # the inner end touches the ventricle
        pl = np.maximum(pl, blob(shape, cc, radii, rng, 0.1, soft=0.5, axes=axes))
    juxta = (wm > 0.3) & (wm < 0.7) & (gm > 0.25) & (d > 15.0) & (z > -10.0) & (anat["dist_csf"] * vox > 1.0)
    infra = (wm > 0.5) & (z < -18.0) & (y > -75.0) & (y < -15.0)
    for cand, key in ((juxta, "juxtacortical"), (infra, "infratentorial")):
        for c in _pick(np.argwhere(cand), loc.get(key, 0), rng):
            r = rng.uniform(2.5, 4.5) / vox
            pl = np.maximum(pl, blob(shape, c.astype(float), r * rng.uniform(0.8, 1.2, 3), rng, 0.2, soft=0.5))
    return (pl * canvas.brain).astype(np.float32)


def draw_wmd(canvas: Any, f: dict) -> np.ndarray:
    """Draw a refined white-matter finding on ``canvas`` (a ``lesions._Canvas``): appends the
    ``wmh`` or ``plaque`` component and returns the lesion-mask map."""
    if f["variant"] == "wmh":
        m = _draw_svd(canvas, f)
        canvas.comps.append(("wmh", m))
    else:
        m = _draw_ms(canvas, f)
        canvas.comps.append(("plaque", m))
    return m


# ----------------------------------------------------------------------------- reports
_GRADE_WORD = {1: "mild", 2: "moderate", 3: "severe"}


def _svd_text(f: dict, pick, family: str) -> tuple[list[str], str]:
    g = int(f["fazekas"])
    word = _GRADE_WORD[g]
    if family == "radiologist":
        return [pick({1: ["Multiple punctate WM foci, Fazekas 1, more than expected for age.",
                          "Small vessel disease, Fazekas 1 (multiple punctate foci)."],
                      2: ["Chronic microangiopathic changes, Fazekas 2.", "Moderate small vessel disease (Fazekas 2)."],
                      3: ["Chronic microangiopathic changes, Fazekas 3.", "Severe small vessel disease, confluent (Fazekas 3)."]}[g])], ""
    if family == "heldout":
        return [pick({1: ["Multiple punctate foci of leukoaraiosis in the deep white matter, more than expected for age (Fazekas 1)."],
                      2: ["Moderate leukoaraiosis with early confluence of the deep foci (Fazekas 2)."],
                      3: ["Extensive confluent leukoaraiosis of the cerebral hemispheres (Fazekas 3).",
                          "Severe leukoaraiosis, chronic microvascular in nature (Fazekas 3)."]}[g])], "leukoaraiosis"
    main = {1: ["Multiple punctate deep white matter hyperintensities and thin periventricular caps on FLAIR (Fazekas 1), "
                "more than expected for age, in keeping with small vessel disease.",
                "Periventricular caps and multiple punctate foci of white matter hyperintensity (Fazekas 1), "
                "in keeping with small vessel disease."],
            2: ["Smooth periventricular halo and deep white matter hyperintensities with beginning confluence (Fazekas 2), "
                "in keeping with moderate small vessel disease.",
                "Moderate periventricular and deep white matter hyperintensities on FLAIR, early confluent (Fazekas grade 2), "
                "likely chronic small vessel ischaemic disease."],
            3: ["Confluent periventricular white matter hyperintensities on FLAIR, in keeping with severe small vessel disease (Fazekas 3).",
                "Irregular periventricular hyperintensities extending into the deep white matter, with large confluent areas "
                "(Fazekas 3): severe small vessel disease.",
                "Confluent deep and periventricular white matter disease (Fazekas grade 3)."]}[g]
    return [pick(main)], f"{word} small vessel disease (Fazekas {g})"


def _ms_text(f: dict, pick, family: str) -> tuple[list[str], str]:
    loc = f["locations"]
    n = int(f["count"])
    extra = [k for k in ("juxtacortical", "infratentorial") if loc.get(k, 0) > 0]
    also = (", with " + " and ".join(extra) + " lesions") if extra else ""
    if family == "radiologist":
        parts = [f"{loc['periventricular']} periventricular (Dawson's fingers)"] + [f"{loc[k]} {k}" for k in extra]
        return [f"{', '.join(parts)} lesions c/w demyelination."], ""
    if family == "heldout":
        return [f"Several ({n}) ovoid lesions radiating from the ventricular margins (Dawson fingers){also}, "
                "characteristic of MS."], "MS"
    main = [f"Multiple ({n}) ovoid periventricular lesions perpendicular to the ventricles (Dawson's fingers){also}, "
            "in keeping with demyelination.",
            f"Multiple ovoid periventricular FLAIR hyperintense plaques oriented perpendicular to the ventricles{also}, "
            "in keeping with multiple sclerosis."]
    return [pick(main)], "demyelinating disease"


def wmd_sentence(f: dict, rng: np.random.Generator, family: str) -> tuple[list[str], str]:
    """Report sentences and impression words for a refined white-matter finding, in a report
    ``family`` ("standard", "radiologist" or "heldout"): they name the drawn Fazekas grade, or
    the MS lesions' locations."""
    def pick(options):
        return str(options[int(rng.integers(len(options)))])

    return (_svd_text if f["variant"] == "wmh" else _ms_text)(f, pick, family)
