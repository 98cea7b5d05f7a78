"""Paraphrases of a study's report (issue 16): other reports of the same truth, drawn from the training
phrasing families on their own random streams, so the study's report and images do not change."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from medalign.data.synth import report_grammar

PARAPHRASE_STREAM = 16  # paraphrases' random streams: [seed, PARAPHRASE_STREAM, study index, draw]


def generate_paraphrases(truth: dict, stream: Sequence[int], k: int, *, exclude: Sequence[str] = ()) -> list[str]:
    """Up to ``k`` distinct further reports of ``truth`` in the training families only.

    Draw ``j`` uses ``np.random.default_rng([*stream, j])``: a stream no other part of the
    generator uses, so the study's report and images do not change. Every draw is
    ``report_grammar.generate_report(..., heldout=False)`` (standard or radiologist family, never the held-out
    one, which stays unseen in training). Draws equal to the report (``exclude``) or to an
    earlier paraphrase are skipped; after ``4 * k`` draws the list may be shorter than ``k``
    (a normal study's terse "NAD." has few wordings).
    """
    out: list[str] = []
    for j in range(4 * max(0, int(k))):
        if len(out) >= k:
            break
        text = report_grammar.generate_report(truth, np.random.default_rng([*stream, j]), heldout=False)
        if text not in out and text not in exclude:
            out.append(text)
    return out
