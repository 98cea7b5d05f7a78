"""Lesions of the synthetic brain cohort: what each class's ground truth holds, and its maps.

``sample_truth`` draws one study's truth for a class (no images): findings with variant, side,
region (MNI centres below), size, count and age; patient age and atrophy; incidental findings.
``territory_shapes`` and ``watershed_infarcts`` reshape a planned study's territorial infarct
(``synth brain --infarct-territory`` / ``--infarct-watershed``; called by ``randomise.randomise_truth``);
``others_svd`` gives a share of the "others" patients small vessel disease instead of their planned finding (the
options that draw a lesion part's FLAIR signal, and their shared draw ``patient_share``, are ``synth.flair_drawn``).
``_lesions`` draws those findings on the template grid as lesion components (irregular
ellipsoids, each a ``LESION_CONTRAST`` name in ``sequences``), the lesion-mask map and the
sources of mass effect (used by ``anatomy._elastic``). White-matter findings refined by domain
randomisation (a Fazekas grade, MS lesion locations) are drawn by ``synth.wm_disease``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from medalign.data.schema import CLASSES
from medalign.data.synth.anatomy import _mm_to_vox
from medalign.data.synth.flair_drawn import patient_share
from medalign.data.synth.shapes import blob as _blob
from medalign.data.synth.shapes import wedge
from medalign.data.synth.wm_disease import _mni
from medalign.errors import MedAlignError

# Region centres in MNI mm for the right hemisphere (x > 0); the left side flips x.
LOBES = {"frontal": (30, 32, 24), "temporal": (46, -18, -12), "parietal": (34, -50, 40),
         "occipital": (24, -82, 8)}
TERRITORIES = {"MCA": (40, -12, 14), "ACA": (9, 22, 44), "PCA": (18, -76, 4)}
DEEP = {"basal ganglia": (22, 2, 2), "thalamus": (12, -18, 6), "internal capsule": (20, -6, 8),
        "corona radiata": (25, -10, 28)}
SINUSES = {"maxillary": (30, 20, -45), "frontal": (12, 62, 8)}  # approximate, in the head
# Border-zone (watershed) infarcts: the cortical zones between two arterial territories (ACA-MCA, a strip of the
# parasagittal high convexity; MCA-PCA, parieto-occipital) and the internal zone, the corona radiata beside the
# lateral ventricle's body, where small infarcts line up from front to back ("string of pearls").
WATERSHED = {"ACA-MCA": (20, 4, 52), "MCA-PCA": (36, -64, 30), "internal": (26, -12, 28)}
WATERSHED_P = (0.35, 0.3, 0.35)
WATERSHED_CORTICAL_MM, WATERSHED_TAN_HALF = (22.0, 36.0), (0.35, 0.6)  # a wedge narrower than a territory's
WATERSHED_FOCI, WATERSHED_FOCUS_MM, WATERSHED_STEP_MM = (3, 6), (5.0, 9.0), (7.0, 10.0)  # the internal chain
TERRITORY_STREAM = 13  # infarct shape by arterial territory: truth["anatomy_seed"] + [13] (randomise's: 11, 12)
TERRITORY_TAN_HALF = (0.5, 0.8)  # tan of the territory wedge's half-angle (base radius / depth)
# Territorial infarcts drawn by their arterial territory (``synth brain --infarct-territory P``): with probability
# P a patient's territorial infarct is a cortical-subcortical wedge, its base on the cortex of the territory
# (MCA, ACA, PCA) and its apex deep in the hemisphere (:func:`_territory_wedge`), as ischaemic strokes are,
# instead of an ellipsoid round the territory's centre, which on FLAIR alone is a deep bright blob, the look of
# confluent white-matter disease and of a tumour. The wedge's half-angle: TERRITORY_TAN_HALF.
# Measured at P = 1 (stop 52, training seeds 31-35, rule written first): DEV of its own generator 0.625 vs the
# default's 0.604, the default's DEV 0.599, but real WMH "others" 1/15 vs 5/15 (the mild two go to "normal"):
# off by default (README, "Known limitations", stop 52).
INFARCT_TERRITORY_P = 0.0
# patients' own streams, truth["anatomy_seed"] + [k]: border-zone infarcts, SVD (15, 16, 18, 19: ``synth.flair_drawn``; 21: ``sites``)
WATERSHED_STREAM, OTHERS_SVD_STREAM = 14, 17
# ``synth brain --infarct-watershed P`` (``randomise.DomainOptions``): a share P of the territorial infarcts drawn as
# border-zone infarcts instead (:func:`watershed_infarcts`). Off by default: not measured as a training default.
INFARCT_WATERSHED_P = 0.0
# ``synth brain --others-svd P`` (:func:`others_svd`): a share P of the "others" patients planned with atrophy, MS or sinus
# disease get small vessel disease (SVD) instead, the class balance untouched. Off by default: at P = 0.5 FLAIR-alone SVD
# "others" 42 vs 20 of 84 held out, but FLAIR-alone normals 59 vs 87 of 160, held out 0.662 vs 0.684 (README, stop 60).
OTHERS_SVD_P, WMH_SEVERITY = 0.0, (0.7, 1.0)  # WMH_SEVERITY: a planned small vessel disease's severity, a converted one's

OTHERS_VARIANTS = ("atrophy", "wmh", "demyelination", "sinus")
OTHERS_P = (0.35, 0.3, 0.23, 0.12)  # the unrandomised cohort's mix
# Domain-randomised cohorts (issue 20): small vessel disease, the commonest chronic finding on adult
# brain MRI, is the largest share; at 0.3 a 262-study cohort held ~9 training studies of it.
OTHERS_P_RANDOMISED = (0.25, 0.45, 0.2, 0.1)


# ----------------------------------------------------------------------------- ground truth
def _side_sign(side: str) -> float:
    return -1.0 if side == "left" else 1.0


def _jitter(rng: np.random.Generator, c: Sequence[float], sd: float = 4.0) -> list[float]:
    return [round(float(v + rng.normal(0, sd)), 1) for v in c]


def _infarct_findings(rng: np.random.Generator, side: str) -> list[dict]:
    """Findings of one infarct study on ``side``."""
    s = _side_sign(side)
    F: list[dict] = []
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
    return F


def territory_shapes(truth: dict, p: float) -> None:
    """Mark a planned study's territorial infarcts ``shape: "territory"`` (in place) with probability ``p``,
    with the wedge's ``tan_half``; a patient's own draw (:func:`patient_share`, ``TERRITORY_STREAM``: follow-ups keep
    the shape)."""
    found = [f for f in truth["findings"] if f.get("variant") == "territorial"]
    drawn = patient_share(truth, TERRITORY_STREAM, p, found, [TERRITORY_TAN_HALF])
    for f in found if drawn else ():
        f["shape"], f["tan_half"] = "territory", round(drawn[0], 4)


def others_svd(truth: dict, p: float) -> None:
    """With probability ``p``, turn a planned "others" study's finding other than small vessel disease into small vessel
    disease (in place; a patient's own draw, :func:`patient_share`, ``OTHERS_SVD_STREAM``: follow-ups keep it). A study
    planned with atrophy takes its age's atrophy. Before ``wm_disease.refine_wmd``, which gives the grade."""
    found = [f for f in truth["findings"] if f.get("kind") == "others" and f.get("variant") != "wmh"]
    drawn = patient_share(truth, OTHERS_SVD_STREAM, p, found, [WMH_SEVERITY])
    for f in found if drawn else ():
        if f["variant"] == "atrophy":
            truth["atrophy"] = round(age_atrophy(float(truth["age_years"])), 3)
        f.pop("locations", None)
        f.update(variant="wmh", region="periventricular", side="bilateral", count=1, size_mm=None,
                 severity=round(drawn[0], 3))


def watershed_findings(side: str, age: str, rng: np.random.Generator) -> list[dict]:
    """The findings of one border-zone (watershed) infarct on ``side`` (variant ``watershed``, region a
    ``WATERSHED`` zone): a cortical zone is one wedge drawn as a territory's (``shape: "territory"``) but
    narrower and smaller; the internal zone is a chain of 3-6 small foci, one finding each (as lacunes are),
    spaced 7-10 mm from front to back through the zone's centre."""
    s = _side_sign(side)
    zone = str(rng.choice(list(WATERSHED), p=list(WATERSHED_P)))
    c = WATERSHED[zone]
    base = {"class": "infarct", "kind": "infarct", "variant": "watershed", "age": age, "side": side, "region": zone}
    if zone != "internal":
        return [{**base, "count": 1, "size_mm": round(float(rng.uniform(*WATERSHED_CORTICAL_MM)), 1),
                 "shape": "territory", "tan_half": round(float(rng.uniform(*WATERSHED_TAN_HALF)), 4),
                 "center_mm": _jitter(rng, (s * c[0], c[1], c[2]), 3.0)}]
    count = int(rng.integers(WATERSHED_FOCI[0], WATERSHED_FOCI[1] + 1))
    step, size = float(rng.uniform(*WATERSHED_STEP_MM)), round(float(rng.uniform(*WATERSHED_FOCUS_MM)), 1)
    y0 = float(rng.normal(c[1], 3.0))
    return [{**base, "count": count, "size_mm": size,
             "center_mm": _jitter(rng, (s * c[0], y0 + step * (i - (count - 1) / 2), c[2]), 1.5)} for i in range(count)]


def watershed_infarcts(truth: dict, p: float) -> None:
    """With probability ``p``, replace a planned study's territorial infarct (in place) by a border-zone infarct
    of the same side and age (:func:`watershed_findings`), drawn from the patient's
    own stream ``truth["anatomy_seed"] + [WATERSHED_STREAM]``: follow-ups keep the zone, every other draw of the
    plan is unchanged, and ``p`` = 0 draws nothing."""
    F = truth["findings"]
    at = [i for i, f in enumerate(F) if f.get("variant") == "territorial"]
    if p <= 0 or not at:
        return
    rw = np.random.default_rng(list(truth["anatomy_seed"]) + [WATERSHED_STREAM])
    if float(rw.random()) < p:
        F[at[0]:at[0] + 1] = watershed_findings(F[at[0]]["side"], F[at[0]]["age"], rw)


def _tumor_findings(rng: np.random.Generator, side: str) -> list[dict]:
    """Findings of one tumor study on ``side``."""
    s = _side_sign(side)
    F: list[dict] = []
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
    return F


def _hemorrhage_findings(rng: np.random.Generator, side: str) -> list[dict]:
    """Findings of one hemorrhage study on ``side``."""
    s = _side_sign(side)
    F: list[dict] = []
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
    return F


def _others_finding(t: dict, rng: np.random.Generator, p: Sequence[float] = OTHERS_P) -> dict:
    """The one finding of an "others" study (variant drawn with probabilities ``p`` over
    ``OTHERS_VARIANTS``); atrophy also raises ``t["atrophy"]``."""
    variant = str(rng.choice(OTHERS_VARIANTS, p=list(p)))  # one uniform draw whatever p: the stream stays aligned
    f: dict[str, Any] = {"class": "others", "kind": "others", "variant": variant, "age": "chronic",
                         "side": "bilateral", "region": "", "count": 1, "size_mm": None, "center_mm": None}
    if variant == "atrophy":
        t["atrophy"] = round(float(rng.uniform(0.7, 1.0)), 3)
        f["region"] = str(rng.choice(["generalised", "ventriculomegaly"], p=[0.6, 0.4]))
    elif variant == "wmh":
        f["region"] = "periventricular"
        f["severity"] = round(float(rng.uniform(*WMH_SEVERITY)), 3)
    elif variant == "demyelination":
        f["region"] = "periventricular"
        f["count"] = int(rng.integers(6, 14))
        f["size_mm"] = round(float(rng.uniform(8, 14)), 1)
    else:
        f["region"] = str(rng.choice(list(SINUSES)))
        f["side"] = str(rng.choice(["left", "right", "bilateral"]))
    return f


def age_atrophy(age: float, noise: float = 0.0) -> float:
    """A patient's atrophy at ``age`` years (0 before 45, 0.3 at 90, capped at 0.35), plus ``noise``."""
    return float(np.clip((age - 45) / 45 * 0.3 + noise, 0.0, 0.35))


def sample_truth(label: str, rng: np.random.Generator, *, age: float | None = None,
                 others_p: Sequence[float] = OTHERS_P) -> dict:
    """Sample the ground truth of one study of class ``label`` (no images): findings with
    variant, side, region, size, count, age; patient age and atrophy; incidental findings.
    ``others_p``: probabilities of the "others" variants (``OTHERS_VARIANTS``)."""
    if label not in CLASSES:
        raise MedAlignError(f"unknown class '{label}'; allowed: {', '.join(CLASSES)}")
    age = float(age if age is not None else rng.uniform(25, 88))
    base_atrophy = age_atrophy(age, float(rng.normal(0, 0.05)))
    t: dict[str, Any] = {"label": label, "age_years": round(age, 1), "sex": str(rng.choice(["F", "M"])),
                         "atrophy": round(base_atrophy, 3), "findings": [], "incidental": []}
    side = str(rng.choice(["left", "right"]))
    F = t["findings"]
    if label == "infarct":
        F += _infarct_findings(rng, side)
    elif label == "tumor":
        F += _tumor_findings(rng, side)
    elif label == "hemorrhage":
        F += _hemorrhage_findings(rng, side)
    elif label == "others":
        F.append(_others_finding(t, rng, others_p))
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


# ----------------------------------------------------------------------------- lesion maps
def _outward(anat: dict, center_vox: np.ndarray) -> np.ndarray:
    """Unit vector (voxels) from the brain centre through ``center_vox``."""
    d = center_vox - np.array(np.nonzero(anat["mask"] > 0.5)).mean(1)
    return d / max(np.linalg.norm(d), 1e-6)


def _surface_point(anat: dict, center_vox: np.ndarray, d: np.ndarray | None = None) -> np.ndarray:
    """Walk from ``center_vox`` along ``d`` (default :func:`_outward`) to the brain surface."""
    mask = anat["mask"]
    d = _outward(anat, center_vox) if d is None else d
    p = center_vox.copy()
    for _ in range(200):
        q = np.round(p + d).astype(int)
        if np.any(q < 0) or np.any(q >= mask.shape) or mask[tuple(q)] < 0.5:
            break
        p = p + d
    return p


@dataclass
class _Canvas:
    """What every lesion drawer reads (template anatomy, tissue maps, RNG) and appends to."""

    anat: dict
    tissue: dict[str, np.ndarray]
    brain: np.ndarray                                                     # GM + WM probability
    rng: np.random.Generator
    comps: list[tuple[str, np.ndarray]] = field(default_factory=list)    # (LESION_CONTRAST name, map)
    masses: list[tuple[np.ndarray, float, float]] = field(default_factory=list)  # (centre vox, R, strength)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.anat["mask"].shape

    @property
    def vox(self) -> float:
        return self.anat["step_mm"]


def _territory_wedge(canvas: _Canvas, f: dict, c: np.ndarray, R: float) -> np.ndarray:
    """A territorial infarct by its arterial territory: a cone from deep in the hemisphere (its apex
    ``2R`` below the cortex) to the cortical surface beyond the territory's centre ``c``, in the
    infarct's own hemisphere, cortex included (the brain map cuts it at the surface and the sulci)."""
    anat = canvas.anat
    u = _outward(anat, c)
    tip = _surface_point(anat, c, u)
    w = wedge(canvas.shape, tip - u * 2 * R, tip, float(f["tan_half"]), canvas.rng, 0.2, beyond=R)
    hemi = np.clip(_side_sign(f["side"]) * _mni(anat, 0) / canvas.vox + 0.5, 0, 1)  # (X,): its own side, 1 voxel soft
    return w * hemi[:, None, None] * canvas.brain


def _draw_infarct(canvas: _Canvas, f: dict, c: np.ndarray | None, R: float) -> np.ndarray:
    """Acute infarct, or chronic: gliosis rim around a CSF-like core; an ellipsoid, or with ``shape:
    "territory"`` the wedge of its arterial territory (:func:`_territory_wedge`). Returns its mask map."""
    shape, brain, rng = canvas.shape, canvas.brain, canvas.rng
    chronic = f["age"] != "acute"
    if f.get("shape") == "territory":
        import scipy.ndimage as ndi

        b = _territory_wedge(canvas, f, c, R)
        inside = b > 0.5  # chronic: a CSF-like cavity inside a gliotic rim ~3 mm thick, one voxel at least
        core = (np.clip((ndi.distance_transform_edt(inside) * canvas.vox - 2.5) / 1.5, 0, 1)
                * ndi.binary_erosion(inside)) if chronic else None
    else:
        radii = R * rng.uniform(0.75, 1.0, 3)
        b = _blob(shape, c, radii, rng, 0.25) * brain
        core = _blob(shape, c, radii * 0.7, rng, 0.2) if chronic else None
    if core is None:
        canvas.comps.append(("infarct_acute", b))
    else:
        canvas.comps += [("gliosis", b), ("infarct_chronic", core * brain)]
    return b


def _draw_tumor(canvas: _Canvas, f: dict, c: np.ndarray | None, R: float) -> np.ndarray:
    """Glioma (oedema, solid, optional necrosis), meningioma on the brain surface, or one metastasis; all push tissue."""
    shape, brain, rng, tissue = canvas.shape, canvas.brain, canvas.rng, canvas.tissue
    if f["variant"] == "metastasis":  # synth.metastases: round, in oedema that spares the cortex, a small mass effect
        radii = R * rng.uniform(0.85, 1.0, 3)
        ed = _blob(shape, c, radii * f["edema_factor"], rng, 0.3) * np.clip(tissue["wm"] * 1.3 + 0.1 * tissue["gm"], 0, 1)
        solid = _blob(shape, c, radii, rng, 0.1) * brain
        canvas.comps += [("edema", ed), ("tumor_solid", solid)]
        if f["necrosis"]:  # right after its solid part: enhancement.post_contrast reads the pair as a ring
            canvas.comps.append(("tumor_necrosis", _blob(shape, c, radii * 0.5, rng, 0.1) * brain))
        canvas.masses.append((c, R, 0.2))
        return np.maximum(ed, solid)
    if f["variant"] == "glioma":
        radii = R * rng.uniform(0.8, 1.0, 3)
        ed = _blob(shape, c, radii * f["edema_factor"], rng, 0.35) * np.clip(tissue["wm"] * 1.3 + 0.25 * tissue["gm"], 0, 1)
        solid = _blob(shape, c, radii, rng, 0.2)
        canvas.comps += [("edema", ed), ("tumor_solid", solid)]
        if f["necrosis"]:
            core = radii * float(f.get("core_radius", 0.55))  # glioma_cores: a larger core when drawn
            canvas.comps.append(("tumor_necrosis", _blob(shape, c, core, rng, 0.2)))
        canvas.masses.append((c, R, 0.35))
        return np.maximum(ed, solid)
    cs = _surface_point(canvas.anat, c)
    radii = R * rng.uniform(0.85, 1.0, 3)
    men = _blob(shape, cs, radii, rng, 0.1)
    ed = _blob(shape, cs, radii * f["edema_factor"], rng, 0.3) * brain * (f["edema_factor"] > 1.15)
    canvas.comps += [("edema", ed), ("meningioma", men)]
    canvas.masses.append((cs, R, 0.5))
    return np.maximum(men, ed)


def _draw_hemorrhage(canvas: _Canvas, f: dict, c: np.ndarray | None, R: float) -> np.ndarray:
    """Microbleeds (GM or WM foci), or a haematoma: acute with oedema (mass effect), chronic with a cavity."""
    shape, brain, rng, tissue = canvas.shape, canvas.brain, canvas.rng, canvas.tissue
    if f["variant"] == "microbleeds":
        cand = np.argwhere((tissue["wm"] > 0.5) if f["region"] == "deep" else (tissue["gm"] > 0.5))
        pick = cand[rng.choice(len(cand), size=f["count"], replace=False)]
        mb = np.zeros(shape, np.float32)
        for p in pick:
            mb = np.maximum(mb, _blob(shape, p.astype(float), [R, R, R], rng, 0.0, soft=0.4))
        canvas.comps.append(("microbleed", mb))
        return mb
    radii = R * rng.uniform(0.75, 1.0, 3)
    hem = _blob(shape, c, radii, rng, 0.15) * np.clip(brain * 1.5, 0, 1)
    if f["age"] == "acute":
        ed = _blob(shape, c, radii * 1.45, rng, 0.3) * brain
        canvas.comps += [("edema", ed), ("hematoma_acute", hem)]
        canvas.masses.append((c, R, 0.3))
        return np.maximum(hem, ed)
    core = _blob(shape, c, radii * 0.6, rng, 0.2) * brain
    canvas.comps += [("hematoma_chronic", hem), ("infarct_chronic", core)]
    return hem


def _draw_others(canvas: _Canvas, f: dict, c: np.ndarray | None, R: float) -> np.ndarray | None:
    """WMH caps/bands, demyelinating plaques, or sinus mucosa; atrophy draws nothing here."""
    shape, vox, brain, rng, tissue, anat = canvas.shape, canvas.vox, canvas.brain, canvas.rng, canvas.tissue, canvas.anat
    var = f["variant"]
    if "fazekas" in f or "locations" in f:  # white-matter disease drawn by shape (domain randomisation)
        from medalign.data.synth.wm_disease import draw_wmd

        return draw_wmd(canvas, f)
    if var == "wmh":
        import scipy.ndimage as ndi

        sev = f["severity"]
        noise = ndi.gaussian_filter(rng.normal(size=shape).astype(np.float32), 1.5)
        noise /= max(float(noise.std()), 1e-6)
        reach = (4 + 6 * sev) / vox  # periventricular caps/bands, voxels
        w = np.clip(reach - anat["dist_vent"] + 2.5 * noise / vox, 0, 1)
        w = w * np.clip(tissue["wm"] * 1.4, 0, 1) * (anat["dist_vent"] > 0)
        canvas.comps.append(("wmh", w))
        return w
    if var == "demyelination":
        cand = np.argwhere((tissue["wm"] > 0.6) & (anat["dist_vent"] * vox < 14) & (anat["dist_vent"] > 0))
        pick = cand[rng.choice(len(cand), size=min(f["count"], len(cand)), replace=False)]
        pl = np.zeros(shape, np.float32)
        for p in pick:  # ovoid, long axis ~ perpendicular to the ventricle (Dawson)
            rr = np.array([0.35, 0.35, 0.5]) * f["size_mm"] / vox * rng.uniform(0.8, 1.2, 3)
            pl = np.maximum(pl, _blob(shape, p.astype(float), rr, rng, 0.1, soft=0.5))
        pl *= brain
        canvas.comps.append(("plaque", pl))
        return pl
    if var == "sinus":
        sides = ["left", "right"] if f["side"] == "bilateral" else [f["side"]]
        sm = np.zeros(shape, np.float32)
        for sd in sides:
            cc = SINUSES[f["region"]]
            x = cc[0] * _side_sign(sd) if f["region"] == "maxillary" else cc[0] * _side_sign(sd) * 0.5
            cv = _mm_to_vox(anat, (x, cc[1], cc[2]))
            sm = np.maximum(sm, _blob(shape, cv, np.array([11, 13, 13]) / vox, rng, 0.15))
        sm *= 1 - anat["mask"]
        canvas.comps.append(("sinus_mucosa", sm))
        return sm
    return None  # atrophy: drawn in the tissue maps (anatomy._tissues); its mask is set by the caller


_DRAWERS: dict[str, Callable[[_Canvas, dict, Any, float], np.ndarray | None]] = {
    "infarct": _draw_infarct, "tumor": _draw_tumor, "hemorrhage": _draw_hemorrhage, "others": _draw_others}


def _lesions(anat: dict, truth: dict, tissue: dict[str, np.ndarray], rng: np.random.Generator
             ) -> tuple[list[tuple[str, np.ndarray]], np.ndarray, list[tuple[np.ndarray, float, float]]]:
    """Lesion components (name, map), the lesion-mask map, and mass-effect sources."""
    canvas = _Canvas(anat, tissue, np.clip(tissue["gm"] + tissue["wm"], 0, 1), rng)
    shape, vox = canvas.shape, canvas.vox
    mask = np.zeros(shape, np.float32)
    for f in truth["findings"]:
        c = _mm_to_vox(anat, f["center_mm"]) if f.get("center_mm") else None
        R = (f["size_mm"] or 0) / 2 / vox
        draw = _DRAWERS.get(f["kind"])
        part = draw(canvas, f, c, R) if draw is not None else None
        if part is not None and not f.get("comorbid"):  # the mask holds the class's findings
            mask = np.maximum(mask, part)
    if truth.get("mild_changes") == "punctate_wmh":  # age-normal: a few small foci, not in the mask
        cand = np.argwhere(tissue["wm"] > 0.7)
        dots = np.zeros(shape, np.float32)
        for p in cand[rng.choice(len(cand), size=int(rng.integers(3, 7)), replace=False)]:
            dots = np.maximum(dots, _blob(shape, p.astype(float), [2.5 / vox] * 3, rng, 0.0, soft=0.4))
        canvas.comps.append(("wmh", dots))
    return canvas.comps, mask, canvas.masses


def follow_up(truth: dict, rng: np.random.Generator, years: float) -> dict:
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
