"""Lesion-free twins: the same scan drawn again without its findings, reported as normal.

A twin copies a training study's whole truth (patient, anatomy seed, age and atrophy, scanner
domain, incidental findings) and drops its findings, so the two images differ only where the
lesions were, plus fresh noise. Between a study and its twin only the lesions can explain the
different reports; nothing else the two share (age, atrophy, scanner) can. That is the
counterfactual signal a contrastive model needs to tie a faint finding such as white-matter
disease to the lesions instead of to what comes with them.

Twins are planned after the rest of the cohort from their own random stream, so every
other study, file and report is exactly what the cohort without twins holds; they go to the
training split only (val/test stay comparable), share their source's patient id (one
person, one split) and record ``twin_of`` in ``ground_truth.json``.
"""
from __future__ import annotations

import copy
from typing import Sequence

import numpy as np

from medalign.data.schema import CLASSES, PARAPHRASES_COLUMN
from medalign.errors import MedAlignError

TWIN_STREAM = 11  # plan_cohort's other streams: 0 plan, 1 images, 2 anatomy, 3 reports


def twin_source(truth: dict, classes: Sequence[str] | None = None) -> bool:
    """Whether a planned study can have a lesion-free twin: a correctly labelled abnormal training
    study (of ``classes``, default any) whose findings can be removed (atrophy is the whole brain:
    removing it makes another patient, not the same one without a lesion)."""
    return (truth["split"] == "train" and truth["label"] != "normal" and not truth.get("label_noise")
            and (classes is None or truth["label"] in classes)
            and not any(f.get("variant") == "atrophy" for f in truth["findings"]))


def lesion_free_twins(plans: list[dict], fraction: float, *, seed: int, paraphrases: int = 0,
                      classes: Sequence[str] | None = None) -> list[dict]:
    """Twins of a ``fraction`` of the eligible studies of ``plans`` (``plan_cohort``'s output;
    sources of ``classes`` only when given), numbered after them (``S{len(plans) + k + 1}``)."""
    from medalign.data.synth.paraphrases import PARAPHRASE_STREAM, generate_paraphrases
    from medalign.data.synth.report_grammar import generate_report

    if not 0.0 <= fraction <= 1.0:
        raise MedAlignError(f"--twins must be in [0, 1], got {fraction}")
    allowed = [c for c in CLASSES if c != "normal"]
    unknown = sorted(set(classes or ()) - set(allowed))
    if unknown or (classes is not None and not classes):
        raise MedAlignError(f"--twin-classes: {', '.join(unknown) or 'none given'}; allowed: {', '.join(allowed)}")
    rng = np.random.default_rng([int(seed), TWIN_STREAM])
    draws = rng.random(len(plans))  # one draw per study whatever it is: the choice is stable under edits
    out: list[dict] = []
    for truth, u in zip(plans, draws):
        if not (twin_source(truth, classes) and u < fraction):
            continue
        i = len(plans) + len(out)
        t = copy.deepcopy(truth)
        t.pop(PARAPHRASES_COLUMN, None)
        t.update(label="normal", manifest_label="normal", findings=[], twin_of=truth["study_id"],
                 study_id=f"S{i + 1:05d}", seed=[int(seed), 1, i])
        t["report"] = generate_report(t, np.random.default_rng([int(seed), 3, i]), heldout=False)
        if paraphrases:
            t[PARAPHRASES_COLUMN] = generate_paraphrases(t, [int(seed), PARAPHRASE_STREAM, i], int(paraphrases),
                                                         exclude=[t["report"]])
        out.append(t)
    return out
