"""Brain metastases: ``synth brain --metastases P`` (issue 20).

The plan's tumours are gliomas (3 in 4) and meningiomas, each one mass. Metastases are the commonest intra-axial tumour
of adult brains and look otherwise: several round lesions, most of them at the grey-white matter junction (where the
arterioles narrow and tumour emboli lodge), some in the cerebellum, the larger ones necrotic, so that their enhancement
is a ring, each in vasogenic oedema out of proportion to its size. With this option a share P of the tumour patients
have metastases instead of their planned tumour: 2-6 lesions of 6-22 mm, each a finding of its own (as lacunes are),
centred on template voxels of the junction (:func:`junction_candidates`; 14 % of them in the cerebellum) at least
18 mm apart. One report sentence names their number, where they lie, the largest and the necrosis (``report_grammar``);
``lesions`` draws each. Off by default (:data:`METASTASES_P`): not measured as a training default.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from medalign.data.synth.anatomy import load_anatomy
from medalign.data.synth.sites import POSTERIOR_FOSSA, nearest_lobe

METASTASIS_STREAM = 22  # a patient's own: truth["anatomy_seed"] + [22] (sites': 21; flair_drawn's: 15, 16, 18, 19)
METASTASES_P = 0.0
METASTASIS_COUNT = (2, 6)          # lesions per patient, both ends included
METASTASIS_MM = (6.0, 22.0)        # diameter
METASTASIS_NECROTIC_MM = 12.0      # from this diameter a necrotic centre: a ring on T1c
METASTASIS_EDEMA = (1.8, 3.0)      # oedema radius / lesion radius: oedema out of proportion to the lesion
METASTASIS_APART_MM = 18.0         # centres at least this far apart
JUNCTION_WM = (0.3, 0.7)           # a junction voxel: white-matter fraction in this range ...
JUNCTION_BRAIN = 0.9               # ... and grey + white matter at least this


@lru_cache(maxsize=2)
def junction_candidates(step_mm: int = 4) -> np.ndarray:
    """(N, 3) MNI mm of the template's grey-white matter junction voxels, both hemispheres and the cerebellum, off the
    midline (|x| >= 6 mm, so each has a side)."""
    anat = load_anatomy(step_mm)
    wm, brain = anat["wm"], anat["gm"] + anat["wm"]
    vox = np.argwhere((wm >= JUNCTION_WM[0]) & (wm <= JUNCTION_WM[1]) & (brain >= JUNCTION_BRAIN))  # (N, 3) indices
    mm = vox @ anat["affine"][:3, :3].T + anat["affine"][:3, 3]  # (N, 3) MNI mm
    return mm[np.abs(mm[:, 0]) >= 6.0]


def _infratentorial(c: np.ndarray) -> bool:
    return bool(c[1] < POSTERIOR_FOSSA[0] and c[2] < POSTERIOR_FOSSA[1])


def _where(centres: list[np.ndarray]) -> tuple[str, str]:
    """(side, where): "left" / "right" / "bilateral", and the words that place the lesions."""
    sides = {"left" if c[0] < 0 else "right" for c in centres}
    hemis = {"left" if c[0] < 0 else "right" for c in centres if not _infratentorial(c)}
    parts = ([] if not hemis else ["both cerebral hemispheres"] if len(hemis) == 2
             else [f"the {next(iter(hemis))} cerebral hemisphere"])
    if any(_infratentorial(c) for c in centres):
        parts.append("the cerebellum")
    return ("bilateral" if len(sides) == 2 else next(iter(sides))), " and ".join(parts)


def metastasis_findings(rng: np.random.Generator) -> list[dict]:
    """The findings of one patient's metastases (variant ``metastasis``): each with its centre, region (nearest lobe or
    ``cerebellum``), size, ``necrosis`` and ``edema_factor``; ``count``, ``side``, ``where``, ``largest_mm``, ``necrotic``
    (any of them) and ``group`` are the group's, which the report reads (``report_grammar``: one sentence)."""
    cand = junction_candidates()
    n = int(rng.integers(METASTASIS_COUNT[0], METASTASIS_COUNT[1] + 1))
    centres: list[np.ndarray] = []
    for _ in range(50 * n):  # rejection: centres apart; a fixed number of tries keeps the stream's length bounded
        c = cand[int(rng.integers(len(cand)))]
        if all(np.linalg.norm(c - o) >= METASTASIS_APART_MM for o in centres):
            centres.append(c)
            if len(centres) == n:
                break
    sizes = [round(float(s), 1) for s in rng.uniform(*METASTASIS_MM, len(centres))]
    edema = [round(float(e), 2) for e in rng.uniform(*METASTASIS_EDEMA, len(centres))]
    side, where = _where(centres)
    group: dict[str, Any] = {"count": len(centres), "side": side, "where": where, "largest_mm": max(sizes),
                             "necrotic": max(sizes) >= METASTASIS_NECROTIC_MM, "group": "metastases"}
    return [{"class": "tumor", "kind": "tumor", "variant": "metastasis", "age": "unknown",
             "region": "cerebellum" if _infratentorial(c) else nearest_lobe(c), **group, "size_mm": s,
             "edema_factor": e, "necrosis": s >= METASTASIS_NECROTIC_MM,
             "center_mm": [round(float(v), 1) for v in c]} for c, s, e in zip(centres, sizes, edema)]


def metastases(truth: dict, p: float) -> None:
    """With probability ``p``, replace a planned tumour study's findings of class tumour (in place) by metastases
    (:func:`metastasis_findings`), drawn from the patient's own stream ``truth["anatomy_seed"] + [METASTASIS_STREAM]``:
    follow-ups keep them, every other draw of the plan is unchanged, and ``p`` = 0 draws nothing."""
    F = truth["findings"]
    if p <= 0 or not any(f["kind"] == "tumor" for f in F):
        return
    rng = np.random.default_rng(list(truth["anatomy_seed"]) + [METASTASIS_STREAM])
    if float(rng.random()) < p:
        truth["findings"] = [f for f in F if f["kind"] != "tumor"] + metastasis_findings(rng)
