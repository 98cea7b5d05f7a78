"""One evaluation path (issue 21, finding 4): for the same model, split and prompt set,
`medalign localise` reports exactly the retrieval and zero-shot numbers of `medalign evaluate`
(GLoRIA global embedding and CLIP), and where its protocol differs (global+local similarity,
generated prompts) the report page names the protocol on the row or column.

Tiny GLoRIA and CLIP runs on the 12-study cohort of tests/recipes/test_gloria.py (1 epoch)."""
from __future__ import annotations

import html as html_lib
import json
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny_runs import isolated_tiny_runs  # noqa: E402  (tiny GLoRIA + CLIP runs on the lesion cohort, shared)

N_BOOT = 40


@pytest.fixture(scope="module")
def both(tmp_path_factory) -> dict:
    """Train GLoRIA and CLIP, then `medalign evaluate` both and `medalign localise` GLoRIA vs CLIP."""
    from medalign.cli import main

    root = tmp_path_factory.mktemp("agree")
    with isolated_tiny_runs(root) as runs:
        gl, cl = runs["gloria"], runs["clip"]
        for run in (gl, cl):
            assert main(["evaluate", str(run), "--no-baselines", "--n-boot", str(N_BOOT)]) == 0
        assert main(["localise", str(gl), "--clip", str(cl), "--n-boot", str(N_BOOT), "--n-prompts", "3",
                     "--gallery", "1"]) == 0
        assert main(["report", str(gl), "--out", str(root / "report.html")]) == 0
    read = lambda p: json.loads(p.read_text(encoding="utf-8"))  # noqa: E731
    return {"ev_gloria": read(gl / "eval" / "metrics.json"), "ev_clip": read(cl / "eval" / "metrics.json"),
            "loc": read(gl / "eval" / "localisation_test.json"),
            "page": (root / "report.html").read_text(encoding="utf-8")}


def test_localise_reports_evaluate_numbers(both) -> None:
    """Whole dicts, not a few figures: per-query ranks and float similarities included, so a second
    computation (e.g. GLoRIA's float32 pair similarity) cannot agree by chance on rounded values."""
    loc = both["loc"]
    for got, ev in ((loc["gloria"]["retrieval"]["global"], both["ev_gloria"]),
                    (loc["clip"]["retrieval"], both["ev_clip"])):
        for d in ("text_to_image", "image_to_text"):
            assert got[d] == ev["retrieval"][d], d
        assert got["text_to_image"]["ci"]["R@5"] == ev["headline"]["report→image R@5"]  # the comparison-table figure
    assert loc["gloria"]["zero_shot_prompts_yaml"]["global"] == both["ev_gloria"]["zero_shot"]
    assert loc["clip"]["zero_shot_prompts_yaml"] == both["ev_clip"]["zero_shot"]
    # the other protocol really is another one: generated prompts, named as such in the results
    assert loc["prompt_set"].endswith("prompts.yaml") and loc["n_prompts_per_class"] == 3
    assert loc["gloria"]["zero_shot"]["global"]["pool"] == "mean"


def _rows(page: str, caption_start: str) -> list[list[str]]:
    """Cells (text) of the first table whose caption contains ``caption_start``."""
    i = page.index(caption_start)
    table = page[page.rindex("<table>", 0, i): page.index("</table>", i)]
    cell = lambda c: html_lib.unescape(re.sub(r"<[^>]+>", "", c)).strip()  # noqa: E731
    return [[cell(c) for c in re.findall(r"<t[dh]>(.*?)</t[dh]>", tr, re.S)]
            for tr in re.findall(r"<tr[^>]*>(.*?)</tr>", table, re.S)]


def test_page_shows_one_number_and_names_the_protocol(both) -> None:
    from medalign.eval.bootstrap import format_ci

    page, ev = both["page"], both["ev_gloria"]
    loc_rows = _rows(page, "GLoRIA vs CLIP on split")
    head = loc_rows[0]
    col_global = next(i for i, c in enumerate(head) if "GLoRIA global embedding" in c)
    col_comb = next(i for i, c in enumerate(head) if "global+local" in c)
    assert "= `medalign evaluate`" in head[col_global] and "this command only" in head[col_comb]
    by_metric = {r[0]: r for r in loc_rows[1:]}
    # the same figure on the evaluate part of the page and in the localise table
    r5 = format_ci(ev["retrieval"]["text_to_image"]["ci"]["R@5"])
    assert by_metric["text to image R@5"][col_global] == r5
    ret_rows = _rows(page, "matched by study id")
    r5_col = ret_rows[0].index("R@5")
    assert next(r for r in ret_rows if r[0] == "report → image")[r5_col] == r5
    # every zero-shot row names its prompt set; the prompts.yaml rows equal evaluate's zero-shot
    zs_rows = [r for m, r in by_metric.items() if m.startswith("zero-shot")]
    assert len(zs_rows) == 8 and all(("prompts.yaml" in r[0]) != ("generated prompts" in r[0]) for r in zs_rows)
    acc = format_ci(ev["zero_shot"]["ci"]["accuracy"])
    yaml_acc = next(r for m, r in by_metric.items() if m.startswith("zero-shot accuracy (prompts.yaml"))
    assert yaml_acc[col_global] == acc and "= `medalign evaluate`" in yaml_acc[0]
    gen_acc = next(r for m, r in by_metric.items() if m.startswith("zero-shot accuracy (generated prompts"))
    assert "this command only" in gen_acc[0]
