"""Report text -> one of the five classes, with NegEx-style negation and uncertainty.

Rules (documented policy):

1. **Normalise**: lower case, British -> American spelling (haem -> hem, oedema -> edema,
   tumour -> tumor, ischaem -> ischem, grey -> gray), whitespace collapsed.
2. **Drop context sentences** that are not findings: "Clinical details: ...",
   "Indication: ...", "History: ..." (a query in the request is not a finding).
3. **Split** into sentences (``.`` not between digits, ``;``, ``!``, ``?``, new line) and each
   sentence into clauses at termination terms (``but``, ``however``, ``although``,
   ``apart from``, ``except``, ``whereas``, ``aside from``) which end a cue's scope.
4. **Find concept mentions** per class with regular expressions (``CONCEPTS``).
5. **Negation** (mention is ignored): a pre-negation cue earlier in the same clause
   ("no", "without", "negative for", "no evidence of", "absence of", "not", "free of",
   "rather than", "resolution of") or a post-negation cue right after it ("is excluded",
   "not seen", "not identified", "has resolved", "resolved", "ruled out", "absent").
6. **Uncertainty**: a pre-cue in the clause ("possible", "possibly", "cannot exclude",
   "can not be excluded", "questionable", "query", "?", "may represent", "could represent",
   "differential includes", "versus") marks the mention *uncertain*. Policy: definite
   mentions win; if a report has only uncertain mentions, the uncertain mentions are
   counted as positive (a hedged finding is still the reason the study was reported
   abnormal). "likely", "consistent with", "suggestive of" are definite.
7. **Severity** for ``others``: atrophy / white-matter / involutional mentions in a clause
   that also says "mild", "minimal", "age-appropriate", "age-related", "normal for age",
   "within normal limits", "a few", "punctate", "scattered" are age-normal -> ignored.
8. **Priority** when several classes are positive: tumor > hemorrhage > infarct > others;
   nothing positive -> normal. (A tumour with intratumoural bleeding is a tumour; an
   infarct report's "no haemorrhagic transformation" is negated, not a haemorrhage.)
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable

from medalign.data.schema import CLASSES

PRIORITY: tuple[str, ...] = ("tumor", "hemorrhage", "infarct", "others")

_SPELLING = [(r"haem", "hem"), (r"oedema", "edema"), (r"tumour", "tumor"), (r"ischaem", "ischem"),
             (r"\bgrey\b", "gray"), (r"centre", "center"), (r"generalis", "generaliz"),
             (r"dilatation", "dilation"), (r"leukoaraiosis", "leukoaraiosis")]

CONCEPTS: dict[str, list[str]] = {
    "infarct": [r"infarct", r"\bstrokes?\b", r"restricted diffusion", r"diffusion restriction",
                r"cytotoxic edema", r"ischemic (insult|injury|event)", r"acute ischemi", r"\blacunes?\b",
                r"encephalomalacia", r"bright on b1000"],
    "tumor": [r"\btumors?\b", r"glioma", r"glioblastoma", r"\bgbm\b", r"neoplas", r"meningioma",
              r"\bmass\b(?! effect)", r"space[- ]occupying", r"metasta", r"malignan", r"lymphoma"],
    "hemorrhage": [r"hemorrhag", r"hematoma", r"\bbleed", r"microbleed", r"\bich\b", r"blood products",
                   r"hemosiderin", r"microhemorrhag"],
    "others": [r"atroph", r"volume loss", r"ventriculomegaly", r"hydrocephalus",
               r"white matter (hyperintens|disease|change)", r"small vessel (disease|ischemic)",
               r"leukoaraiosis", r"leukoencephalopathy", r"demyelinat", r"\bplaques?\b", r"multiple sclerosis",
               r"\bms\b", r"mucosal thickening", r"sinus (disease|opacification)", r"sinusitis",
               r"opacified .{0,30}sinus", r"fazekas", r"involutional", r"dawson"],
}

PRE_NEG = [r"\bno\b", r"\bwithout\b", r"negative for", r"no evidence of", r"absence of", r"\bnot\b",
           r"free of", r"rather than", r"resolution of", r"\bnor\b"]
POST_NEG = [r"^\W*(is|are|was|were|has been|have been)?\s*(excluded|not seen|not identified|not demonstrated|ruled out|absent|resolved)",
            r"^\W*has resolved"]
PRE_UNC = [r"\bpossible\b", r"\bpossibly\b", r"cannot (be )?exclude", r"can ?not be excluded", r"\bquestionable\b",
           r"\bquery\b", r"\?", r"may represent", r"could represent", r"differential (diagnosis )?includes",
           r"\bversus\b", r"\bvs\b", r"\bequivocal\b"]
MILD = [r"\bmild\b", r"\bminimal\b", r"age[- ]appropriate", r"age[- ]related", r"normal for age",
        r"within normal limits", r"\ba few\b", r"\bpunctate\b", r"\bscattered\b"]
TERMINATORS = r"\b(but|however|although|apart from|except|whereas|aside from|though)\b"
CONTEXT_SENTENCE = re.compile(r"^\s*(clinical (details|information|history)|indication|history|reason for (exam|study)|request)\b")

_concepts = {c: [re.compile(p) for p in ps] for c, ps in CONCEPTS.items()}
_pre_neg = [re.compile(p) for p in PRE_NEG]
_post_neg = [re.compile(p) for p in POST_NEG]
_pre_unc = [re.compile(p) for p in PRE_UNC]
_mild = [re.compile(p) for p in MILD]


@dataclass
class Mention:
    cls: str
    text: str
    negated: bool
    uncertain: bool
    ignored: bool = False  # age-normal "others" mention


@dataclass
class ReportLabel:
    label: str
    mentions: list[Mention] = field(default_factory=list)
    uncertain_only: bool = False


def normalise(text: str) -> str:
    t = text.lower()
    for a, b in _SPELLING:
        t = re.sub(a, b, t)
    return t


def _sentences(text: str) -> list[str]:
    # "?" does not split: "? glioma" is an uncertainty cue inside its sentence
    parts = re.split(r"(?<!\d)\.(?!\d)|[;!\n]", text)
    return [p.strip() for p in parts if p and p.strip()]


def analyse_report(text: str) -> ReportLabel:
    """Label one report and return the mentions behind the decision."""
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    mentions: list[Mention] = []
    for sent in _sentences(normalise(text)):
        if CONTEXT_SENTENCE.match(sent):
            continue
        for clause in re.split(TERMINATORS, sent):
            if not clause or re.fullmatch(TERMINATORS, clause):
                continue
            mild = any(p.search(clause) for p in _mild)
            for cls, pats in _concepts.items():
                spans = []
                for p in pats:
                    for m in p.finditer(clause):
                        if any(m.start() < e and s < m.end() for s, e in spans):
                            continue  # overlapping matches of one class count once
                        spans.append((m.start(), m.end()))
                for s, e in spans:
                    e += len(re.match(r"[\w-]*", clause[e:]).group())  # to the end of the word
                    before, after = clause[:s], clause[e:]
                    neg = any(p.search(before) for p in _pre_neg) or any(p.search(after[:40]) for p in _post_neg)
                    unc = any(p.search(before) for p in _pre_unc) or after.strip().startswith("?")
                    mentions.append(Mention(cls, clause[s:e], neg, unc and not neg,
                                            ignored=(cls == "others" and mild)))
    live = [m for m in mentions if not m.negated and not m.ignored]
    definite = {m.cls for m in live if not m.uncertain}
    uncertain = {m.cls for m in live if m.uncertain}
    for cls in PRIORITY:
        if cls in definite:
            return ReportLabel(cls, mentions)
    for cls in PRIORITY:
        if cls in uncertain:
            return ReportLabel(cls, mentions, uncertain_only=True)
    return ReportLabel("normal", mentions)


def label_report(text: str) -> str:
    """One of ``schema.CLASSES`` for a report text (see module docstring for the rules)."""
    return analyse_report(text).label


def label_reports(texts: Iterable[str]) -> list[str]:
    return [label_report(t) for t in texts]


def confusion_matrix(truth: list[str], pred: list[str], classes: tuple[str, ...] = CLASSES) -> list[list[int]]:
    """Rows = truth, columns = prediction, in ``classes`` order."""
    idx = {c: i for i, c in enumerate(classes)}
    m = [[0] * len(classes) for _ in classes]
    for t, p in zip(truth, pred):
        if t in idx and p in idx:
            m[idx[t]][idx[p]] += 1
    return m


def format_confusion(m: list[list[int]], classes: tuple[str, ...] = CLASSES) -> str:
    w = max(len(c) for c in classes) + 2
    head = "truth \\ pred".ljust(w + 2) + "".join(c[:10].rjust(12) for c in classes)
    rows = [c.ljust(w + 2) + "".join(str(v).rjust(12) for v in r) for c, r in zip(classes, m)]
    return "\n".join([head, *rows])


# ---------------------------------------------------------------------------- impression section
# Section headers that open the radiologist's summary (brain-CLIP trained on "the report impression",
# METHODS.md section 1). The last such header in a report wins.
_IMPRESSION_HEAD = re.compile(r"(?i)\b(impression|conclusions?|summary|opinion)\s*:")
# Administrative / context / technique sentences that carry no finding (dropped from either section).
_BOILERPLATE = re.compile(
    r"(?i)^\W*(dictated\b|report (approved|verified|signed)|electronically signed|page \d+ of \d+|-*\s*end of report"
    r"|(clinical (details|information|history)|indication|history|reason for (exam|study)|request|technique|sequences"
    r"|exam(ination)?)\s*:|multiplanar multisequence|mri? (of the )?(head|brain)\b[^:]*$)")
# A title in front of the findings ("MR HEAD: Acute ..."): only the title goes.
_TITLE = re.compile(r"(?i)^\W*mri? (of the )?(head|brain)\s*:\s*")


def _split_sentences_keep(text: str) -> list[str]:
    # Split after '.', '!', '?' followed by white space (so "4.3 cm" stays whole) or at a new line.
    parts = re.split(r"(?<=[.!?])\s+|\n+", text)
    return [p.strip() for p in parts if p and p.strip()]


def extract_impression(text: str) -> str:
    """The report's impression/conclusion section, else the whole report, without boilerplate.

    - If the report has an ``Impression:`` / ``Conclusion:`` / ``Summary:`` / ``Opinion:`` header
      (any case), the text after the *last* one is returned.
    - Otherwise the whole report is used.
    - Either way, administrative and context sentences ("Dictated, not read.", "Page 1 of 1",
      "Report approved.", "Indication: ...", "Technique: ...", "Multiplanar multisequence MRI ...")
      are dropped; if that would leave nothing, the stripped original text is returned.

    Used only on reports (training, ``embed``, evaluation), never on free-text queries.
    """
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    src = text.strip()
    heads = list(_IMPRESSION_HEAD.finditer(src))
    section = src[heads[-1].end():] if heads else src
    keep = [_TITLE.sub("", s) for s in _split_sentences_keep(section) if not _BOILERPLATE.match(s)]
    keep = [s for s in keep if s]
    out = " ".join(keep).strip()
    return out or src


def select_report_section(text: str, section: str = "full") -> str:
    """``section`` = "full" (text unchanged) or "impression" (:func:`extract_impression`)."""
    if section == "full":
        return text
    if section == "impression":
        return extract_impression(text)
    raise ValueError(f"unknown report section '{section}' (expected 'full' or 'impression')")
