"""``medalign attend --report``: one map per finding sentence, one PNG row per sentence, on tiny
trained GLoRIA and CLIP runs (tests/tiny_runs.py)."""
from __future__ import annotations

import io
import logging
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny_runs import isolated_tiny_runs  # noqa: E402

REPORT = ("Clinical details: left weakness. Findings: There is an acute infarct in the left hemisphere "
          "with restricted diffusion. No haemorrhage. Impression: Acute left hemispheric infarct.")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("attend_report")
    with isolated_tiny_runs(root) as runs:
        yield runs


def panel_rows(png: Path) -> int:
    """Bands of pixel rows that are mostly image (panels), not white space or title text: one per row of
    the figure, whatever the titles say."""
    from PIL import Image

    g = np.asarray(Image.open(png).convert("L"), dtype=np.float64)  # (H, W)
    busy = (g < 245).mean(1) > 0.7  # (H,) rows mostly covered by non-white pixels (text lines never are)
    runs, n = [], 0
    for b in busy:
        if b:
            n += 1
        elif n:
            runs, n = runs + [n], 0
    runs += [n] if n else []
    return sum(r >= 20 for r in runs)  # a panel is ~150 px high


def test_report_text_gives_one_row_per_finding_sentence(runs, tmp_path, caplog):
    from medalign.cli import main

    out = tmp_path / "report.png"
    caplog.set_level(logging.DEBUG)
    assert main(["attend", str(runs["gloria"]), "--study", "s00", "--report", "--text", REPORT, "--out", str(out)]) == 0
    # the context sentence is dropped, the negated one is not a finding: 2 rows
    assert out.read_bytes()[:4] == b"\x89PNG" and panel_rows(out) == 2
    assert "hemispheric" not in caplog.text and "weakness" not in caplog.text  # report text never logged

    every = tmp_path / "every.png"
    assert main(["attend", str(runs["gloria"]), "--study", "s00", "--report", "--all-sentences", "--text", REPORT,
                 "--out", str(every)]) == 0
    assert panel_rows(every) == 3  # + "No haemorrhage."; the context sentence stays out


def test_own_report_from_manifest_with_scores(runs):
    from medalign.experiments.attend_report import attend_report

    res = attend_report(runs["gloria"], "s00")  # "Acute infarct in the left hemisphere."
    # the run's normative prior (fitted on its normal training studies) grounds the maps by default
    assert res["method"] == "word attention x normative prior" and not res["every_sentence"]
    assert (runs["gloria"] / "normative.npz").is_file()
    plain = attend_report(runs["gloria"], "s00", out=str(runs["gloria"] / "plain.png"), prior=False)
    assert plain["method"] == "word attention" and plain["rows"][0]["scores"] != res["rows"][0]["scores"]
    assert len(res["rows"]) == 1 and panel_rows(Path(res["png"])) == 1
    assert Path(res["png"]) == runs["gloria"] / "attention" / "s00_report.png"
    row = res["rows"][0]
    assert row["words"] == 4  # acute infarct left hemisphere ("in", "the", "." dropped)
    assert set(row["scores"]) == {"pointing", "mass", "auroc"} and 0 <= row["scores"]["mass"] <= 1
    # a normal study's report has no finding sentence: every sentence is shown, and the result says so
    normal = attend_report(runs["gloria"], "s03", out=str(runs["gloria"] / "n.png"))
    assert normal["every_sentence"] and len(normal["rows"]) == 1 and "scores" not in normal["rows"][0]


def test_clip_run_draws_grad_cam_rows(runs, tmp_path):
    from PIL import Image

    from medalign.experiments.attend_report import attend_report

    res = attend_report(runs["clip"], "s00", text=REPORT, out=str(tmp_path / "clip.png"), n_slices=2, prior=False)
    assert res["method"] == "grad-cam" and len(res["rows"]) == 2
    assert all(len(r["slices"]) == 2 for r in res["rows"])
    assert panel_rows(tmp_path / "clip.png") == 4  # 2 sentences x 2 slices
    rgb = np.asarray(Image.open(io.BytesIO((tmp_path / "clip.png").read_bytes())).convert("RGB")).astype(int)
    assert ((rgb.max(-1) - rgb.min(-1)) > 60).mean() > 0.2  # the heat map is drawn: colour, not grey


def test_bad_requests_are_one_line_errors(runs, tmp_path):
    from medalign.cli import main

    out = str(tmp_path / "x.png")
    assert main(["attend", str(runs["gloria"]), "--study", "nope", "--report", "--out", out]) == 2
    assert main(["attend", str(runs["gloria"]), "--study", "s00", "--report", "--text", " ", "--out", out]) == 2
    assert main(["attend", str(runs["gloria"]), "--study", "s00", "--report", "--text", "Indication: headache.",
                 "--out", out]) == 2  # nothing left once the context sentence is dropped
    assert not Path(out).exists()
