"""Radiology-style reports from a small grammar, driven by a study's ground truth.

A report = optional header noise, optional technique line, the class-defining finding
(several phrasings per concept, with location words, size and sequence descriptors),
supporting findings, negations of the other classes, optional incidental finding and
hedging, an optional IMPRESSION line, and optional trailing noise ("Page 1 of 1").
Each report is written in British or American spelling and may use abbreviations. A patient's metastases
(``synth brain --metastases``) are one sentence for the group, in every family.

Phrasing families (``FAMILIES``; the family of each report is drawn from its ``rng``):

- ``standard``: full sentences with descriptors, as above.
- ``radiologist``: how departments write when they are busy (issue 16): terse one-liners,
  numbered lists, "Findings:" / "Impression:" templates with the impression first or last,
  abbreviations (ICH, SAH, c/w, NAD), eponymous and colloquial terms ("chronic
  microangiopathic changes", "ventricles enlarged out of proportion to sulcal widening",
  "infiltrative T2/FLAIR hyperintense lesion", "age related volume loss").
- ``heldout`` (``heldout=True``): different nouns and sentence frames ("space-occupying
  lesion", "intracerebral bleed", "cytotoxic oedema ... recent stroke", "unremarkable study",
  "leukoaraiosis") that no training family uses, to measure generalisation beyond templates.

``paraphrases.generate_paraphrases`` draws other reports of the same truth from the training families
only (never ``heldout``), on their own random streams: extra text views for training (issue 16).

Every family may add a comparison with the prior study (follow-up visits say so), incidental
findings, and supporting sentences in varying order. Text follows the study's truth: the
findings named are the truth's findings (one class per study, as the images are drawn).

Templates are written in British spelling; ``_americanise`` converts.
"""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from medalign.data.synth.report_words import (HEADERS, INCIDENTAL, NEG_OTHERS, PRIORS_FOLLOW, PRIORS_NEW, TECHNIQUE,
                                              TRAILERS, US)


def _americanise(text: str) -> str:
    for gb, us in US:
        text = re.sub(gb, us, text)
        text = re.sub(gb.capitalize(), us.capitalize(), text)
    return text


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return str(options[int(rng.integers(len(options)))])


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:] if s else s


def _size(rng: np.random.Generator, mm: float | None) -> str:
    if not mm:
        return ""
    a = mm * float(rng.uniform(0.75, 0.95))
    return _pick(rng, [f", measuring {mm / 10:.1f} x {a / 10:.1f} cm", f" ({mm:.0f} mm)",
                       f", approximately {mm / 10:.0f} cm in diameter" if mm >= 15 else f" ({mm:.0f} mm)",
                       f" measuring up to {mm:.0f} mm", ""])


def _side(rng: np.random.Generator, side: str, abbrev: bool) -> str:
    abbreviate = side in ("left", "right") and abbrev and rng.random() < 0.5  # rng drawn only when it can abbreviate
    return {"left": "L", "right": "R"}[side] if abbreviate else side


_LOBE_DESC = {"frontal": "frontal lobe", "temporal": "temporal lobe", "parietal": "parietal lobe",
              "occipital": "occipital lobe"}
_TERR = {"MCA": ["MCA", "middle cerebral artery"], "ACA": ["ACA", "anterior cerebral artery"],
         "PCA": ["PCA", "posterior cerebral artery"]}
_WATERSHED = {"ACA-MCA": ["ACA-MCA watershed zone", "anterior (ACA-MCA) border zone"],
              "MCA-PCA": ["MCA-PCA watershed zone", "posterior (MCA-PCA) border zone"],
              "internal": ["internal border zone of the corona radiata", "deep watershed zone (centrum semiovale)"]}

STRONG_HEDGES = ["in keeping with", "consistent with", "compatible with", "most likely representing",
                 "suggestive of", "typical of"]
WEAK_HEDGES = ["possibly representing", "? ", "cannot exclude", "differential includes"]
_MISMATCH = ["No corresponding FLAIR signal change (DWI-FLAIR mismatch).", "No FLAIR hyperintensity yet in the area of restriction."]


def _infarct(f: dict, rng, ab: bool, heldout: bool) -> tuple[list[str], str]:
    side = _side(rng, f["side"], ab)
    sz = _size(rng, f["size_mm"])
    if f["variant"] == "territorial":
        terr = _pick(rng, _TERR[f["region"]] if not ab else [f["region"]])
        where = f"{side} {terr} territory"
    elif f["variant"] == "watershed":
        where = f"{side} {_pick(rng, _WATERSHED[f['region']])}"
    else:
        where = f"{side} {f['region']}"
    if f["variant"] == "watershed" and not heldout:
        return _watershed(f, where, sz, rng)
    if heldout:
        if f["age"] == "acute":
            main = [f"Cytotoxic oedema in the {where} distribution, compatible with a recent stroke.",
                    f"Recent ischaemic stroke involving the {where}{sz}.",
                    f"Bright on b1000 with corresponding low ADC values in the {where}: acute ischaemic insult."]
            imp = "recent stroke"
        else:
            main = [f"Old stroke in the {where} with encephalomalacia{sz}.",
                    f"Remote ischaemic insult of the {where}, with tissue loss and gliotic change."]
            imp = "old stroke"
        return _mismatch(f, [_pick(rng, main)], imp, rng)
    if f["age"] == "acute":
        if f["variant"] == "lacunar":
            main = [f"Acute lacunar infarct in the {where}{sz}.",
                    f"Small focus of restricted diffusion in the {where}, {_pick(rng, STRONG_HEDGES)} an acute lacunar infarct.",
                    f"There is an acute lacune in the {where} showing diffusion restriction."]
            imp = "acute lacunar infarct"
        else:
            main = [f"Acute infarct in the {where} with restricted diffusion (high DWI signal, low ADC){sz}.",
                    f"There is an area of restricted diffusion in the {where}{sz}, {_pick(rng, STRONG_HEDGES)} an acute infarct.",
                    f"{_cap(where)} acute ischaemic infarct{sz}, with diffusion restriction and early FLAIR change.",
                    f"DWI hyperintensity with low ADC in the {where}: acute infarction."]
            imp = "acute infarct"
    else:
        main = [f"Chronic infarct in the {where}{sz} with encephalomalacia and surrounding gliosis.",
                f"Established old infarct in the {where}: CSF-signal cavity with FLAIR-bright gliotic rim, no restricted diffusion.",
                f"Mature infarct involving the {where}{sz}."]
        imp = "chronic infarct"
    return _mismatch(f, [_pick(rng, [m for m in main if "FLAIR" not in m or "mismatch_flair" not in f])], imp, rng)


def _mismatch(f: dict, parts: list[str], imp: str, rng) -> tuple[list[str], str]:
    """A hyperacute infarct (``flair_drawn.infarct_mismatch``): no FLAIR change yet, said in the body and the impression."""
    return (parts, imp) if "mismatch_flair" not in f else (parts + [_pick(rng, _MISMATCH)], "hyperacute " + imp.split(" ", 1)[1])


def _watershed(f: dict, where: str, sz: str, rng) -> tuple[list[str], str]:
    """A border-zone infarct's sentence and impression: a cortical wedge, or the internal zone's chain of foci."""
    chain = f["region"] == "internal"
    if f["age"] == "acute":
        main = ([f"A chain of small foci of restricted diffusion in the {where}, {_pick(rng, STRONG_HEDGES)} acute watershed infarcts.",
                 f"Several acute infarcts lined up in the {where} (high DWI, low ADC), a border-zone pattern."] if chain else
                [f"Acute infarct in the {where} with restricted diffusion{sz}, a watershed pattern.",
                 f"Wedge of restricted diffusion in the {where}{sz}, {_pick(rng, STRONG_HEDGES)} an acute border-zone infarct."])
        return [_pick(rng, main)], "acute watershed infarcts" if chain else "acute watershed infarct"
    main = ([f"A row of small old infarcts with gliosis in the {where}, a watershed pattern."] if chain else
            [f"Chronic infarct in the {where}{sz} with encephalomalacia and gliosis.",
             f"Established old border-zone infarct in the {where}: FLAIR-bright gliosis, no restricted diffusion."])
    return [_pick(rng, main)], "chronic watershed infarcts" if chain else "chronic watershed infarct"


def _tumor(f: dict, rng, ab: bool, heldout: bool) -> tuple[list[str], str]:
    if f["variant"] == "metastasis":
        return _metastases(f, rng, heldout)
    side = _side(rng, f["side"], ab)
    sz = _size(rng, f["size_mm"])
    lobe = _LOBE_DESC[f["region"]]
    if f["variant"] == "meningioma":
        if heldout:
            main = [f"Dural-based extra-axial neoplasm over the {side} {f['region']} convexity{sz}, with a broad dural attachment.",
                    f"Extra-axial space-occupying lesion abutting the {side} {f['region']} dura{sz}."]
            return [_pick(rng, main)], "extra-axial neoplasm"
        h = _pick(rng, STRONG_HEDGES + ["likely"]) if rng.random() < 0.8 else _pick(rng, ["possibly", "? "])
        main = [f"Extra-axial dural-based mass over the {side} {f['region']} convexity{sz}, {h} meningioma.",
                f"Well-defined extra-axial mass{sz} at the {side} {f['region']} convexity, {h} a meningioma, with mild mass effect.",
                f"{_cap(side)} {f['region']} convexity meningioma{sz}."]
        return [_pick(rng, main)], "meningioma"
    if heldout:
        main = [f"Space-occupying lesion in the {side} {lobe}{sz}, suspicious for a primary glial neoplasm, with surrounding vasogenic oedema.",
                f"Infiltrative neoplasm centred on the {side} {lobe} with central necrosis and perilesional oedema{sz}.",
                f"Necrotic intra-axial neoplasm of the {side} {lobe} causing midline shift."]
        return [_pick(rng, main)], "intra-axial neoplasm"
    nec = "a necrotic centre" if f.get("necrosis") else "heterogeneous signal"
    strong = rng.random() < 0.8
    h = _pick(rng, STRONG_HEDGES) if strong else _pick(rng, ["possibly representing", "? "])
    main = [f"Heterogeneous intra-axial mass in the {side} {lobe} with {nec} and surrounding vasogenic oedema{sz}, {h} a high-grade glioma.",
            f"Large {side} {lobe} tumour{sz} with {nec}, FLAIR hyperintense oedema and mass effect.",
            f"There is a {side} {f['region']} mass lesion{sz} with extensive surrounding oedema, {h} a glioma.",
            f"{_cap(side)} {lobe} glioma with {nec} and effacement of the adjacent sulci."]
    extra = []
    if rng.random() < 0.4:
        extra.append(_pick(rng, [f"Midline shift of {rng.integers(2, 9)} mm.", "Effacement of the ipsilateral lateral ventricle.",
                                 "Foci of susceptibility within the lesion may represent intratumoural haemorrhage."]))
    return [_pick(rng, main)] + extra, "glioma" if rng.random() < 0.5 else "tumour"


def _metastases(f: dict, rng, heldout: bool) -> tuple[list[str], str]:
    """A patient's metastases (``synth.metastases``; any one finding of the group): their number, where they lie, the
    largest and whether it is necrotic, as drawn."""
    n, where, mm = f["count"], f["where"], f["largest_mm"]
    if heldout:
        main = [f"{n} rounded parenchymal deposits in {where}, the largest {mm:.0f} mm, each with perilesional oedema, "
                "in keeping with secondary deposits.",
                f"Several intra-axial lesions at the grey-white interface of {where} ({n}; up to {mm:.0f} mm), "
                "appearances those of metastatic deposits."]
        return [_pick(rng, main)], "intracranial secondaries"
    centre, h = " with necrotic centres" if f["necrotic"] else "", _pick(rng, STRONG_HEDGES)
    main = [f"{n} round lesions at the grey-white matter junction of {where}{centre}, the largest {mm:.0f} mm, with "
            f"vasogenic oedema out of proportion to their size, {h} metastases.",
            f"Multiple ({n}) intra-axial masses in {where}{centre} and surrounding oedema, measuring up to {mm:.0f} mm, "
            f"{h} metastatic disease."]
    return [_pick(rng, main)], _pick(rng, ["multiple metastases", "cerebral metastases"])


def _hemorrhage(f: dict, rng, ab: bool, heldout: bool) -> tuple[list[str], str]:
    side = _side(rng, f["side"], ab)
    sz = _size(rng, f["size_mm"])
    region = _LOBE_DESC.get(f["region"], f["region"])
    if f["variant"] == "microbleeds":
        dist = f["region"]
        if heldout:
            return [f"{f['count']} punctate foci of susceptibility signal loss in a {dist} pattern, representing old blood products (cerebral amyloid angiopathy vs hypertensive)."], "chronic blood products"
        main = [f"Multiple ({f['count']}) cerebral microbleeds on T2* in a {dist} distribution.",
                f"Numerous microhaemorrhages blooming on T2*, {dist} predominant, {_pick(rng, STRONG_HEDGES)} {'amyloid angiopathy' if dist == 'lobar' else 'hypertensive microangiopathy'}."]
        return [_pick(rng, main)], "multiple microbleeds"
    if heldout:
        if f["age"] == "acute":
            main = [f"Intracerebral bleed (ICH) centred on the {side} {region}{sz}, with a rim of perilesional oedema.",
                    f"Fresh blood products in the {side} {region}{sz}, consistent with recent bleeding."]
            return [_pick(rng, main)], "intracerebral bleed"
        return [f"Old blood products with a haemosiderin rim in the {side} {region}, sequela of a previous bleed."], "old bleed"
    if f["age"] == "acute":
        main = [f"Acute intraparenchymal haemorrhage in the {side} {region}{sz}, with surrounding oedema.",
                f"{_cap(side)} {region} haematoma{sz} showing blooming on T2* and a rim of vasogenic oedema.",
                f"There is an acute haematoma in the {side} {region}{sz}, {_pick(rng, STRONG_HEDGES)} hypertensive haemorrhage.",
                f"Intracerebral haemorrhage in the {side} {region}{sz}, dark on T2* (blooming)."]
        imp = "acute haemorrhage"
    else:
        main = [f"Chronic haemorrhage in the {side} {region} with haemosiderin staining (T2* blooming).",
                f"Old haematoma cavity in the {side} {region}{sz} lined by haemosiderin."]
        imp = "chronic haemorrhage"
    return [_pick(rng, main)], imp


def _others(f: dict, rng, ab: bool, heldout: bool, atrophy: float) -> tuple[list[str], str]:
    v = f["variant"]
    if "fazekas" in f or "locations" in f:  # drawn by shape (synth.wm_disease): name the grade / locations
        from medalign.data.synth.wm_disease import wmd_sentence

        return wmd_sentence(f, rng, "heldout" if heldout else "standard")
    if v == "atrophy":
        if heldout:
            main = ["Involutional change out of keeping with the patient's age, with widened sulci and enlarged ventricles.",
                    "Disproportionate global volume loss for age."]
            return [_pick(rng, main)], "volume loss beyond age"
        if f["region"] == "ventriculomegaly":
            main = ["Ventriculomegaly out of proportion to sulcal enlargement; consider normal pressure hydrocephalus.",
                    "Marked dilatation of the lateral and third ventricles (ventriculomegaly)."]
            return [_pick(rng, main)], "ventriculomegaly"
        main = ["Marked generalised cerebral atrophy with ex vacuo ventricular dilatation.",
                "Moderate to severe global atrophy, more than expected for age.",
                "Advanced generalised volume loss with prominent sulci and ventricles."]
        return [_pick(rng, main)], "marked atrophy"
    if v == "wmh":
        if heldout:
            return [_pick(rng, ["Extensive leukoaraiosis.", "Severe leukoaraiosis of the cerebral hemispheres, chronic microvascular in nature."])], "leukoaraiosis"
        main = ["Confluent periventricular white matter hyperintensities on FLAIR, in keeping with severe small vessel disease (Fazekas 3).",
                "Extensive confluent T2/FLAIR white matter hyperintensity, likely chronic small vessel ischaemic disease.",
                "Confluent deep and periventricular white matter disease (Fazekas grade 3)."]
        return [_pick(rng, main)], "severe small vessel disease"
    if v == "demyelination":
        if heldout:
            return [f"Several ({f['count']}) ovoid lesions radiating from the ventricular margins (Dawson fingers), characteristic of MS."], "MS"
        main = [f"Multiple ({f['count']}) ovoid periventricular FLAIR hyperintense plaques oriented perpendicular to the ventricles, in keeping with demyelination.",
                f"{f['count']} periventricular and juxtacortical demyelinating plaques; no restricted diffusion to suggest active disease."]
        return [_pick(rng, main)], "demyelinating disease"
    side = f["side"] if f["side"] != "bilateral" else "bilateral"
    if heldout:
        return [f"Opacified {side} {f['region']} sinus with fluid and thickened mucosa (sinus disease)."], "sinus disease"
    main = [f"Extensive mucosal thickening of the {side} {f['region']} sinus.",
            f"Marked {side} {f['region']} sinus mucosal thickening, in keeping with sinusitis."]
    return [_pick(rng, main)], "sinus mucosal thickening"


def _background(f: dict, rng, heldout: bool) -> tuple[list[str], str]:
    """Sentences and impression words for background small vessel disease (a ``comorbid``
    finding): the finding's own sentence, and "background ..." in the impression."""
    from medalign.data.synth.wm_disease import wmd_sentence

    s, imp = wmd_sentence(f, rng, "heldout" if heldout else "standard")
    return s, f"background {imp}"


def _normal(t: dict, rng, heldout: bool) -> tuple[list[str], str]:
    s: list[str] = []
    if heldout:
        s.append(_pick(rng, ["Unremarkable MRI of the brain.", "Study within normal limits.",
                             "The brain appears entirely unremarkable for age."]))
        imp = "unremarkable study"
    else:
        s.append(_pick(rng, ["No acute intracranial abnormality.", "Normal MRI brain.",
                             "The brain parenchyma is of normal signal.", "Normal appearances of the brain.",
                             "Ventricles and sulci are normal in size for age."]))
        imp = _pick(rng, ["normal study", "no acute intracranial abnormality", "normal MRI brain"])
    mild = t.get("mild_changes")
    if mild == "involutional":
        s.append(_pick(rng, ["Mild age-related involutional changes.", "Mild age-appropriate volume loss."]))
    elif mild == "punctate_wmh":
        s.append(_pick(rng, ["A few scattered punctate white matter hyperintensities, within normal limits for age.",
                             "Minimal punctate white matter change, normal for age."]))
    return s, imp


FAMILIES: tuple[str, ...] = ("standard", "radiologist", "heldout")
RADIOLOGIST_SHARE = 0.3  # share of training reports written in the radiologist family


def _rad_finding(f: dict, rng, ab: bool) -> str:
    """One terse radiologist line for a finding (the class is always named)."""
    label, v = f["class"], f["variant"]
    side = _side(rng, f.get("side", ""), ab)
    if label == "infarct":
        where = (f"{side} {f['region']} watershed" if v == "watershed"
                 else f"{side} {_pick(rng, _TERR[f['region']]) if v == 'territorial' else f['region']}")
        if "mismatch_flair" in f:  # flair_drawn.infarct_mismatch: a hyperacute infarct, not yet seen on FLAIR
            return _pick(rng, [f"Hyperacute {where} infarct, DWI-FLAIR mismatch.", f"DWI+/FLAIR- {where} infarct (mismatch)."])
        if f["age"] == "acute":
            if v == "lacunar":
                return _pick(rng, [f"Acute lacune, {where}.", f"Punctate acute infarct {where}.",
                                   f"Small acute lacunar infarct, {where}."])
            return _pick(rng, [f"Acute {where} infarct.", f"Restricted diffusion {where} c/w acute infarct.",
                               f"Acute ischaemic stroke, {where}.", f"Acute infarct: {where}."])
        return _pick(rng, [f"Old {where} infarct.", f"Established {where} infarct with gliosis.",
                           f"Chronic infarct, {where}.", f"Remote {where} infarct."])
    if label == "tumor":
        if v == "metastasis":  # one line for the group (synth.metastases)
            return _pick(rng, [f"{f['count']} cerebral mets ({f['where']}), largest {f['largest_mm']:.0f} mm.",
                               f"Multiple metastases, {f['where']}.",
                               f"{f['count']} {'necrotic' if f['necrotic'] else 'solid'} lesions, {f['where']} - metastases."])
        lobe = _LOBE_DESC[f["region"]]
        if v == "meningioma":
            return _pick(rng, [f"{_cap(side)} {f['region']} convexity meningioma.",
                               f"Dural-based enhancing lesion, {side} {f['region']} convexity - meningioma.",
                               f"Meningioma {side} {f['region']} convexity, mild mass effect."])
        return _pick(rng, [f"Infiltrative T2/FLAIR hyperintense lesion, {side} {lobe}, likely glioma.",
                           f"{_cap(side)} {lobe} intra-axial tumour with oedema.",
                           f"Expansile {side} {lobe} mass - high-grade glioma.", f"{_cap(side)} {f['region']} GBM."])
    if label == "hemorrhage":
        region = _LOBE_DESC.get(f["region"], f["region"])
        if v == "microbleeds":
            return _pick(rng, [f"{f['count']} microbleeds, {f['region']} pattern.", "Multiple microbleeds on T2*.",
                               f"Microbleeds ({f['region']} distribution)."])
        if f["age"] == "acute":
            return _pick(rng, [f"Acute {side} {region} bleed.", f"{_cap(side)} {region} ICH.",
                               f"Parenchymal haematoma, {side} {region}."])
        return _pick(rng, [f"Old {side} {region} haemorrhage with haemosiderin.", f"Chronic {side} {region} haematoma."])
    if "fazekas" in f or "locations" in f:
        from medalign.data.synth.wm_disease import wmd_sentence

        return wmd_sentence(f, rng, "radiologist")[0][0]
    if v == "atrophy":
        if f["region"] == "ventriculomegaly":
            return _pick(rng, ["Ventricles enlarged out of proportion to sulcal widening - ? NPH.",
                               "Ventriculomegaly, out of proportion to the sulci."])
        return _pick(rng, ["Age related volume loss, marked for age.", "Global volume loss, advanced for age.",
                           "Moderate to severe generalised atrophy."])
    if v == "wmh":
        return _pick(rng, ["Chronic microangiopathic changes, Fazekas 3.", "Severe small vessel disease.",
                           "Extensive white matter disease (small vessel)."])
    if v == "demyelination":
        return _pick(rng, [f"{f['count']} periventricular and juxtacortical lesions c/w demyelination.",
                           "Multiple periventricular plaques, c/w MS."])
    sd = f["side"] if f["side"] != "bilateral" else "bilateral"
    return _pick(rng, [f"{_cap(sd)} {f['region']} sinusitis.", f"Mucosal thickening, {sd} {f['region']} sinus."])


def _radiologist(truth: dict, rng, ab: bool) -> list[str]:
    """Main lines of a radiologist-family report (findings or a normal statement)."""
    if truth["label"] == "normal":
        lines = [_pick(rng, ["Normal MRI head.", "NAD.", "No acute intracranial abnormality.", "Negative MRI brain.",
                             "Normal study."])]
        mild = truth.get("mild_changes")
        if mild == "involutional":
            lines.append(_pick(rng, ["Mild involutional change, normal for age.", "Mild age-appropriate volume loss."]))
        elif mild == "punctate_wmh":
            lines.append(_pick(rng, ["A few punctate white matter foci, normal for age.", "Minimal small vessel change."]))
        return lines
    seen, lines = set(), []
    for f in truth.get("findings", []):
        key = f.get("group") or (f["variant"], f["region"], f.get("side"))  # a group (metastases): one line
        if (f["class"] == truth["label"] or f.get("comorbid")) and key not in seen:
            seen.add(key)
            lines.append(_rad_finding(f, rng, ab))
    return lines


def _comparison(truth: dict, rng) -> str | None:
    if truth.get("visit", 0) > 0:
        return _pick(rng, PRIORS_FOLLOW)
    if rng.random() < 0.25:
        return _pick(rng, PRIORS_NEW).format(y=int(rng.integers(2012, 2024)))
    return None


def _radiologist_report(truth: dict, rng, ab: bool) -> str:
    lines = _radiologist(truth, rng, ab)
    negs = NEG_OTHERS[truth["label"]]
    if rng.random() < 0.6:
        lines.append(negs[int(rng.integers(len(negs)))])
    for inc in truth.get("incidental", []):
        lines.append(_pick(rng, INCIDENTAL[inc]))
    comp = _comparison(truth, rng)
    layout = int(rng.integers(3))
    if layout == 0:  # terse run-on
        body = " ".join(lines)
    elif layout == 1:  # numbered list
        body = "\n".join(f"{k + 1}. {ln}" for k, ln in enumerate(lines))
    else:  # template: impression first or last
        imp = "IMPRESSION: " + lines[0]
        body = (imp + "\nFindings: " + " ".join(lines[1:]) if rng.random() < 0.5 and len(lines) > 1
                else "Findings: " + " ".join(lines) + "\n" + imp)
    return (comp + "\n" + body) if comp else body


def generate_report(truth: dict, rng: np.random.Generator, heldout: bool = False) -> str:
    """A free-text report for ``truth`` (from ``lesions.sample_truth``/``brain.plan_cohort``).

    Deterministic given ``rng``'s state. ``heldout`` switches the class-defining phrasing
    to the held-out family.
    """
    label = truth["label"]
    american = rng.random() < 0.5
    ab = rng.random() < 0.35
    if not heldout and rng.random() < RADIOLOGIST_SHARE:
        text = _radiologist_report(truth, rng, ab)
        return _americanise(text) if american else text
    parts: list[str] = []
    if rng.random() < 0.35:
        parts.append(_pick(rng, HEADERS))
    if rng.random() < 0.2:  # a study acquired with part of the protocol (synth.protocols) names its series
        parts.append(f"Technique: axial {'/'.join(truth['series']).upper()} only." if "series" in truth else _pick(rng, TECHNIQUE))
    n_head = len(parts)
    imp_bits: list[str] = []
    findings = truth.get("findings", [])
    if label == "normal":
        s, imp = _normal(truth, rng, heldout)
        parts += s
        imp_bits.append(imp)
    else:
        seen = set()
        for f in findings:
            if f["class"] != label:
                continue
            key = f.get("group") or (f["variant"], f["region"], f.get("side"))
            if key in seen:  # one sentence for a group (e.g. several lacunes, a patient's metastases)
                continue
            seen.add(key)
            if label == "infarct":
                s, imp = _infarct(f, rng, ab, heldout)
            elif label == "tumor":
                s, imp = _tumor(f, rng, ab, heldout)
            elif label == "hemorrhage":
                s, imp = _hemorrhage(f, rng, ab, heldout)
            else:
                s, imp = _others(f, rng, ab, heldout, truth.get("atrophy", 0.0))
            parts += s
            imp_bits.append(imp)
        for f in findings:  # background white-matter disease beside the main finding (randomise.comorbid_svd_finding)
            if f.get("comorbid"):
                s, imp = _background(f, rng, heldout)
                parts += s
                imp_bits.append(imp)
        if label != "others" and truth.get("atrophy", 0) > 0.25 and rng.random() < 0.4:
            parts.append("Background mild age-related volume loss.")
    negs = NEG_OTHERS[label]
    k = 1 if label != "normal" else int(rng.integers(1, 3))
    support: list[str] = []
    if rng.random() < (0.9 if label == "normal" else 0.6):
        for i in rng.choice(len(negs), size=min(k, len(negs)), replace=False):
            support.append(negs[int(i)])
    for inc in truth.get("incidental", []):
        support.append(_pick(rng, INCIDENTAL[inc]))
    parts += [support[int(i)] for i in rng.permutation(len(support))]  # sections in varying order
    comp = _comparison(truth, rng)
    if comp:
        parts.insert(n_head if rng.random() < 0.5 else len(parts), comp)  # after the header, or last
    if rng.random() < 0.5:
        imp = "; ".join(imp_bits)
        side = next((f.get("side") for f in findings if f.get("side") in ("left", "right")), None)
        if side and label != "normal" and rng.random() < 0.5:
            imp = f"{side} {imp}"
        parts.append(_pick(rng, ["IMPRESSION: ", "Conclusion: ", "Impression: ", "Summary: "]) + _cap(imp) + ".")
    if rng.random() < 0.3:
        parts.append(_pick(rng, TRAILERS))
    text = " ".join(parts)
    if rng.random() < 0.15:
        text = text.replace(". ", ".\n", 2)
    text = text.replace("?  ", "? ")
    return _americanise(text) if american else text
