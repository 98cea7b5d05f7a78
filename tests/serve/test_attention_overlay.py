"""``POST /attention/{study_id}``: the query's attention overlay on tiny trained GLoRIA and CLIP runs
(tests/tiny_runs.py), in process (TestClient) and on a result card in headless Chromium."""
from __future__ import annotations

import io
import json
import logging
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny_runs import isolated_tiny_runs  # noqa: E402

QUERY = "acute infarct in the left hemisphere"
TOKEN = "attention-token-0123456789"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """Tiny runs, an index per run (built from the cache) and each run's model."""
    import medalign
    from medalign.index.build import build_index

    root = tmp_path_factory.mktemp("attention")
    with isolated_tiny_runs(root) as r:
        for name in ("gloria", "clip"):
            r[f"{name}_model"] = medalign.load(r[name])
            r[f"{name}_index"] = root / f"index_{name}"
            build_index(r[f"{name}_model"], r["manifest"], r[f"{name}_index"], cache=r["cache"], run_dir=str(r[name]))
        yield r


def _app(runs: dict, name: str, **kw):
    from medalign.serve.app import create_app

    return create_app(runs[f"{name}_index"], runs[f"{name}_model"], **kw)


@pytest.fixture(scope="module")
def gloria(runs):
    return TestClient(_app(runs, "gloria"))


def coloured_fraction(png: bytes) -> float:
    """Share of pixels that are clearly coloured (not grey, not white): the heat map, not the image."""
    from PIL import Image

    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    return float(((rgb.max(-1) - rgb.min(-1)) > 60).mean())


def test_gloria_overlay_png(gloria):
    assert gloria.get("/health").json()["attention"] is True
    r = gloria.post("/attention/s00", json={"text": QUERY})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.content[:4] == b"\x89PNG" and r.headers["cache-control"] == "no-store"
    assert r.headers["x-attention-method"] == "word attention"
    assert [int(z) for z in r.headers["x-attention-slices"].split(",")] in ([z] for z in range(4))
    assert coloured_fraction(r.content) > 0.2
    three = gloria.post("/attention/s00", json={"text": QUERY, "slices": 3})
    assert len(three.headers["x-attention-slices"].split(",")) == 3 and three.content != r.content
    assert "/attention/{study_id}" in gloria.get("/openapi.json").json()["paths"]


def test_run_with_a_normative_prior_serves_the_grounded_map(runs, tmp_path):
    """A run holding RUN/normative.npz (written by `medalign localise`/`attend`) serves word attention x prior."""
    import shutil

    import medalign
    from medalign.eval.normative import run_prior

    run = tmp_path / "gloria_with_prior"
    shutil.copytree(runs["gloria"], run)
    prior = run_prior(run, runs["manifest"], runs["cache"])
    assert (run / "normative.npz").is_file() and prior.n >= 2
    from medalign.serve.app import create_app

    c = TestClient(create_app(runs["gloria_index"], medalign.load(run)))
    r = c.post("/attention/s00", json={"text": QUERY})
    assert r.status_code == 200 and r.headers["x-attention-method"] == "word attention x normative prior"
    assert coloured_fraction(r.content) > 0.05
    plain = TestClient(_app(runs, "gloria")).post("/attention/s00", json={"text": QUERY})
    assert plain.headers["x-attention-method"] == "word attention" and plain.content != r.content


def test_clip_overlay_is_grad_cam(runs):
    c = TestClient(_app(runs, "clip"))
    r = c.post("/attention/s05", json={"text": QUERY})
    assert r.status_code == 200 and r.headers["x-attention-method"] == "grad-cam"
    assert coloured_fraction(r.content) > 0.2


def test_second_request_is_served_from_the_cache(runs, monkeypatch):
    import medalign.serve.attention as attention

    calls = []
    real = attention.render_overlay

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(attention, "render_overlay", counting)
    c = TestClient(_app(runs, "gloria"))
    first = c.post("/attention/s02", json={"text": QUERY})
    again = c.post("/attention/s02", json={"text": "  " + QUERY + " "})  # the same query, padded
    assert first.status_code == again.status_code == 200 and len(calls) == 1
    assert again.content == first.content and again.headers["x-overlay-cache"] == "memory"
    assert first.headers["x-overlay-cache"] == "computed"
    assert c.post("/attention/s02", json={"text": "tumour"}).status_code == 200 and len(calls) == 2
    assert c.post("/attention/s05", json={"text": QUERY}).status_code == 200 and len(calls) == 3


def test_disk_tier_survives_a_restart(runs, tmp_path):
    d = tmp_path / "overlays"
    a = TestClient(_app(runs, "gloria", overlay_dir=d)).post("/attention/s01", json={"text": QUERY})
    assert a.headers["x-overlay-cache"] == "computed" and len(list(d.glob("*.png"))) == 1
    assert QUERY.split()[1] not in "".join(p.name for p in d.iterdir())  # named by a hash, not the text
    b = TestClient(_app(runs, "gloria", overlay_dir=d)).post("/attention/s01", json={"text": QUERY})
    assert b.headers["x-overlay-cache"] == "disk" and b.content == a.content


def test_bad_requests(gloria):
    assert gloria.post("/attention/S999", json={"text": QUERY}).status_code == 404  # not in the index
    assert gloria.post("/attention/..%2Fetc", json={"text": QUERY}).status_code in (404, 422)
    for body in ({"text": ""}, {"text": "   "}, {"text": "x" * 2001}, {}, {"text": QUERY, "slices": 4},
                 {"text": QUERY, "slices": 0}):
        r = gloria.post("/attention/s00", json=body)
        assert r.status_code == 422, body
        assert "xxxx" not in r.text  # the 422 never echoes the input
    assert gloria.get("/attention/s00").status_code == 405  # never in a URL


def test_study_without_a_volume_is_a_clear_404(runs, tmp_path):
    from medalign.data.cache import INDEX

    cache = tmp_path / "cache"
    shutil.copytree(runs["cache"], cache)
    idx = json.loads((cache / INDEX).read_text())
    del idx["entries"]["s04"]
    (cache / INDEX).write_text(json.dumps(idx))
    c = TestClient(_app(runs, "gloria", volumes=cache))
    r = c.post("/attention/s04", json={"text": QUERY})
    assert r.status_code == 404 and "not in the preprocessed cohort cache" in r.json()["detail"]
    assert c.post("/attention/s00", json={"text": QUERY}).status_code == 200

    none = TestClient(_app(runs, "gloria", volumes=tmp_path / "nothing"))
    assert none.get("/health").json()["attention"] is False
    r = none.post("/attention/s00", json={"text": QUERY})
    assert r.status_code == 404 and "preprocessed volumes" in r.json()["detail"]


def test_model_without_maps_is_501(served_app):
    c = TestClient(served_app)  # the fake model of tests/serve_fakes.py: no recipe
    assert c.get("/health").json()["attention"] is False
    r = c.post("/attention/S001", json={"text": QUERY})
    assert r.status_code == 501 and "no attention maps" in r.json()["detail"]


def test_token_is_required_and_query_never_logged(runs, caplog):
    secret = "Zebra-unique-phrase infarct 4711"
    c = TestClient(_app(runs, "gloria", token=TOKEN))
    caplog.set_level(logging.DEBUG)
    assert c.post("/attention/s00", json={"text": secret}).status_code == 401
    bad = {"Authorization": "Bearer " + "x" * len(TOKEN)}
    assert c.post("/attention/s00", json={"text": secret}, headers=bad).status_code == 401
    ok = c.post("/attention/s00", json={"text": secret}, headers={"Authorization": "Bearer " + TOKEN})
    assert ok.status_code == 200
    server = [r.getMessage() for r in caplog.records if not r.name.startswith("httpx")]  # not the test client's
    assert not [m for m in server if "Zebra" in m or "s00" in m]
    assert any("/attention/{study_id}" in m for m in server)  # the route template is logged, nothing else


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_fuzzed_requests_never_fail_the_server(gloria, mode):
    """Schema-driven inputs (schemathesis, as tests/serve/test_fuzz.py) for this route: never a 5xx."""
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_asgi("/openapi.json", gloria.app)
    op = next(r.ok() for r in schema.get_all_operations() if r.ok().label == "POST /attention/{study_id}")
    seen = []

    @given(case=op.as_strategy(generation_mode=GenerationMode(mode)))
    @settings(max_examples=15, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def run(case):
        status = case.call().status_code
        seen.append(status)
        assert status < 500, (case.formatted_path, status)

    run()
    assert seen


# ---------------------------------------------------------------------------- the page, in Chromium
@pytest.fixture(scope="module")
def browser_page(runs):
    """The GLoRIA app on a loopback port (uvicorn thread) and a headless Chromium page on it."""
    tb = pytest.importorskip("test_browser")  # its Chromium settings and helpers (skips without playwright)
    if not Path(tb.CHROMIUM).exists():
        pytest.skip(f"{tb.CHROMIUM} not installed")
    import uvicorn
    from playwright.sync_api import sync_playwright

    port = tb._free_port()
    server = uvicorn.Server(uvicorn.Config(_app(runs, "gloria"), host="127.0.0.1", port=port, log_level="warning",
                                           access_log=False, lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=tb.CHROMIUM, args=tb.CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(20_000)
            page.goto(f"http://127.0.0.1:{port}/")
            yield page, tb
            browser.close()
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.mark.browser
def test_card_toggle_shows_a_coloured_overlay(browser_page, tmp_path):
    page, tb = browser_page
    tb.expect(page.locator("#status")).to_contain_text("12 studies")  # health read: the page knows maps exist
    page.fill("#k", "4")
    page.fill("#query", QUERY)
    page.click("#search")
    page.wait_for_selector("#results .card")
    card = page.locator("#results .card").first
    sid = card.get_attribute("data-study-id")
    toggle = card.locator(".attn-toggle")
    assert toggle.inner_text() == "show attention"
    toggle.click()
    overlay = card.locator(".overlay-box img")
    tb._wait_decoded(overlay)
    tb.expect(card.locator(".thumbs")).to_be_hidden()
    tb.expect(card.locator(".overlay-box figcaption")).to_contain_text("word attention")
    assert toggle.get_attribute("aria-pressed") == "true"
    assert "similar to" not in page.locator("#summary").inner_text()  # the toggle did not search from the card
    shot = overlay.screenshot()  # what the browser actually painted
    assert coloured_fraction(shot) > 0.2, "no heat map visible on the card"
    tb._save(page, tmp_path, "attention_card.png")
    toggle.click()  # back to the thumbnails
    tb.expect(card.locator(".overlay-box")).to_be_hidden()
    tb.expect(card.locator(".thumbs")).to_be_visible()
    assert card.get_attribute("data-study-id") == sid
