"""Which sequence is this DICOM series? One ordered rule table, physics first, description second.

:func:`identify` walks :data:`PHYSICS_RULES` (ImageType, ScanningSequence, EchoTime,
RepetitionTime, InversionTime, FlipAngle, MRAcquisitionType, b-values, ContrastBolusAgent), then,
only if none fired, :data:`DESCRIPTION_RULES` (regular expressions on SeriesDescription /
ProtocolName, the vendors' spellings). The first rule that fires decides; its ``why`` is the
reason recorded in series.csv. A T1 decision becomes t1c when a contrast agent is recorded or the
description says post-contrast. Thresholds are the usual clinical ranges at 1.5-3 T (TI of FLAIR
~1800-2800 ms, of MPRAGE ~800-1100 ms; T2* GRE TE ~15-30 ms).

One study-level rule follows (:func:`contrast_by_order`): two T1 series of one protocol with no
contrast evidence, another acquisition between them and no sign of a repeat -> the later is t1c
(pre-contrast T1 first, injection, post-contrast T1 after: how contrast protocols are acquired).

:func:`choose` picks one series per sequence in a study: axial over other planes, original over
derived, most slice positions, then the latest repeat (highest SeriesNumber, then SeriesTime).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

# What identification can answer; everything not wanted by the manifest is kept in series.csv only.
SEQUENCE_TYPES: tuple[str, ...] = ("dwi", "adc", "t2s", "swi", "flair", "t1", "t1c", "t2", "other")

H = dict  # the header dict of dicom_scan._header plus 'bvalues' (sorted distinct b-values)


def _it(h: H, *words: str) -> bool:
    return any(w in h["image_type"] for w in words)


def _ss(h: H, code: str) -> bool:
    return code in h["scanning_sequence"]


def _num(v: Any) -> bool:
    return v is not None and np.isfinite(v)


def _bmax(h: H) -> float | None:
    return max(h["bvalues"]) if h.get("bvalues") else None


def _text(h: H) -> str:
    """Description + protocol, lower case, separators as spaces ("t2_tirm_tra_dark-fluid" -> "t2 tirm tra dark fluid")."""
    return " " + re.sub(r"[_\-/.,()\[\]]+", " ", f"{h.get('description', '')} {h.get('protocol', '')}".lower()) + " "


@dataclass(frozen=True)
class Rule:
    name: str
    sequence: str  # "t1" decisions go through the contrast check
    when: Callable[[H], bool]
    why: str  # formatted with the header fields (te, tr, ti, flip, bmax, image_type, ...)


PHYSICS_RULES: tuple[Rule, ...] = (
    Rule("localizer_planes", "other", lambda h: h.get("orthogonal_planes", False),
         "{n_orientations} orthogonal planes with a few images each: a multi-plane localizer"),
    Rule("localizer", "other", lambda h: _it(h, "LOCALIZER"), "ImageType {image_type} marks a localizer"),
    Rule("phase", "other", lambda h: _it(h, "P", "PHASE") and not _it(h, "M", "MAGNITUDE"),
         "ImageType {image_type}: a phase image"),
    Rule("adc_type", "adc", lambda h: _it(h, "ADC"), "ImageType {image_type} says ADC map"),
    Rule("adc_derived", "adc", lambda h: _it(h, "DERIVED") and _re(h, r" (adc|dadc|apparent diffusion)"),
         "derived diffusion map described as ADC"),
    Rule("other_diffusion_map", "other", lambda h: _it(h, "FA", "EADC", "EXP", "TENSOR") or
         (_it(h, "DERIVED") and _re(h, r" (fa|eadc|exp|fractional) ")), "derived diffusion map (FA/eADC/exponential)"),
    Rule("min_max_projection", "other", lambda h: _it(h, "MNIP", "MIP", "MINIP", "PROJECTION IMAGE") or
         (_it(h, "DERIVED") and _re(h, r" (mip|minip|mnip) ")), "ImageType {image_type}: an intensity projection"),
    Rule("reformat", "other", lambda h: _it(h, "DERIVED") and _it(h, "SECONDARY", "MPR", "REFORMATTED", "CSA MPR",
                                                                   "CSAMPR", "RESAMPLED"),
         "ImageType {image_type}: a derived reformat"),
    Rule("dwi_b", "dwi", lambda h: _num(_bmax(h)) and _bmax(h) >= 500, "b-values {bvalues}: diffusion-weighted (b >= 500)"),
    Rule("b0", "other", lambda h: _num(_bmax(h)) and _bmax(h) < 50 and (_it(h, "DIFFUSION") or _ss(h, "EP")),
         "b-values {bvalues} only: a b0 image"),
    Rule("dwi_trace", "dwi", lambda h: _it(h, "TRACEW", "TRACE") and not _num(_bmax(h)),
         "ImageType {image_type}: diffusion trace without recorded b-value"),
    Rule("swi_type", "swi", lambda h: _it(h, "SWI"), "ImageType {image_type} says SWI"),
    Rule("t2s_gre", "t2s", lambda h: _ss(h, "GR") and not _ss(h, "IR") and _num(h["te"]) and h["te"] >= 12
         and (not _num(h["flip"]) or h["flip"] <= 45) and h["acq_type"] != "3D",
         "2D gradient echo, TE {te} ms >= 12, flip {flip}: T2*-weighted"),
    Rule("gre3d_long_te", "other", lambda h: _ss(h, "GR") and not _ss(h, "IR") and _num(h["te"]) and h["te"] >= 12,
         "3D gradient echo with TE {te} ms: SWI magnitude/source, not a standard T2*"),
    Rule("flair", "flair", lambda h: _ss(h, "IR") and _num(h["ti"]) and h["ti"] >= 1400,
         "inversion recovery with TI {ti} ms >= 1400: fluid-attenuated (FLAIR)"),
    Rule("t1_ir", "t1", lambda h: _ss(h, "IR") and _num(h["ti"]) and 300 <= h["ti"] < 1400 and _num(h["te"]) and h["te"] < 20,
         "inversion recovery with TI {ti} ms, TE {te} ms: T1-weighted (MPRAGE / T1-FLAIR)"),
    Rule("stir", "other", lambda h: _ss(h, "IR") and _num(h["ti"]) and h["ti"] < 300, "short-TI inversion recovery (STIR)"),
    Rule("t1_short", "t1", lambda h: _num(h["tr"]) and _num(h["te"]) and h["tr"] < 1200 and h["te"] < 30,
         "TR {tr} ms < 1200 and TE {te} ms < 30: T1-weighted"),
    Rule("t2_long", "t2", lambda h: _num(h["tr"]) and _num(h["te"]) and h["tr"] >= 1800 and h["te"] >= 60
         and not _ss(h, "IR") and not _ss(h, "EP"), "TR {tr} ms >= 1800 and TE {te} ms >= 60: T2-weighted"),
    Rule("pd", "other", lambda h: _num(h["tr"]) and _num(h["te"]) and h["tr"] >= 1800 and h["te"] < 40
         and not _ss(h, "EP"), "TR {tr} ms long, TE {te} ms short: proton density"),
)


def _re(h: H, pattern: str) -> bool:
    return re.search(pattern, _text(h)) is not None


def _desc(name: str, seq: str, pattern: str) -> Rule:
    return Rule(f"desc_{name}", seq, lambda h, p=pattern: _re(h, p), f"description '{{description}}' matches {name}")


# Second: the description, when the physics said nothing (anonymisers often strip TE/TR/TI).
DESCRIPTION_RULES: tuple[Rule, ...] = (
    _desc("localizer", "other", r" (loc|localizer|localiser|scout|survey|3 ?pl(ane)?|tri ?pilot|aahead)"),
    _desc("phase", "other", r" (pha|phase|ph) "),
    _desc("projection", "other", r" (mip|minip|mnip|mpr|reformat|recon) "),
    _desc("adc", "adc", r" (adc|dadc|apparent diffusion)"),
    _desc("b0", "other", r" b ?0 "),
    _desc("dwi", "dwi", r" (dwi|diff|diffusion|trace|b ?1000|ep2d diff|isodwi)"),
    _desc("swi", "swi", r" (swi|swan|venobold|susceptibility)"),
    _desc("t2s", "t2s", r" (t2 ?\*|t2star|t2 ?s |gre|hemo|fl2d|ffe|t2 ?ffe)"),
    _desc("t1_flair", "t1", r" t1 ?(w )?flair"),
    _desc("flair", "flair", r" (flair|dark fluid|tirm|dark fl)"),
    _desc("t1", "t1", r" (t1|mprage|mp rage|spgr|bravo|tfe|flash|vibe|fspgr)"),
    _desc("t2", "t2", r" (t2|tse|fse|frfse|propeller|blade)"),
)

POST_CONTRAST = r"( post| \+ ?c|\+c|gad| gd| km|contrast| ce | c\+)"


def _fmt(h: H) -> dict[str, Any]:
    out = {k: (f"{v:g}" if isinstance(v, float) else v) for k, v in h.items()}
    out["image_type"] = "\\".join(h.get("image_type") or []) or "(none)"
    out["bvalues"] = ",".join(f"{b:g}" for b in h.get("bvalues") or []) or "(none)"
    for k in ("te", "tr", "ti", "flip"):
        out[k] = "?" if h.get(k) is None else f"{h[k]:g}"
    return out


def _contrast(h: H, seq: str, why: str) -> tuple[str, str]:
    if seq != "t1":
        return seq, why
    if h.get("contrast"):
        return "t1c", f"{why}; ContrastBolusAgent recorded -> post-contrast (t1c)"
    if re.search(POST_CONTRAST, _text(h)):
        return "t1c", f"{why}; description '{h.get('description', '')}' says post-contrast (t1c)"
    return seq, why


def identify(h: H) -> tuple[str, str]:
    """(sequence, reason) for a series header (see the module docstring for the order)."""
    for rules, kind in ((PHYSICS_RULES, "physics"), (DESCRIPTION_RULES, "description")):
        for r in rules:
            if r.when(h):
                return _contrast(h, r.sequence, f"{kind} rule {r.name}: {r.why.format(**_fmt(h))}")
    return "other", "no rule fired (no decisive header fields, description unhelpful)"


# --------------------------------------------------------------------------- the study rule
POST_BY_ORDER = "later of two identical T1 series: post-contrast by acquisition order"
PRE_BY_ORDER = "earlier of two identical T1 series: pre-contrast"
REPEAT_WORDS = r" (rpt|repeat|redo|rescan|wdh)\b"  # a description that says 'repeat'
PROTOCOL_TOL = 0.1  # TR/TE/TI/flip within 10 % of each other: the same protocol


def _seconds(t: str) -> float | None:
    """DICOM TM 'HHMMSS.ffffff' (or the old 'HH:MM:SS') -> seconds since midnight; None if absent."""
    m = re.fullmatch(r"(\d\d)(\d\d)?(\d\d(?:\.\d*)?)?", t.strip().replace(":", ""))
    return None if m is None else int(m[1]) * 3600 + int(m[2] or 0) * 60 + float(m[3] or 0)


def acquisition_order(headers: list[H]) -> list[int]:
    """Indices of ``headers`` in acquisition order: by AcquisitionTime, else SeriesTime (when every
    series has one: a missing time cannot be placed), else SeriesNumber; SeriesNumber breaks ties."""
    for key in ("acquisition_time", "series_time"):
        t = [_seconds(str(h.get(key) or "")) for h in headers]
        if all(x is not None for x in t):
            return sorted(range(len(headers)), key=lambda i: (t[i], headers[i].get("series_number", 0)))
    return sorted(range(len(headers)), key=lambda i: headers[i].get("series_number", 0))


def same_protocol(a: H, b: H) -> bool:
    """Same plane, acquisition type, scanning sequence and TR/TE/TI/flip (within :data:`PROTOCOL_TOL`).
    False when TR or TE is missing on either: stripped physics cannot show two series are alike."""
    if (a.get("plane"), a.get("acq_type"), sorted(a.get("scanning_sequence") or [])) != (
            b.get("plane"), b.get("acq_type"), sorted(b.get("scanning_sequence") or [])):
        return False
    if not all(_num(h.get(k)) for h in (a, b) for k in ("tr", "te")):
        return False
    for k in ("tr", "te", "ti", "flip"):
        x, y = a.get(k), b.get(k)
        if _num(x) != _num(y) or (_num(x) and abs(x - y) > PROTOCOL_TOL * max(abs(x), abs(y))):
            return False
    return True


def _repeat(a: H, b: H, between: int) -> str | None:
    """Why the later T1 ``b`` looks like a repeat of ``a`` rather than a post-contrast series, or None."""
    if between == 0:
        return "acquired back to back (no other acquisition between them)"
    if a.get("description") and a.get("description") == b.get("description"):
        return f"same description '{a['description']}'"
    if re.search(REPEAT_WORDS, _text(b)):
        return f"description '{b.get('description', '')}' says repeat"
    return None


def contrast_by_order(headers: list[H], decisions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Study rule ``t1c_by_order``: one study's (sequence, reason) per series, with the later of two
    identical T1 series made t1c when the study shows a contrast protocol's pattern.

    Fires for each group of exactly two series identified t1 (no ContrastBolusAgent, no
    post-contrast words: else they were t1c already) with :func:`same_protocol`, when
    (1) no series of the study is t1c already (then the protocol's post-contrast T1 is known and a
    second identical T1 is a repeat), (2) at least one other original (not derived) acquisition lies
    between them in :func:`acquisition_order` (the injection and the wait for enhancement), and
    (3) nothing marks a repeat: a repeat is acquired back to back, keeps its description, or says
    'repeat'/'rpt'. Three or more identical T1 series are left alone (which one is post?).
    """
    out = list(decisions)
    if any(seq == "t1c" for seq, _ in decisions):
        return out
    order = acquisition_order(headers)
    groups: list[list[int]] = []
    for i in (i for i in order if decisions[i][0] == "t1"):
        g = next((g for g in groups if same_protocol(headers[g[0]], headers[i])), None)
        if g is None:
            groups.append([i])
        else:
            g.append(i)
    for g in (g for g in groups if len(g) == 2):
        a, b = g  # in acquisition order
        ra, rb = order.index(a), order.index(b)
        between = sum("DERIVED" not in (headers[j].get("image_type") or []) for j in order[ra + 1:rb])
        na, nb = headers[a].get("series_number"), headers[b].get("series_number")
        why_repeat = _repeat(headers[a], headers[b], between)
        if why_repeat:
            out[b] = ("t1", f"{out[b][1]}; study rule t1c_by_order not applied: same T1 protocol as series {na}, "
                            f"taken as a repeat ({why_repeat})")
            continue
        out[b] = ("t1c", f"{out[b][1]}; study rule t1c_by_order: {POST_BY_ORDER} (series {na} pre, series {nb} post, "
                         f"{between} acquisition(s) between, no t1c otherwise)")
        out[a] = ("t1", f"{out[a][1]}; study rule t1c_by_order: {PRE_BY_ORDER} (series {nb} post)")
    return out


# --------------------------------------------------------------------------- choosing
def plane(orientation: tuple[float, ...] | None) -> str:
    """'axial' / 'coronal' / 'sagittal' by the largest component of the slice normal."""
    if orientation is None:
        return "unknown"
    n = np.abs(np.cross(orientation[:3], orientation[3:]))
    return ("sagittal", "coronal", "axial")[int(np.argmax(n))]


def choice_key(c: dict[str, Any]) -> tuple:
    """Sort key, best last: axial, original (not derived), most slice positions, latest repeat."""
    return (c["plane"] == "axial", "DERIVED" not in c["image_type"], c["n_positions"], c["series_number"], c["series_time"])


def choose(candidates: list[dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(chosen, the others) among one study's candidates for one sequence (see :func:`choice_key`)."""
    ranked = sorted(candidates, key=choice_key)
    return ranked[-1], ranked[:-1]


def why_not(chosen: dict[str, Any], other: dict[str, Any]) -> str:
    """Which criterion made ``chosen`` win over ``other`` (for series.csv)."""
    a, b = choice_key(chosen), choice_key(other)
    labels = ("axial over " + other["plane"], "original over derived", f"more slices ({chosen['n_positions']} vs "
              f"{other['n_positions']})", "later repeat", "later repeat")
    for x, y, lab in zip(a, b, labels):
        if x != y:
            return f"not chosen: series {chosen['series_number']} preferred ({lab})"
    return f"not chosen: series {chosen['series_number']} preferred (tie)"
