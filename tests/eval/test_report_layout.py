"""Issue 21, findings 3 and 6 for the report page: figures and tables numbered once, from 1; tables
in a scrolling box (readable at 1280 px); *italic* rendered, not literal asterisks; captions that
say what an image is; every run given appears in the comparison table; an earlier page is not
overwritten silently; the zero-shot table has the constant-guess reference."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from medalign.cli import main
from medalign.eval.report import COMPARISON, build_report, md_to_html
from medalign.eval.run import evaluate_saved

from test_report import make_fake_run  # same folder (pytest puts it on sys.path)


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("layout")
    good = make_fake_run(root, "run_good", noise=0.05, seed=0, extras=True)
    evaluate_saved(good, n_boot=20)
    extra = json.loads((good / "report_extras" / "gloria.json").read_text())
    extra["captions"] = {"extra_fig/attn.png": "study t001: attention of the word 'infarct'"}
    (good / "report_extras" / "gloria.json").write_text(json.dumps(extra))
    gloria_only = root / "run_gloria"  # trained and localised but never evaluated: extras only
    (gloria_only / "report_extras").mkdir(parents=True)
    (gloria_only / "checkpoints").mkdir()
    (gloria_only / "config.yaml").write_text("recipe:\n  name: gloria\n")
    gimp = root / "run_gimp"  # an experiment folder: results only
    (gimp / "report_extras").mkdir(parents=True)
    (gimp / "report_extras" / "gimp.json").write_text(json.dumps({"title": "GiMP", "markdown": "rows"}))
    shutil.copy(good / "report_extras" / "gloria.json", gloria_only / "report_extras" / "gloria.json")
    html_p, _ = build_report([good, gloria_only, gimp], root / "report.html", thumbnails=False)
    return root, html_p.read_text(encoding="utf-8")


def test_figures_and_tables_numbered_once_from_one(page) -> None:
    _, html = page
    figs = [int(n) for n in re.findall(r"<figcaption>Fig\. (\d+) — ", html)]
    tables = [int(n) for n in re.findall(r"<caption>Table (\d+) — ", html)]
    assert figs == list(range(1, len(figs) + 1)) and len(figs) >= 7
    assert tables == list(range(1, len(tables) + 1)) and len(tables) >= 5
    assert "Fig. 5 — loss" not in html and html.count("Table 2 —") == 1


def test_tables_scroll_and_markdown_italics(page) -> None:
    _, html = page
    assert html.count("<table>") == html.count('<div class="tw"><table>') > 0
    assert ".tw{overflow-x:auto" in html
    assert md_to_html("*global+local* and **b** and 2*3*4") == \
        "<p><i>global+local</i> and <b>b</b> and 2*3*4</p>"


def test_captions_say_what_the_image_is(page) -> None:
    _, html = page
    caps = re.findall(r"<figcaption>(.*?)</figcaption>", html)
    assert not any(c.rstrip().endswith(".png") for c in caps)
    assert any("attention of the word &#x27;infarct&#x27;" in c for c in caps)


def test_every_run_is_in_the_comparison(page) -> None:
    _, html = page
    comp = html.split(f">{COMPARISON}</h2>")[1].split("</table>")[0]
    assert "run_good" in comp and "run_gloria: not evaluated (run `medalign evaluate" in comp
    assert "run_gimp: an experiment without image-text embeddings" in comp
    assert "prompts.yaml" in comp  # the protocol is named
    zs = html.split(">Zero-shot classification</h3>")[1].split("</table>")[0]
    assert "constant: always" in zs


def test_report_refuses_to_overwrite(page, tmp_path, capsys) -> None:
    root, _ = page
    out = tmp_path / "r.html"
    out.write_text("an earlier report")
    assert main(["report", str(root / "run_good"), "--out", str(out), "--no-thumbnails"]) == 2
    assert "--overwrite" in capsys.readouterr().err and out.read_text() == "an earlier report"
    assert main(["report", str(root / "run_good"), "--out", str(out), "--no-thumbnails", "--overwrite"]) == 0
