"""Service throughput and hot reload: batched + cached text encoding, bounded uploads, and a
running app that answers for a study added by ``index add`` after it started."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from serve_fakes import FakeModel, make_cohort

from medalign.serve.batching import BatchingTextEncoder, LRUCache, ServerBusy, UploadGate


def _wait_for(cond, what: str, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds  # a bound on waiting, not a timing assertion
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.01)


def test_concurrent_queries_share_one_encoder_call():
    model = FakeModel()
    calls: list[list[str]] = []
    release = threading.Event()

    def encode(texts):
        calls.append(list(texts))
        if len(calls) == 1:
            release.wait(10)  # hold the worker so the other 15 queries queue up meanwhile
        return model.encode_text(texts)

    enc = BatchingTextEncoder(encode, window_s=0.0, cache_size=0)
    texts = [f"query number {i}" for i in range(16)]
    out: dict[int, np.ndarray] = {}
    threads = [threading.Thread(target=lambda i=i: out.__setitem__(i, enc.encode(texts[i]))) for i in range(16)]
    threads[0].start()
    _wait_for(lambda: len(calls) == 1, "the first batch")
    for t in threads[1:]:
        t.start()
    _wait_for(lambda: enc._q.qsize() == 15, "15 queued queries")
    release.set()
    for t in threads:
        t.join(10)
    assert [len(c) for c in calls] == [1, 15] and enc.batches == 2
    for i in range(16):  # each caller got its own text's embedding
        np.testing.assert_allclose(out[i], model.encode_text([texts[i]])[0], rtol=1e-5)


def test_repeated_query_is_served_from_cache_and_lru_evicts_oldest():
    model = FakeModel()
    n_calls = []
    enc = BatchingTextEncoder(lambda t: (n_calls.append(1), model.encode_text(t))[1], window_s=0.0, cache_size=8)
    a = enc.encode("acute infarct")
    b = enc.encode("acute infarct")
    assert len(n_calls) == 1 and b is a and not a.flags.writeable
    lru = LRUCache(2)
    for k in "abc":
        lru.put(k, np.zeros(1))
    assert lru.get("a") is None and lru.get("b") is not None and len(lru) == 2


def test_encoder_failure_reaches_the_caller_and_the_worker_survives():
    def encode(texts):
        if "boom" in texts:
            raise RuntimeError("encoder broke")
        return np.ones((len(texts), 3))

    enc = BatchingTextEncoder(encode, window_s=0.0)
    with pytest.raises(RuntimeError, match="encoder broke"):
        enc.encode("boom")
    assert enc.encode("fine").tolist() == [1.0, 1.0, 1.0]


def test_upload_gate_runs_one_queues_one_refuses_the_rest():
    gate = UploadGate(max_running=1, max_waiting=1)
    inside, release, order = threading.Event(), threading.Event(), []

    def first():
        with gate.slot():
            order.append("first")
            inside.set()
            release.wait(10)

    def second():
        with gate.slot():
            order.append("second")

    t1, t2 = threading.Thread(target=first), threading.Thread(target=second)
    t1.start()
    inside.wait(10)
    t2.start()
    _wait_for(lambda: gate.admitted == 2, "the second upload to queue")
    with pytest.raises(ServerBusy, match="retry"):
        with gate.slot():
            pass
    release.set()
    t1.join(10)
    t2.join(10)
    assert order == ["first", "second"] and gate.admitted == 0


@pytest.fixture()
def live(tmp_path):
    from fastapi.testclient import TestClient

    from medalign.index.build import build_index
    from medalign.serve.app import create_app

    model = FakeModel()
    build_index(model, make_cohort(tmp_path / "c1", n=6), tmp_path / "idx")
    app = create_app(tmp_path / "idx", model, reload_s=0.0)
    return app, TestClient(app), model, tmp_path


def test_running_server_answers_for_a_study_added_after_it_started(live):
    from medalign.index.build import add_to_index

    app, client, model, tmp = live
    v1 = client.get("/health").json()["version"]
    assert client.get("/study/S100").status_code == 404
    held = app.state.serve.current_store()  # as an in-flight request holds it

    add_to_index(tmp / "idx", model, make_cohort(tmp / "c2", n=2, start=100))
    _wait_for(lambda: client.get("/health").json()["version"] != v1, "the server to load the new version")
    assert client.get("/health").json()["n_studies"] == 8
    assert client.get("/study/S100").json()["label"] == "infarct"
    report = client.get("/study/S101").json()["report"]
    r = client.post("/search/text", json={"text": report, "k": 1, "target": "report"}).json()
    assert r["results"][0]["study_id"] == "S101"
    # the version an in-flight request began with still answers, though its folder is gone
    assert held.row("S100") is None and not (tmp / "idx" / v1).exists()
    assert held.record(held.search(held.image_vector(0), 1)[0][0])["study_id"] == "S000"


def test_version_from_another_model_is_not_swapped_in(live):
    import json

    app, client, model, tmp = live
    state = app.state.serve
    v1 = state.store.version
    vdir = tmp / "idx" / v1
    meta = json.loads((vdir / "meta.json").read_text())
    other = tmp / "idx" / "v0099"
    import shutil

    shutil.copytree(vdir, other)
    (other / "meta.json").write_text(json.dumps({**meta, "model_id": "someone-else"}))
    (tmp / "idx" / "CURRENT").write_text("v0099\n")
    assert state.reload() is False and "someone-else" in state.reload_error
    assert client.get("/health").json()["version"] == v1
