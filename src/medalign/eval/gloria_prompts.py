"""Zero-shot prompts for brain pathology from severity x subtype x location templates (GLoRIA 3.3).

GLoRIA scores an image against many generated descriptions of each class instead of one class
name, because its local similarity needs words in context. Here, per class:

    "{severity} {subtype} {location}"   e.g. "acute lacunar infarct in the left basal ganglia"

The output has the prompt-bank layout of :mod:`medalign.eval.zeroshot`
({class: {"presence": [...], "absence": []}}), so ``embed_prompts`` / ``scores_from_prompt_bank``
work on it unchanged. ``CLASS_WORDS`` lists the words that name each lesion class in a report;
the localisation code looks up the attention of these words.
"""
from __future__ import annotations

import itertools
import random
from typing import Mapping, Sequence

LOCATIONS: tuple[str, ...] = (
    "in the left frontal lobe", "in the right frontal lobe", "in the left parietal lobe",
    "in the right parietal lobe", "in the left temporal lobe", "in the right temporal lobe",
    "in the occipital lobe", "in the basal ganglia", "in the thalamus", "in the cerebellum",
    "in the brainstem", "in the periventricular white matter",
)

# class -> (severities, subtypes, locations); "" means the slot is left out.
VOCAB: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "infarct": (
        ("acute", "subacute", "small", "large"),
        ("infarct", "ischemic infarct", "lacunar infarct", "territorial infarct",
         "infarct with restricted diffusion"),
        LOCATIONS,
    ),
    "tumor": (
        ("", "large", "small", "enhancing", "infiltrative"),
        ("tumor", "mass", "glioma", "meningioma", "metastasis", "tumor with surrounding edema"),
        LOCATIONS,
    ),
    "hemorrhage": (
        ("acute", "subacute", "chronic", "large", "small"),
        ("hemorrhage", "intraparenchymal hemorrhage", "haemorrhage", "hematoma", "hemorrhage with blooming on T2*"),
        LOCATIONS,
    ),
    "normal": (
        ("",),
        ("no acute intracranial abnormality", "normal brain", "no infarct, hemorrhage or mass",
         "unremarkable brain MRI", "no abnormal signal"),
        ("", "in the brain parenchyma", "on all sequences"),
    ),
    "others": (
        ("mild", "moderate", "severe", "chronic"),
        ("white matter hyperintensities", "small vessel disease", "atrophy", "gliosis",
         "demyelinating lesion"),
        ("", "in the periventricular white matter", "in the deep white matter", "in both hemispheres"),
    ),
}

CLASS_WORDS: dict[str, tuple[str, ...]] = {
    "infarct": ("infarct", "infarction", "infarcts", "ischemic", "ischaemic", "ischemia", "ischaemia"),
    "tumor": ("tumor", "tumour", "mass", "glioma", "meningioma", "neoplasm", "metastasis", "metastases",
              "glioblastoma"),
    "hemorrhage": ("hemorrhage", "haemorrhage", "hematoma", "haematoma", "bleed", "bleeding", "blood"),
}
LESION_CLASSES: tuple[str, ...] = ("infarct", "tumor", "hemorrhage")


def class_prompts(cls: str, *, vocab: Mapping | None = None) -> list[str]:
    """All severity x subtype x location combinations for one class, in a fixed order."""
    vocab = vocab or VOCAB
    if cls not in vocab:
        raise KeyError(f"no prompt vocabulary for class '{cls}'; known: {', '.join(vocab)}")
    sev, sub, loc = vocab[cls]
    out = []
    for s, t, l in itertools.product(sev, sub, loc):
        out.append(" ".join(p for p in (s, t, l) if p))
    return list(dict.fromkeys(out))  # unique, order kept


def generate_prompts(classes: Sequence[str] | None = None, *, n_per_class: int | None = 20, seed: int = 0,
                     vocab: Mapping | None = None) -> dict[str, dict[str, list[str]]]:
    """{class: {"presence": prompts, "absence": []}}; ``n_per_class`` draws a seeded subset
    (GLoRIA samples a handful of prompts per class); None keeps every combination."""
    from medalign.data.schema import CLASSES

    classes = list(classes or CLASSES)
    rng = random.Random(seed)
    out = {}
    for c in classes:
        p = class_prompts(c, vocab=vocab)
        if n_per_class is not None and n_per_class < len(p):
            p = rng.sample(p, n_per_class)
        out[c] = {"presence": p, "absence": []}
    return out


def find_class_word(words: Sequence[str], cls: str) -> int | None:
    """Index of the first word in ``words`` that names lesion class ``cls`` (case-insensitive)."""
    names = set(CLASS_WORDS.get(cls, (cls,)))
    for i, w in enumerate(words):
        if w.lower().strip(".,;:") in names:
            return i
    return None
