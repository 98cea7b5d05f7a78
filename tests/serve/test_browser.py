"""End to end: the real uvicorn server on a loopback port, the page driven in headless chromium."""
from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

playwright_sync = pytest.importorskip("playwright.sync_api")
expect = playwright_sync.expect

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} not installed (apt-get install chromium)"),
]


def _wait_decoded(images, timeout_s: float = 20.0) -> None:
    """Every image decoded by the browser. Polled from Python: the page's CSP (no 'unsafe-eval') forbids
    Playwright's string predicates (wait_for_function), which is the point of the CSP."""
    deadline = time.monotonic() + timeout_s
    while True:
        if all(img.evaluate("i => i.complete && i.naturalWidth > 0") for img in images.all()):
            return
        assert time.monotonic() < deadline, "thumbnails not decoded in time"
        time.sleep(0.1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def live_server(served_app):
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(served_app, host="127.0.0.1", port=port, log_level="warning",
                                           access_log=False, lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("uvicorn did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def page(live_server):
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        pg = browser.new_page(viewport={"width": 1280, "height": 900})
        pg.set_default_timeout(15_000)
        pg.goto(live_server + "/")
        yield pg
        browser.close()


def _save(page, tmp_path: Path, name: str) -> Path:
    out = tmp_path / name
    page.screenshot(path=str(out), full_page=True)
    keep = os.environ.get("MEDALIGN_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(out, Path(keep) / name)
    return out


def test_text_query_shows_cards_with_thumbnails(page, tmp_path):
    expect(page.locator("#status")).to_contain_text("12 studies")
    page.fill("#k", "6")
    page.fill("#query", "acute infarct with restricted diffusion")
    page.click("#search")
    page.wait_for_selector("#results .card")
    cards = page.locator("#results .card")
    assert cards.count() == 6
    first = cards.nth(0)
    assert first.get_attribute("data-study-id").startswith("S")
    assert first.locator(".label").inner_text() in {"infarct", "tumor", "hemorrhage", "normal", "others"}
    assert "Case S" in first.locator(".report").inner_text()
    float(first.locator(".score").inner_text())
    # every card shows one mid-axial thumbnail per sequence, actually decoded by the browser
    expect(page.locator("#results img")).to_have_count(12)
    _wait_decoded(page.locator("#results img"))
    shot = _save(page, tmp_path, "search_text.png")
    assert shot.stat().st_size > 10_000 and shot.read_bytes()[:4] == b"\x89PNG"


def test_click_card_searches_from_that_study(page, tmp_path):
    page.fill("#query", "acute infarct with restricted diffusion")
    page.click("#search")
    page.wait_for_selector("#results .card")
    sid = page.locator("#results .card").nth(1).get_attribute("data-study-id")
    page.locator("#results .card").nth(1).click()
    expect(page.locator("#summary")).to_contain_text(f"similar to {sid}")
    ids = [c.get_attribute("data-study-id") for c in page.locator("#results .card").all()]
    assert ids and sid not in ids
    assert page.locator("#zeroshot .bar").count() == 5
    _save(page, tmp_path, "search_study.png")


def test_upload_one_nifti_per_sequence(page, cohort, tmp_path):
    files = [str(cohort.parent / "S002" / "dwi.nii.gz"), str(cohort.parent / "S002" / "flair.nii.gz")]
    page.set_input_files("#files", files)
    assert page.locator("#file-list li").count() == 2
    page.click("#upload")
    expect(page.locator("#summary")).to_contain_text("Uploaded case")
    assert page.locator("#results .card").first.get_attribute("data-study-id") == "S002"
    assert "Zero-shot" in page.locator("#zeroshot").inner_text()
    _save(page, tmp_path, "search_upload.png")


def test_upload_with_a_sequence_the_model_does_not_read(page, cohort, tmp_path):
    """The extra series is skipped, not refused, and the page says which one."""
    import shutil

    t1 = tmp_path / "t1.nii.gz"
    shutil.copy(cohort.parent / "S002" / "flair.nii.gz", t1)
    page.reload()  # a fresh file list (the page is shared by this module's tests)
    page.set_input_files("#files", [str(cohort.parent / "S002" / "dwi.nii.gz"), str(t1)])
    assert page.locator("#file-list li").count() == 2
    page.click("#upload")
    expect(page.locator("#summary")).to_contain_text("skipped, not read by this model: t1")
