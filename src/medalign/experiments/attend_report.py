"""``medalign attend --report``: one attention map per finding sentence of a report, as one PNG with a
row per sentence (the sentence as the row's title, its most attended axial slice of every sequence).

Sentences come from :func:`medalign.data.reports.report_sentences` (boilerplate and context sentences
dropped); a *finding* sentence is one in which the medspaCy labeller (:func:`analyse_reports`) counts a
finding (not negated, hypothetical, historical, ...). A report with none (a normal study) shows every
sentence instead, and says so. Each map is :func:`medalign.eval.query_attention.query_map`: GLoRIA word
attention averaged over the sentence's content words, or Grad-CAM for a CLIP run.

Report text is PHI-ish: it goes into the user's own PNG only, never into a log.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medalign import api
from medalign.errors import CohortError, MedAlignError
from medalign.eval.localisation import localisation_scores, uniform_scores, upsample_map
from medalign.eval.query_attention import map_method, overlay_png, query_map, stack_png_rows
from medalign.experiments.localisation import study_inputs
from medalign.utils import atomic_write_bytes

def finding_sentences(report: str, *, all_sentences: bool = False) -> tuple[list[str], bool]:
    """(sentences to map, whether every sentence is shown because none holds a finding)."""
    from medalign.data.reports import analyse_reports, report_sentences

    sents = report_sentences(report)
    if not sents:
        raise MedAlignError("the report has no sentence to map")
    if all_sentences:
        return sents, False
    found = [s for s, lab in zip(sents, analyse_reports(sents)) if lab.findings]
    return (found, False) if found else (sents, True)


def attend_report(run: str | Path, study: str, *, text: str | None = None, out: str | None = None,
                  n_slices: int = 1, manifest: str | None = None, cache: str | None = None,
                  checkpoint: str = "best", all_sentences: bool = False, prior: bool = True) -> dict:
    """Write the one-row-per-sentence attention PNG of a report over ``study``'s image.

    ``text``: the report (default: the study's own report in the manifest). Returns dict(png, method,
    rows: one {sentence (1-based), words, slices, scores?} per row, every_sentence: True when the
    report had no finding sentence). Scores (pointing, mass, auroc vs the study's lesion mask) and the
    uniform baseline come with a mask. ``prior``: each map x the run's normative prior (as ``attend``),
    when one can be fitted."""
    model = api.load(run, checkpoint=checkpoint)
    method = map_method(model.recipe)
    if method is None:
        name = (model.config.get("recipe") or {}).get("name")
        raise MedAlignError(f"run {run} uses recipe '{name}', which gives no text attention map")
    s = study_inputs(model, study, manifest, cache, with_report=text is None)
    report = text if text is not None else s["report"]
    if not report or not report.strip():
        raise CohortError("has no report in the manifest; pass --text", study_id=study)
    sentences, every = finding_sentences(report, all_sentences=all_sentences)
    image, mask = s["image"].numpy(), s["mask"]
    has_mask = mask is not None and bool(np.asarray(mask).any())
    norm = None
    if prior:
        from medalign.eval.normative import run_prior
        from medalign.experiments.localisation import run_data

        try:
            norm = run_prior(run, *run_data(model))
        except MedAlignError:  # too few normal training studies: the attention alone
            norm = None
    rows: list[dict[str, Any]] = []
    pngs: list[bytes] = []
    titles: list[str] = []
    for i, sent in enumerate(sentences, start=1):
        m = query_map(model.recipe, image, s["sequence_mask"], sent, prior=norm)
        heat = upsample_map(m["map"], image.shape[1:])  # (D, H, W)
        png, slices = overlay_png(image, heat, sequences=list(model.sequences), orientation=s["orientation"],
                                  n_slices=n_slices, mask=mask)
        row: dict[str, Any] = {"sentence": i, "words": len(m["words"]), "slices": slices}
        if has_mask:
            row["scores"] = localisation_scores(heat, mask)
        rows.append(row)
        pngs.append(png)
        titles.append(f"{i}. {sent}")
    out_p = Path(out) if out else Path(run) / "attention" / f"{study}_report.png"
    atomic_write_bytes(out_p, stack_png_rows(pngs, titles))
    res = {"png": str(out_p), "method": method + (" x normative prior" if norm is not None else ""), "rows": rows,
           "every_sentence": every}
    if has_mask:
        res["uniform"] = uniform_scores(mask)
    return res
