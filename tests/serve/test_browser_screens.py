"""Issue 21, "done when": a screenshot of the report and of the web page in Chromium shows the L/R
markers, and a one-sided lesion on the side the display convention puts it.

The studies are the lesion volumes of tests/core/test_display.py: a bright lesion in the patient's
LEFT anterior quadrant, stored as RAS, LPS and LAS NIfTI files. Radiological display (the default)
puts it on the viewer's RIGHT, top half, with "R" at the viewer's left edge and "L" at the right.
Each image element is screenshotted by headless Chromium (device scale 2, so one-pixel marker
strokes survive) and read back: yellow marker pixels at both mid-height edges and nowhere in the
middle, the letter at each edge told apart by its shape (R has a bowl at its top right, L only a
foot at its bottom), and the bright lesion in the top-right of the image.
"""
from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

TESTS = Path(__file__).resolve().parents[1]
for sub in ("core", "eval"):  # helpers of the display and report tests, reused rather than copied
    if str(TESTS / sub) not in sys.path:
        sys.path.insert(0, str(TESTS / sub))

from test_browser import _save, _wait_decoded, live_server, page, pytestmark  # noqa: E402,F401  (fixtures reused)
from test_display import _side, _write  # noqa: E402
from test_report import make_fake_run  # noqa: E402

CODES = ("RAS", "LPS", "LAS")
WANT_SIDE = ("right", "top")  # patient-left anterior lesion, radiological display


def _yellow(rgb: np.ndarray) -> np.ndarray:
    """Marker pixels: yellow of any brightness (antialiased text on the black box); grey image pixels
    have r == g == b and never count."""
    rgb = rgb.astype(np.int32)
    return (np.minimum(rgb[..., 0], rgb[..., 1]) - rgb[..., 2] > 60) & (np.abs(rgb[..., 0] - rgb[..., 1]) < 60)


def _letter(mask: np.ndarray) -> str:
    """'R' or 'L' from the yellow pixels of one marker: R has ink in the right half of its box on
    almost every row (bowl, then leg), L only on the rows of its foot."""
    rows, cols = np.nonzero(mask)
    if len(rows) < 4:
        return "none"
    glyph = mask[rows.min(): rows.max() + 1, cols.min(): cols.max() + 1]
    h, w = glyph.shape
    right_rows = glyph[:, (w + 1) // 2:].any(axis=1).mean()  # share of rows with ink in the right half
    return "R" if right_rows > 0.5 else "L"


def _markers(rgb: np.ndarray) -> tuple[str, str, int]:
    """(letter at the viewer's left edge, letter at the right edge, yellow pixels in the middle half)."""
    y = _yellow(rgb)
    h, w = y.shape
    edge = max(3, w // 6)
    band = slice(int(0.3 * h), int(0.7 * h))  # the markers sit at mid-height
    return _letter(y[band, :edge]), _letter(y[band, w - edge:]), int(y[:, w // 4: w - w // 4].sum())


def _shot(locator) -> np.ndarray:
    """What Chromium draws for one element, as (H, W, 3) uint8."""
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(locator.screenshot())).convert("RGB"))


def _check_panel(rgb: np.ndarray, what: str) -> None:
    left, right, middle = _markers(rgb)
    assert (left, right) == ("R", "L"), f"{what}: markers read {left!r} at the viewer's left, {right!r} at the right"
    assert middle == 0, f"{what}: {middle} marker-coloured pixels in the middle of the image"
    assert _side(rgb) == WANT_SIDE, f"{what}: the patient-left lesion is shown {_side(rgb)}, want {WANT_SIDE}"


@pytest.fixture(scope="module")
def sharp_page(page):
    """A second tab of the same headless Chromium (test_browser's fixture), at device scale 2."""
    pg = page.context.browser.new_page(viewport={"width": 1280, "height": 900}, device_scale_factor=2)
    pg.set_default_timeout(15_000)
    yield pg
    pg.close()


@pytest.fixture(scope="module")
def lesion_cohort(tmp_path_factory) -> Path:
    """15 studies (ids t000..t014, the fake run's test ids), each a copy of one of the three files."""
    root = tmp_path_factory.mktemp("screens")
    paths = {code: _write(root, code) for code in CODES}
    rows = [{"study_id": f"t{i:03d}", "patient_id": f"p{i:03d}", "split": "test", "label": "tumor",
             "report": f"Left frontal mass, stored {CODES[i % 3]}.",
             "image_flair": str(paths[CODES[i % 3]].relative_to(root))} for i in range(15)]
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root / "manifest.csv"


@pytest.fixture(scope="module")
def served_app(tmp_path_factory, fake_model, lesion_cohort, monkeypatch_module):
    """Overrides conftest's app for this module: an index of the lesion cohort (thumbnails from raw files)."""
    from medalign.index.build import build_index
    from medalign.serve.app import create_app

    out = tmp_path_factory.mktemp("screens_idx") / "index"
    build_index(fake_model, lesion_cohort, out)
    return create_app(out, fake_model, max_file_bytes=2 << 20, max_request_bytes=4 << 20)


@pytest.fixture(scope="module")
def monkeypatch_module():
    """The default (radiological) convention whatever the caller's $MEDALIGN_DISPLAY."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MEDALIGN_DISPLAY", raising=False)
        yield mp


@pytest.fixture(scope="module")
def report_html(tmp_path_factory, lesion_cohort, monkeypatch_module) -> Path:
    """The report of a fake run (tests/eval/test_report.py) whose test studies are the lesion cohort's,
    with thumbnails from its preprocessed cache."""
    from medalign.data.cache import preprocess_cohort
    from medalign.data.imaging import PreprocessConfig
    from medalign.eval.report import build_report
    from medalign.eval.run import evaluate_saved

    root = tmp_path_factory.mktemp("screens_report")
    cfg = PreprocessConfig(sequences=("flair",), shape=(4, 16, 16), register=False, reg_spacing=3.0)
    preprocess_cohort(lesion_cohort, cfg, root / "cache", workers=1, progress=False)
    run = make_fake_run(root, "run", noise=0.05, seed=0)
    evaluate_saved(run, n_boot=20)
    mp = run / "eval" / "metrics.json"
    m = json.loads(mp.read_text(encoding="utf-8"))
    m["cache_dir"] = str(root / "cache")  # what `medalign evaluate` records; the report reads its thumbnails there
    mp.write_text(json.dumps(m), encoding="utf-8")
    html_p, _ = build_report([run], root / "report.html")
    return html_p


def test_report_thumbnails_show_markers_and_the_lesion_side(sharp_page, report_html, tmp_path):
    sharp_page.goto(report_html.as_uri())
    thumbs = sharp_page.locator("img.thumb")
    assert thumbs.count() >= 15, "the report shows no study thumbnails"
    _wait_decoded(thumbs)
    shot = _save(sharp_page, tmp_path, "report_markers.png")
    assert shot.read_bytes()[:4] == b"\x89PNG"
    seen = set()
    for i in range(thumbs.count()):
        img = thumbs.nth(i)
        sid = img.get_attribute("alt")
        if sid in seen:
            continue
        seen.add(sid)
        img.scroll_into_view_if_needed()
        _check_panel(_shot(img), f"report thumbnail of {sid} ({CODES[int(sid[1:]) % 3]} file)")
    assert len(seen) == 15


def test_web_page_thumbnails_show_markers_and_the_lesion_side(sharp_page, live_server, tmp_path):
    sharp_page.goto(live_server + "/")
    sharp_page.fill("#k", "15")
    sharp_page.fill("#query", "left frontal mass")
    sharp_page.click("#search")
    sharp_page.wait_for_selector("#results .card")
    imgs = sharp_page.locator("#results img")
    assert imgs.count() == 15  # one flair thumbnail per card, every study
    _wait_decoded(imgs)
    _save(sharp_page, tmp_path, "web_markers.png")
    codes = set()
    for i in range(imgs.count()):
        img = imgs.nth(i)
        sid = img.locator("xpath=ancestor::article").get_attribute("data-study-id")
        img.scroll_into_view_if_needed()
        codes.add(CODES[int(sid[1:]) % 3])
        _check_panel(_shot(img), f"web thumbnail of {sid} ({CODES[int(sid[1:]) % 3]} file)")
    assert codes == set(CODES), f"the results cover only {codes}"
