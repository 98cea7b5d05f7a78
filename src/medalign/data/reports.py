"""Report text -> one of the five classes, on medspaCy (target matcher + ConText).

Pipeline (built once per process, :func:`pipeline`): a blank spaCy English tokenizer, a
sentencizer (``.``, ``!``, ``;`` and new lines end a sentence; ``?`` does not, so "? glioma"
keeps its cue), medspaCy's ``TargetMatcher`` with the terms of ``lexicon.yaml`` and medspaCy's
``ConText`` with its default English rules plus the radiology rules of ``lexicon.yaml``.

Rules (documented policy):

1. **Normalise**: lower case, British -> American spelling (``lexicon.yaml: spelling``).
2. **Findings**: every lexicon term found is a :class:`Mention` with its class, subtype and
   modifiers: ``negated`` ("no", "without", "is excluded", "has resolved", ...), ``uncertain``
   ("possible", "?", "cannot be excluded", "differential includes", "versus", "suspicious
   for"; "likely", "consistent with", "in keeping with" are definite), ``historical``
   ("history of"), ``hypothetical`` ("to exclude", "if ..."), ``family`` and, for ``others``
   only, ``age_normal`` ("mild", "a few", "punctate", "non-specific", "normal for age",
   "Fazekas 1") unless a severity word ("moderate", "marked", "confluent", "out of proportion",
   "multiple") modifies it too. Overlapping terms: the longest wins, and ``blockers``
   ("mass effect", "venous sinus") swallow the finding word inside them.
3. **Context sentences** ("Clinical details: ...", "Indication: ...", "History: ...",
   "Technique: ...", "Comparison: ...") carry no finding of this scan: their mentions are ignored.
4. **Counted** mentions: not negated, historical, hypothetical, family or age-normal, and not of
   class ``normal`` (normal variants and incidental findings: cavum septum pellucidum, pineal
   cyst, DVA, perivascular spaces, ... are listed but never make a study abnormal).
5. **Uncertainty**: definite mentions win; if a report has only uncertain counted mentions,
   they decide the label (a hedged finding is still the reason the study was reported
   abnormal) and ``ReportLabel.uncertain_only`` is set.
6. **Priority** when several classes are counted: tumor > hemorrhage > infarct > others;
   nothing counted -> normal. (A tumour with intratumoural bleeding is a tumour; an infarct
   report's "no haemorrhagic transformation" is negated, not a haemorrhage.)
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Iterable, Sequence

from medalign.data.schema import CLASSES
from medalign.errors import MedAlignError

LEXICON_FILE = "lexicon.yaml"
_CONTEXT_SENTENCE = re.compile(
    r"^\W*(clinical (details|information|history|indication|question)|indications?|history|reason for "
    r"(exam|examination|study|referral|scan)|request|question|technique|protocol|sequences|comparison)\s*:")
_FLAG_OF = {"NEGATED_EXISTENCE": "negated", "POSSIBLE_EXISTENCE": "uncertain", "HISTORICAL": "historical",
            "HYPOTHETICAL": "hypothetical", "FAMILY": "family", "AGE_NORMAL": "age_normal", "SEVERE": "severe"}


@dataclass
class Mention:
    """One finding in a report with its ConText modifiers."""
    cls: str
    text: str
    negated: bool
    uncertain: bool
    ignored: bool = False  # age-normal "others" mention, or in a context sentence
    subtype: str = ""
    historical: bool = False
    hypothetical: bool = False
    family: bool = False
    age_normal: bool = False
    context_sentence: bool = False
    sentence: str = ""

    @property
    def counted(self) -> bool:
        """Whether this mention can decide the label (policy rule 4)."""
        return (self.cls != "normal" and not (self.negated or self.historical or self.hypothetical
                                              or self.family or self.ignored))


@dataclass
class ReportLabel:
    label: str
    mentions: list[Mention] = field(default_factory=list)
    uncertain_only: bool = False

    @property
    def findings(self) -> list[Mention]:
        """The mentions that count towards the label (all of them are in ``mentions``)."""
        return [m for m in self.mentions if m.counted]


@functools.lru_cache(maxsize=1)
def load_lexicon() -> dict[str, Any]:
    """The parsed ``lexicon.yaml`` (checked: known classes, every class present, priority complete)."""
    import yaml

    text = resources.files("medalign.data").joinpath(LEXICON_FILE).read_text(encoding="utf-8")
    lex = yaml.safe_load(text)
    found = set(lex.get("findings", {}))
    if found != set(CLASSES):
        raise MedAlignError(f"{LEXICON_FILE}: findings must list exactly the classes {', '.join(CLASSES)} "
                            f"(got {', '.join(sorted(found))})")
    if sorted(lex["priority"]) != sorted(c for c in CLASSES if c != "normal"):
        raise MedAlignError(f"{LEXICON_FILE}: priority must order every class but 'normal'")
    return lex


PRIORITY: tuple[str, ...] = ("tumor", "hemorrhage", "infarct", "others")


def _spell(text: str) -> str:
    t = text.lower()
    for a, b in load_lexicon()["spelling"].items():
        t = re.sub(a, b, t)
    return t


def normalise(text: str) -> str:
    """Lower case, British -> American spelling, "?" -> "query", new lines -> sentence ends."""
    t = _spell(text).replace("?", " query ")  # spaCy's sentencizer would glue a leading "?" to the previous sentence
    return re.sub(r"\s*\n[\s\n]*", " ; ", t)


def _alt(terms: Iterable[str]) -> str:
    return "|".join(f"(?:{_spell(t)})" for t in terms)


def _target_rules(lex: dict[str, Any]) -> list:
    from medspacy.target_matcher import TargetRule

    rules = []
    # one regular expression per subtype: medspaCy runs each regex rule over the whole text
    for cls, subtypes in lex["findings"].items():
        for sub, terms in subtypes.items():
            rules.append(TargetRule(f"{cls}/{sub}", cls, pattern=rf"\b(?:{_alt(terms)})\b", metadata={"subtype": sub}))
    rules.append(TargetRule("blockers", "BLOCK", pattern=rf"\b(?:{_alt(lex['blockers'])})\b"))
    return rules


def _context_rules(lex: dict[str, Any], default_path: str) -> list:
    from medspacy.context import ConTextRule

    drop = set(lex.get("drop_default_context", []))
    defaults = [r for r in ConTextRule.from_json(default_path) if r.literal not in drop]
    fill = {"AGE_NORMAL": _alt(lex["age_normal"]), "SEVERE": _alt(lex["severe"])}
    ours = []
    for r in lex["context"]:
        pat = fill.get(r["pattern"], r["pattern"])
        ours.append(ConTextRule(r["literal"], r["category"], pattern=rf"(?:{pat})", direction=r["direction"],
                                max_scope=r.get("max_scope"),
                                allowed_types=set(r["allowed_types"]) if r.get("allowed_types") else None))
    return defaults + ours


@functools.lru_cache(maxsize=1)
def pipeline():
    """The spaCy pipeline (tokenizer, sentencizer, medspaCy target matcher, ConText); built once."""
    try:
        import spacy
        from medspacy.context import ConText  # noqa: F401 - registers the factories
        from medspacy.target_matcher import TargetMatcher  # noqa: F401
    except ImportError as e:  # pragma: no cover - medspacy is a dependency
        raise MedAlignError(f"the report labeller needs medspacy ({e}); pip install medspacy") from None
    import warnings

    # spaCy warns on every call that medspaCy's (unused) token matcher has no patterns
    warnings.filterwarnings("ignore", message=r"\[W036\]")
    lex = load_lexicon()
    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer", config={"punct_chars": [".", "!", ";"]})
    nlp.add_pipe("medspacy_target_matcher").add(_target_rules(lex))
    ctx = nlp.add_pipe("medspacy_context", config={"rules": None})
    # medspaCy's default English ConText rules (minus drop_default_context) + ours
    ctx.add(_context_rules(lex, ctx.DEFAULT_RULES_FILEPATH))
    return nlp


def _mentions(doc) -> list[Mention]:
    out = []
    for ent in doc.ents:
        if ent.label_ == "BLOCK":
            continue
        cats = {_FLAG_OF.get(m.category, m.category.lower()) for m in ent._.modifiers}
        sent = ent.sent.text
        ctx_sent = bool(_CONTEXT_SENTENCE.match(sent))
        age_normal = ent.label_ == "others" and "age_normal" in cats and "severe" not in cats
        rule = getattr(ent._, "target_rule", None)
        sub = (rule.metadata or {}).get("subtype", "") if rule is not None else ""
        neg = "negated" in cats
        out.append(Mention(ent.label_, ent.text, neg, "uncertain" in cats and not neg,
                           ignored=age_normal or ctx_sent, subtype=sub, historical="historical" in cats,
                           hypothetical="hypothetical" in cats, family="family" in cats,
                           age_normal=age_normal, context_sentence=ctx_sent, sentence=sent))
    return out


def _decide(mentions: list[Mention]) -> ReportLabel:
    live = [m for m in mentions if m.counted]
    definite = {m.cls for m in live if not m.uncertain}
    uncertain = {m.cls for m in live if m.uncertain}
    for cls in PRIORITY:
        if cls in definite:
            return ReportLabel(cls, mentions)
    for cls in PRIORITY:
        if cls in uncertain:
            return ReportLabel(cls, mentions, uncertain_only=True)
    return ReportLabel("normal", mentions)


def _as_text(text: Any) -> str:
    return text if isinstance(text, str) else ("" if text is None else str(text))


def analyse_report(text: str) -> ReportLabel:
    """Label one report and return every finding with its modifiers (see module docstring)."""
    return _decide(_mentions(pipeline()(normalise(_as_text(text)))))


def analyse_reports(texts: Iterable[str], batch_size: int = 64) -> list[ReportLabel]:
    """:func:`analyse_report` for many reports (``nlp.pipe``: the same result, faster)."""
    docs = pipeline().pipe((normalise(_as_text(t)) for t in texts), batch_size=batch_size)
    return [_decide(_mentions(d)) for d in docs]


def label_report(text: str) -> str:
    """One of ``schema.CLASSES`` for a report text (see module docstring for the rules)."""
    return analyse_report(text).label


def label_reports(texts: Iterable[str]) -> list[str]:
    return [r.label for r in analyse_reports(texts)]


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


def report_sentences(text: str) -> list[str]:
    """The report's sentences, in order and in its own wording (the splitting of :func:`extract_impression`),
    without administrative / context sentences ("Indication: ...", "Dictated ...") or a leading "MRI head:"
    title. Section headers stay on their sentence ("Impression: Acute infarct.")."""
    sents = (_TITLE.sub("", s) for s in _split_sentences_keep(_as_text(text)))
    return [t for t in sents if t and not _BOILERPLATE.match(t)]


def select_report_section(text: str, section: str = "full") -> str:
    """``section`` = "full" (text unchanged) or "impression" (:func:`extract_impression`)."""
    if section == "full":
        return text
    if section == "impression":
        return extract_impression(text)
    raise ValueError(f"unknown report section '{section}' (expected 'full' or 'impression')")


def report_views(text: str, section: str = "full", max_views: int = 6, label_preserving: bool = True,
                 paraphrases: Sequence[str] = ()) -> list[str]:
    """Distinct text views of one report for text-side augmentation (first = the ``section`` view).

    Views, in order, duplicates and empty ones dropped: the ``section`` text, the impression
    (:func:`extract_impression`), the findings (the report before its impression header, without
    boilerplate), then the findings with one sentence left out (first sentences first), up to
    ``max_views``. With ``label_preserving`` a view is kept only if the labeller gives it the
    report's label (dropping "Acute infarct." from an infarct report would pair the image with
    text that does not name its finding). Deterministic, so every view is encoded once and cached.

    ``paraphrases`` (other wordings of the same report, e.g. a manifest's ``report_paraphrases``)
    add the ``section`` view of each, after the report's own views and on top of ``max_views``,
    under the same label check.
    """
    text = _as_text(text)
    views = [select_report_section(text, section), extract_impression(text)]
    heads = list(_IMPRESSION_HEAD.finditer(text))
    body = text[:heads[-1].start()] if heads else text
    sents = [t for t in (_TITLE.sub("", s) for s in _split_sentences_keep(body)) if t and not _BOILERPLATE.match(t)]
    views.append(" ".join(sents))
    if len(sents) > 1:
        views += [" ".join(sents[:i] + sents[i + 1:]) for i in range(len(sents))]
    out: list[str] = []
    for v in (v.strip() for v in views):
        if v and v not in out:
            out.append(v)
    extra: list[str] = []
    for v in (select_report_section(_as_text(p), section).strip() for p in paraphrases):
        if v and v not in extra:
            extra.append(v)
    if label_preserving and (len(out) > 1 or extra):
        labels = label_reports([text, *out, *extra])
        ref, n = labels[0], len(out)
        out = out[:1] + [v for v, lab in zip(out[1:], labels[2:n + 1]) if lab == ref]  # the first is always kept
        extra = [v for v, lab in zip(extra, labels[n + 1:]) if lab == ref]
    out = out[:max_views] or [text]
    return out + [v for v in extra if v not in out]


# Laterality words a report uses: the words in any case, and the abbreviations as written ("L MCA territory",
# "Lt frontal"). Lower-case single letters are left alone: in free text they are rarely sides.
_SIDES = re.compile(r"\b(left|right|lt|rt)\b|\b([LR])\b", re.IGNORECASE)
_SWAP = {"left": "right", "right": "left", "lt": "rt", "rt": "lt", "L": "R", "R": "L"}


def _swap_side(m: re.Match) -> str:
    word = m.group(0)
    if m.group(2) is not None:  # a single letter: only the capital is a side
        return _SWAP[word] if word.isupper() else word
    new = _SWAP[word.lower()]
    if word.isupper() and len(word) > 1:
        return new.upper()
    return new[0].upper() + new[1:] if word[0].isupper() else new


def mirror_laterality(text: str) -> str:
    """The report of the left-right mirrored image: "left" <-> "right" (any case, also in "left-sided"),
    "Lt" <-> "Rt" and the capital abbreviations "L" <-> "R"; everything else unchanged.

    Used to keep an image and its report true to each other when training mirrors the image
    (``recipe.flip_lr``); "bilateral", "midline" and unsided findings need no change.
    """
    return _SIDES.sub(_swap_side, _as_text(text))
