"""Fixed phrases of ``report_grammar``: the negations of the other classes, incidental findings, headers, technique
lines, trailers, comparisons with a prior study, and the British -> American spelling pairs. Kept apart from the
grammar, which draws them, so that the grammar holds what depends on a study's findings."""
from __future__ import annotations

US = [("haemorrhagic", "hemorrhagic"), ("haemorrhage", "hemorrhage"), ("haematoma", "hematoma"),
       ("haemosiderin", "hemosiderin"), ("oedema", "edema"), ("ischaemic", "ischemic"),
       ("ischaemia", "ischemia"), ("tumour", "tumor"), ("centre", "center"), ("grey", "gray"),
       ("generalised", "generalized"), ("dilatation", "dilation"), ("oriented", "oriented"),
       ("paediatric", "pediatric"), ("localised", "localized"), ("characterised", "characterized")]

NEG_OTHERS = {
    "infarct": ["No haemorrhagic transformation.", "No intracranial haemorrhage.", "No mass lesion.",
                "No haemorrhagic transformation or significant mass effect."],
    "tumor": ["No acute infarct.", "No restricted diffusion to suggest acute ischaemia.",
              "No evidence of acute infarction."],
    "hemorrhage": ["No underlying mass lesion is identified.", "No acute infarct.",
                   "No evidence of an underlying tumour, although follow-up imaging is advised."],
    "others": ["No acute infarct or haemorrhage.", "No mass lesion.", "No acute intracranial abnormality.",
               "No restricted diffusion. No intracranial haemorrhage."],
    "normal": ["No acute infarct, haemorrhage or mass lesion.", "No evidence of acute infarction.",
               "No intracranial haemorrhage.", "No mass, mass effect or midline shift.",
               "No restricted diffusion.", "No abnormal susceptibility on T2*.",
               "No space-occupying lesion and no evidence of haemorrhage.",
               "Negative for acute infarct or haemorrhage."],
}

INCIDENTAL = {
    "cavum septum pellucidum": ["Incidental cavum septum pellucidum.", "Note is made of a cavum septum pellucidum, a normal variant."],
    "pineal cyst": ["Incidental small pineal cyst.", "A small simple pineal cyst is noted incidentally."],
    "prominent perivascular spaces": ["Prominent perivascular spaces in the basal ganglia.", "Incidental prominent Virchow-Robin spaces."],
    "developmental venous anomaly": ["Incidental developmental venous anomaly in the cerebellum.", "Small DVA in the right frontal lobe, incidental."],
    "partially empty sella": ["Partially empty sella, likely incidental.", "Incidental partially empty sella."],
    "mega cisterna magna": ["Mega cisterna magna, a normal variant.", "Incidental mega cisterna magna."],
}

HEADERS = ["MRI BRAIN WITHOUT CONTRAST.", "MR HEAD:", "EXAM: MRI brain.", "Clinical details: ? stroke.",
            "Indication: headache.", "MRI head (non-contrast).", "Indication: confusion, query cause."]

TECHNIQUE = ["Technique: DWI, ADC, T2*, FLAIR, T1 and T2 sequences.",
              "Sequences: axial DWI/ADC, GRE, FLAIR, T1, T2.", "Multiplanar multisequence MRI of the brain."]

TRAILERS = ["Page 1 of 1", "Electronically signed.", "Dictated, not read.", "Report verified by consultant radiologist.",
             "-- end of report --", "Page 1 of 1. Report approved."]

PRIORS_NEW = ["Comparison: MRI of {y}.", "Compared with the previous MRI ({y}).", "Prior MRI {y} reviewed.",
               "No prior imaging for comparison."]

PRIORS_FOLLOW = ["Compared with the prior study, appearances are similar.", "Comparison is made with the previous MRI.",
                  "Interval follow-up; prior MRI reviewed.", "Stable compared with the previous examination."]
