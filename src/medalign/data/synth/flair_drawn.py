"""Finding options of the synthetic brain cohort that draw one lesion component's FLAIR signal (issue 20).

Each is a ``synth brain`` option and a ``randomise.DomainOptions`` probability, off by default: a share P of the
patients (:func:`patient_share`: the patient's own stream, so follow-ups keep the draw) get the value on their
findings, and ``randomise.study_contrast`` gives the component named in :data:`FLAIR_DRAWN` that FLAIR signal,
relative to the study's white matter like every lesion. ``glioma_cores`` also draws the necrotic core larger;
``infarct_onset`` draws an acute infarct's FLAIR across the time from onset. ``lesion_flair_spread`` is a study's draw
instead: one factor per lesion component on its FLAIR conspicuity exponent (``flair_k`` in the study's domain).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from medalign.data.synth.sequences import LESION_CONTRAST

# patients' own streams, truth["anatomy_seed"] + [k] (lesions' other options: 13, 14, 17)
GLIOMA_CORE_STREAM, INFARCT_MISMATCH_STREAM, GLIOMA_SOLID_STREAM, INFARCT_ONSET_STREAM = 15, 16, 18, 19
FLAIR_SPREAD_STREAM = 20  # a study's own: truth["seed"] + [20]
# ``synth brain --glioma-cores P`` (:func:`glioma_cores`): real high-grade gliomas on FLAIR are not one bright mass; their
# necrotic core is large and from CSF-dark to nearly oedema-bright (BraTS FLAIRs spread 1.0-2.9 head SDs inside the
# tumour, the drawn gliomas 0.6-1.4). Off: at P = 0.6 models lost accuracy, on 360 studies real gliomas (README, stops 58, 62).
GLIOMA_CORE_RADIUS, GLIOMA_CORE_FLAIR, GLIOMA_CORES_P = (0.65, 0.95), (0.10, 0.70), 0.0
# ``synth brain --glioma-bright P`` (:func:`glioma_bright`): in BraTS pat0001 and pat0004 the tumour core is brighter on
# FLAIR than the oedema (by 0.5 and 1.5 head SDs); no drawn glioma's is (oedema 0.98 > solid 0.90), and models trained on
# 360 studies placed pat0001 among acute infarcts (README, stop 62). The solid part's FLAIR when drawn; off by default.
GLIOMA_SOLID_FLAIR, GLIOMA_BRIGHT_P = (1.00, 1.30), 0.0
# ``synth brain --infarct-mismatch P`` (:func:`infarct_mismatch`): within ~4.5 h of onset most acute infarcts are
# DWI-bright and FLAIR-negative (PRE-FLAIR, Thomalla et al., Lancet Neurol 2011); their FLAIR signal is drawn from
# INFARCT_MISMATCH_FLAIR (WM 0.48: iso to faint). Off by default: held out 0.671 vs 0.684 at P = 0.5 (README, stop 59).
INFARCT_MISMATCH_FLAIR = (0.48, 0.60)
INFARCT_MISMATCH_P = 0.0
# ``synth brain --infarct-onset P`` (:func:`infarct_onset`): an acute infarct's FLAIR signal rises with the time from onset,
# relative signal ~1.0-1.2 x the white matter's in the first hours, ~1.5-2 after a day or more (Petkova et al., Radiology
# 2010); drawn at 0.95 (~2 x WM 0.48) every acute infarct is days old and as FLAIR-bright as a glioma's oedema (0.98),
# brighter on average than the drawn gliomas (stop 63). The draw spans onset to days: up to the mismatch range's top it
# is a hyperacute mismatch, reported as such. Off by default.
INFARCT_ONSET_FLAIR, INFARCT_ONSET_P = (0.48, 0.95), 0.0
# ``synth brain --lesion-flair-spread P`` (:func:`lesion_flair_spread`): models read a FLAIR lesion's class from how far it
# stands out (README, stops 39, 40, 63), which real lesions do not follow; as SynthSeg draws each label's intensity, a
# share P of the studies get a factor per lesion component on its FLAIR conspicuity exponent (a bright component stays
# bright, a dark one dark; how far each stands out, and their order, are drawn). Off by default.
LESION_FLAIR_SPREAD, LESION_FLAIR_SPREAD_P = (0.5, 1.5), 0.0
# a finding's drawn FLAIR signal -> the lesion component it replaces (``randomise.study_contrast``)
FLAIR_DRAWN = {"core_flair": "tumor_necrosis", "solid_flair": "tumor_solid", "mismatch_flair": "infarct_acute",
               "onset_flair": "infarct_acute"}


def patient_share(truth: dict, stream: int, p: float, found: list[dict],
                  ranges: Sequence[tuple[float, float]]) -> list[float] | None:
    """The draw of a finding option that a share ``p`` of the patients get: from the patient's own stream
    ``truth["anatomy_seed"] + [stream]``, a uniform u and one value per range; the values if u < ``p``, else None.
    Nothing is drawn with ``p`` = 0 or no ``found`` findings, so every other draw of the plan is unchanged."""
    if p <= 0 or not found:
        return None
    rng = np.random.default_rng(list(truth["anatomy_seed"]) + [stream])
    u, values = float(rng.random()), [float(rng.uniform(*r)) for r in ranges]
    return values if u < p else None


def glioma_cores(truth: dict, p: float) -> None:
    """With probability ``p``, give a planned study's necrotic gliomas (in place) a large core, ``core_radius`` x the
    solid radius, whose FLAIR signal is ``core_flair`` (:data:`GLIOMA_CORE_RADIUS`, :data:`GLIOMA_CORE_FLAIR`); a
    patient's own draw (:func:`patient_share`, ``GLIOMA_CORE_STREAM``: follow-ups keep the core). Only gliomas
    reported with necrosis get one, so the report already says what is drawn."""
    found = [f for f in truth["findings"] if f.get("variant") == "glioma" and f.get("necrosis")]
    drawn = patient_share(truth, GLIOMA_CORE_STREAM, p, found, [GLIOMA_CORE_RADIUS, GLIOMA_CORE_FLAIR])
    for f in found if drawn else ():
        f["core_radius"], f["core_flair"] = round(drawn[0], 3), round(drawn[1], 3)


def glioma_bright(truth: dict, p: float) -> None:
    """With probability ``p``, give a planned study's gliomas (in place) a solid part brighter than their oedema on FLAIR,
    ``solid_flair`` (:data:`GLIOMA_SOLID_FLAIR`); a patient's own draw (``GLIOMA_SOLID_STREAM``). Reports unchanged."""
    found = [f for f in truth["findings"] if f.get("variant") == "glioma"]
    drawn = patient_share(truth, GLIOMA_SOLID_STREAM, p, found, [GLIOMA_SOLID_FLAIR])
    for f in found if drawn else ():
        f["solid_flair"] = round(drawn[0], 3)


def _acute_infarcts(truth: dict) -> list[dict]:
    """The planned study's acute territorial and lacunar infarcts: those a mismatch or an onset can be drawn for."""
    return [f for f in truth["findings"] if f.get("class") == "infarct" and f.get("age") == "acute"
            and f.get("variant") in ("territorial", "lacunar")]


def infarct_mismatch(truth: dict, p: float) -> None:
    """With probability ``p``, make a planned study's acute territorial and lacunar infarcts hyperacute (in place): their
    FLAIR signal is ``mismatch_flair`` (:data:`INFARCT_MISMATCH_FLAIR`); a patient's own draw (:func:`patient_share`,
    ``INFARCT_MISMATCH_STREAM``). The report grammar then says there is no FLAIR change yet."""
    found = _acute_infarcts(truth)
    drawn = patient_share(truth, INFARCT_MISMATCH_STREAM, p, found, [INFARCT_MISMATCH_FLAIR])
    for f in found if drawn else ():
        f["mismatch_flair"] = round(drawn[0], 3)


def infarct_onset(truth: dict, p: float) -> None:
    """With probability ``p``, draw the time from onset of a planned study's acute territorial and lacunar infarcts (in
    place) as their FLAIR signal, from :data:`INFARCT_ONSET_FLAIR`; a patient's own draw (``INFARCT_ONSET_STREAM``).
    Up to the top of :data:`INFARCT_MISMATCH_FLAIR` the infarct is hyperacute (``mismatch_flair``: the report says there is
    no FLAIR change yet), above it ``onset_flair`` (the report is unchanged). Infarcts already hyperacute keep their draw."""
    found = [f for f in _acute_infarcts(truth) if "mismatch_flair" not in f]
    drawn = patient_share(truth, INFARCT_ONSET_STREAM, p, found, [INFARCT_ONSET_FLAIR])
    key = "mismatch_flair" if drawn and drawn[0] <= INFARCT_MISMATCH_FLAIR[1] else "onset_flair"
    for f in found if drawn else ():
        f[key] = round(drawn[0], 3)


def lesion_flair_spread(truth: dict, p: float) -> None:
    """With probability ``p``, give a planned study (in place) one factor per lesion component on its FLAIR conspicuity
    exponent, ``truth["domain"]["flair_k"]`` (:data:`LESION_FLAIR_SPREAD`); the study's own stream
    (``FLAIR_SPREAD_STREAM``), drawn whatever its findings, so a follow-up draws its own. Nothing is drawn at ``p`` = 0."""
    if p <= 0:
        return
    rng = np.random.default_rng(list(truth["seed"]) + [FLAIR_SPREAD_STREAM])
    u, k = float(rng.random()), rng.uniform(*LESION_FLAIR_SPREAD, size=len(LESION_CONTRAST))
    if u < p:
        truth["domain"]["flair_k"] = {name: round(float(v), 4) for name, v in zip(LESION_CONTRAST, k)}
