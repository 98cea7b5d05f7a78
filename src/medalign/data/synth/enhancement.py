"""Post-contrast T1 (``t1c``) of the synthetic brain cohort: what enhances after gadolinium.

Gadolinium shortens T1 where the blood-brain barrier is broken, and where there is none (dura,
scalp, mucosa). ``post_contrast`` turns a study's lesion components (``synth.lesions``) into
the components of its t1c signal; ``t1c_signal`` blends them over ``T1C_TISSUE`` with
``T1C_CONTRAST`` the way ``sequences._signal`` blends ``LESION_CONTRAST`` for the other
sequences (same units: T1 WM 0.78; a component that does not enhance keeps its T1 value):

- glioma: the solid tumour enhances; the necrotic core, blended over it afterwards, does not:
  ring enhancement around necrosis, solid enhancement without;
- meningioma: avid homogeneous enhancement and a dural tail (the dura next to the tumour,
  made from the tumour map and the brain surface: no random draw);
- acute infarct: ``SUBACUTE_FRACTION`` of the studies are early subacute (DWI still bright,
  days ~5-14): the grey matter inside the infarct enhances (gyral for a territorial infarct,
  patchy for lacunes); the rest are hyperacute/acute and do not enhance;
- demyelination: ``ACTIVE_MS_FRACTION`` of the studies have active disease: 1-3 plaques
  enhance (nodular);
- sinus disease: the inflamed mucosa enhances mildly;
- no enhancement: haemorrhage of any age, microbleeds, chronic infarct and its gliosis,
  vasogenic oedema, white-matter hyperintensities, atrophy, normal parenchyma;
- every study: the dura (a thin shell at the brain surface) and the scalp brighten mildly.

The random choices come from the study's own t1c stream (``brain.synthesize_study``), so the
six other sequences, the lesion mask and the reports (which never mention contrast) are the
same with and without t1c.
"""
from __future__ import annotations

import numpy as np

from medalign.data.synth.anatomy import TISSUES
from medalign.data.synth.sequences import LESION_CONTRAST, SEQUENCES, TISSUE_CONTRAST

SUBACUTE_FRACTION = 0.3   # of acute-infarct studies: enhancing (early subacute)
ACTIVE_MS_FRACTION = 0.5  # of demyelination studies: 1-3 enhancing plaques
DURA_WEIGHT = 0.35        # blend weight of the normal dural enhancement (thin, faint)
TAIL_MM = 10.0            # reach of a meningioma's dural tail beyond the tumour

# Normal tissue on t1c: the parenchyma and CSF as on T1; the scalp (vessels, muscle) brighter.
T1C_TISSUE: dict[str, float] = {**TISSUE_CONTRAST["t1"], "scalp": 0.96}
# Components brighter on t1c than on T1; the pseudo-components are added by ``post_contrast``.
ENHANCED: dict[str, float] = {
    "tumor_solid": 1.15,         # glioma: ring (around necrosis) or solid
    "meningioma": 1.20,          # avid, homogeneous
    "dural_tail": 1.05,
    "infarct_enhancing": 0.85,   # early subacute infarct: its grey matter (gyral / patchy)
    "plaque_active": 1.00,       # nodular
    "sinus_mucosa": 0.60,        # mucosal
    "dura": 0.95,                # normal: thin dural enhancement
}
_T1 = SEQUENCES.index("t1")
T1C_CONTRAST: dict[str, float] = {**{k: v[_T1] for k, v in LESION_CONTRAST.items()}, **ENHANCED}
# pseudo-component -> the lesion component whose enhancement it is (for the ground truth)
_PART_OF = {"infarct_enhancing": "infarct_acute", "plaque_active": "plaque"}


def _dura(anat: dict) -> np.ndarray:
    """A thin shell (0..1) on the brain surface: where the blurred brain mask crosses 0.5."""
    import scipy.ndimage as ndi

    mb = ndi.gaussian_filter(anat["mask"], 2.0 / anat["step_mm"])
    return np.clip(4.0 * mb * (1.0 - mb), 0, 1).astype(np.float32)


def _dural_tail(anat: dict, men: np.ndarray, shell: np.ndarray) -> np.ndarray:
    """The dura within ~``TAIL_MM`` of a meningioma, outside the tumour itself."""
    import scipy.ndimage as ndi

    near = ndi.gaussian_filter(men, TAIL_MM / anat["step_mm"])
    near = np.clip(near * (4.0 / max(float(near.max()), 1e-6)), 0, 1)
    return (shell * near * (1.0 - men)).astype(np.float32)


def _active_plaques(pl: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """1-3 of the plaques (connected parts of ``pl > 0.5``), soft edges kept; and how many."""
    import scipy.ndimage as ndi

    lab, n = ndi.label(pl > 0.5)
    k = min(int(rng.integers(1, 4)), n)
    if k == 0:
        return np.zeros_like(pl), 0
    pick = rng.choice(np.arange(1, n + 1), size=k, replace=False)
    keep = ndi.binary_dilation(np.isin(lab, pick), iterations=2)
    return (pl * keep).astype(np.float32), k


def post_contrast(anat: dict, tissue: dict[str, np.ndarray], comps: list[tuple[str, np.ndarray]],
                  truth: dict, rng: np.random.Generator) -> tuple[list[tuple[str, np.ndarray]], dict]:
    """The t1c components (name, template-grid map), in blending order, and the ground truth
    of the enhancement: ``enhancing`` (lesion components brighter on t1c than on T1),
    ``pattern``, ``background`` and, where they apply, ``infarct_phase`` / ``active_plaques``."""
    variants = {f["variant"]: f for f in truth["findings"]}
    # study-level draws first, always both, so the stream does not depend on the class
    subacute = bool(rng.random() < SUBACUTE_FRACTION)
    active = bool(rng.random() < ACTIVE_MS_FRACTION)
    shell = _dura(anat)
    out: list[tuple[str, np.ndarray]] = [("dura", shell * DURA_WEIGHT)]
    info: dict = {"enhancing": [], "pattern": "none", "background": ["dura", "scalp"]}
    patterns: list[str] = []
    for i, (name, m) in enumerate(comps):
        out.append((name, m))
        if name == "tumor_solid":  # a glioma's or metastasis's necrosis follows its solid part in comps: a ring
            ring = i + 1 < len(comps) and comps[i + 1][0] == "tumor_necrosis"
            patterns.append("ring" if ring else "solid")
        elif name == "meningioma":
            out.append(("dural_tail", _dural_tail(anat, m, shell)))
            patterns.append("homogeneous with dural tail")
        elif name == "infarct_acute":
            info["infarct_phase"] = "early subacute" if subacute else "acute"
            if subacute:
                out.append(("infarct_enhancing", m * np.clip(tissue["gm"] * 1.5, 0, 1)))
                patterns.append("gyral" if "territorial" in variants else "patchy")
        elif name == "plaque":
            act, k = _active_plaques(m, rng) if active else (None, 0)
            info["active_plaques"] = k
            if act is not None and k:
                out.append(("plaque_active", act))
                patterns.append("nodular")
        elif name == "sinus_mucosa":
            patterns.append("mucosal")
    for name, _ in out[1:]:
        if name in ENHANCED or name in _PART_OF:
            info["enhancing"].append(_PART_OF.get(name, name))
    info["enhancing"] = sorted(set(info["enhancing"]))
    info["pattern"] = "; ".join(dict.fromkeys(patterns)) or "none"
    return out, info


def t1c_signal(tissue: dict[str, np.ndarray], comps: list[tuple[str, np.ndarray]],
               tex: np.ndarray, tissue_contrast: dict[str, float] | None = None,
               component_contrast: dict[str, float] | None = None) -> np.ndarray:
    """Noise-free t1c (X, Y, Z) on the template grid; ``tex`` is the study's tissue texture
    (the same multiplicative field as the other sequences'). ``tissue_contrast`` /
    ``component_contrast`` replace ``T1C_TISSUE`` / ``T1C_CONTRAST`` for one study (domain
    randomisation, ``synth.randomise``)."""
    tt = T1C_TISSUE if tissue_contrast is None else tissue_contrast
    cc = T1C_CONTRAST if component_contrast is None else component_contrast
    contrast = np.array([tt[t] for t in TISSUES], np.float32)  # (T,)
    tstack = np.stack([tissue[t] for t in TISSUES])  # (T, X, Y, Z)
    img = np.tensordot(contrast, tstack, axes=1)  # (T,) . (T, X, Y, Z) -> (X, Y, Z)
    for name, m in comps:
        img += (np.float32(cc[name]) - img) * m
    img *= 1 + tex
    return img
