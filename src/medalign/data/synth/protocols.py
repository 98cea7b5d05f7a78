"""Studies acquired with part of the protocol: extra training studies that hold a FLAIR alone.

Many clinical studies reach an archive as one series, most often a FLAIR (every real
white-matter-disease case in ``../shared/data`` is one), while every study of the synthetic
cohort has all its series; the CLIP presets see a FLAIR alone in about one training view in ten.
``synth brain --flair-alone N`` adds N training studies of new patients that are drawn and written
as FLAIR alone (plus the lesion mask on its grid): their other series are never warped or sampled,
which is most of a study's cost: each takes about a third of a full study's CPU since the resampling was
compiled (0.15-0.24x before; ``benchmarks/synth.py --flair-alone``; issue 20).

They are planned like the cohort's own training split (class balance, ``--class-weights``, domain
options, follow-ups, label noise), from the random streams under ``[seed, FLAIR_ALONE_STREAM]``, and
appended after the cohort and its twins with the ids that follow: every other study, file and
report is exactly what the cohort without them holds. ``truth["series"]`` records what was acquired
(``ground_truth.json``), the manifest's other image cells are empty (read as absent series), and the
report's technique line, when it has one, says FLAIR only. The findings are described as drawn,
diffusion and susceptibility included: the report of the full study, as when a study's other series
never reached the archive.

``synth brain --flair-alone-territory P`` draws the extras' territorial infarcts as wedges with their own
probability P (``--infarct-territory`` for the rest): an acute stroke work-up acquires a DWI, and without
one a round infarct on FLAIR has nothing to tell it from a glioma (issue 20, stop 73).
``synth brain --flair-alone-class-weights CLASS=W,...`` plans the extras with their own class shares: a FLAIR-alone
archive study comes from the white-matter, dementia or MS protocol, mostly normal brains and white-matter disease,
while a stroke work-up acquires a DWI and a bleed a T2* (issue 20, stop 75).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable

from medalign.data.schema import CLASSES
from medalign.data.synth.randomise import DomainOptions
from medalign.errors import MedAlignError

FLAIR_ALONE_STREAM = 31  # the extras' streams: [seed, 31] + plan_cohort's (0 plan, 1 images, 2 anatomy, 3 reports)


def check_flair_alone(n: int, domain: DomainOptions, class_weights: dict[str, float] | None) -> None:
    """One-line errors for the FLAIR-alone options: N in range, and the extras' own options only with extras."""
    if not (0 <= int(n) <= 10_000):
        raise MedAlignError(f"--flair-alone must be between 0 and 10000, got {n}")
    if domain.flair_alone_territory is not None and not n:
        raise MedAlignError("--flair-alone-territory applies to the FLAIR-alone studies: add --flair-alone N")
    if class_weights is not None and not n:
        raise MedAlignError("--flair-alone-class-weights applies to the FLAIR-alone studies: add --flair-alone N")


def flair_alone_record(n: int, class_weights: dict[str, float] | None) -> dict:
    """What ``cohort.json`` records of the extras: nothing without them."""
    if not n:
        return {}
    out: dict = {"flair_alone": int(n)}
    if class_weights is not None:  # every class named, as cohort.json's "class_weights"
        out["flair_alone_class_weights"] = {c: float(class_weights.get(c, 1.0)) for c in CLASSES}
    return out


def flair_alone_studies(plans: list[dict], n: int, *, seed: int, plan: Callable[..., list[dict]],
                        domain: DomainOptions, class_weights: dict[str, float] | None = None) -> list[dict]:
    """``n`` training studies acquired as FLAIR alone, numbered after ``plans`` (the cohort so far:
    study ``S{len(plans) + k + 1}``, patients after its last). ``plan`` is ``brain._plan_studies``
    with the cohort's settings bound (``plan(n, key, counts, series=..., domain=...)``); ``domain`` the
    cohort's options, but for ``flair_alone_territory``, when set: the extras' own ``infarct_territory``;
    ``class_weights``, when given, the extras' own class shares (the cohort's ``class_weights`` otherwise)."""
    if domain.flair_alone_territory is not None:
        domain = replace(domain, infarct_territory=domain.flair_alone_territory)
    own = {} if class_weights is None else {"class_weights": class_weights}
    extra = plan(n, [int(seed), FLAIR_ALONE_STREAM], {"train": n, "val": 0, "test": 0}, series=["flair"],
                 domain=domain, **own)
    first_patient = len({p["patient_id"] for p in plans})
    for k, truth in enumerate(extra):
        truth["study_id"] = f"S{len(plans) + k + 1:05d}"
        truth["patient_id"] = f"P{first_patient + int(truth['patient_id'][1:]):05d}"  # P00001 -> the first new one
    return extra
