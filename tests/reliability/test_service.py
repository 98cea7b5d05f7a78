"""Finding 5: the service checks token, then size, before reading a body; 422s never echo input;
unknown Host headers are refused; security headers on every response; no CDN docs; no blank
tokens; upload errors do not reveal server paths."""
from __future__ import annotations

import asyncio
import json

import pytest
from fastapi.testclient import TestClient
from serve_fakes import FakeModel

from medalign.errors import CohortError, MedAlignError
from medalign.serve.app import create_app
from medalign.serve.security import check_bind

TOKEN = "t" * 32


def _asgi(app, method: str, path: str, headers: dict[str, str], body_size: int) -> tuple[int, int, bytes]:
    """Call the ASGI app directly; returns (status, body chunks the app pulled, response body)."""
    pulled = {"n": 0}
    chunk = b"x" * (1 << 20)
    n_chunks = max(1, body_size // len(chunk))

    async def receive():
        pulled["n"] += 1
        return {"type": "http.request", "body": chunk, "more_body": pulled["n"] < n_chunks}

    out = {"status": None, "body": b""}

    async def send(msg):
        if msg["type"] == "http.response.start":
            out["status"] = msg["status"]
        elif msg["type"] == "http.response.body":
            out["body"] += msg.get("body", b"")

    hdrs = [(b"host", b"127.0.0.1:8000"), *[(k.lower().encode(), v.encode()) for k, v in headers.items()]]
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "", "headers": hdrs,
             "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000)}
    asyncio.run(app(scope, receive, send))
    return out["status"], pulled["n"], out["body"]


@pytest.fixture(scope="module")
def app(built_index, fake_model):
    return create_app(built_index, fake_model, token=TOKEN, max_file_bytes=2 << 20, max_request_bytes=4 << 20)


def test_unauthenticated_upload_is_refused_before_its_body_is_read(built_index, fake_model):
    app = create_app(built_index, fake_model, token=TOKEN)  # default limits: 200 MB is an allowed upload size
    ctype = {"content-type": "multipart/form-data; boundary=xyz", "content-length": str(200 << 20)}
    status, pulled, _ = _asgi(app, "POST", "/search/upload", ctype, 200 << 20)
    assert pulled == 0 and status == 401  # used to spool 200 MB to disk, then 401


def test_size_is_checked_before_reading_and_json_routes_are_small(app):
    auth = {"authorization": f"Bearer {TOKEN}", "content-type": "application/json"}
    status, pulled, _ = _asgi(app, "POST", "/search/text", {**auth, "content-length": str(1 << 20)}, 1 << 20)
    assert status == 413 and pulled == 0  # a JSON route used to take up to 256 MiB
    # no Content-Length (chunked): counted while streaming, stopped at the limit
    status, pulled, _ = _asgi(app, "POST", "/search/text", auth, 8 << 20)
    assert status == 413 and pulled == 1


def test_422_never_echoes_the_input(built_index, fake_model):
    c = TestClient(create_app(built_index, fake_model))
    secret = "patient-name-" + "x" * 3000
    r = c.post("/search/text", json={"text": secret, "k": 5})
    assert r.status_code == 422
    assert "patient-name" not in r.text and r.json()["detail"][0]["loc"] == ["body", "text"]


def test_foreign_host_header_is_refused(built_index, fake_model):
    c = TestClient(create_app(built_index, fake_model))
    assert c.get("/health", headers={"host": "evil.example"}).status_code == 400  # DNS rebinding
    assert c.get("/health", headers={"host": "127.0.0.1:8000"}).status_code == 200
    assert c.get("/health", headers={"host": "localhost"}).status_code == 200


def test_security_headers_and_no_cdn_docs(built_index, fake_model):
    c = TestClient(create_app(built_index, fake_model))
    for path in ("/", "/health", "/nope"):
        h = c.get(path).headers
        assert "frame-ancestors 'none'" in h["content-security-policy"], path
        assert h["x-frame-options"] == "DENY" and h["x-content-type-options"] == "nosniff"
    assert c.get("/docs").status_code == 404 and c.get("/redoc").status_code == 404
    assert "/search/text" in c.get("/openapi.json").json()["paths"]


def test_blank_or_padded_tokens_are_refused():
    with pytest.raises(MedAlignError, match="at least 16"):
        check_bind("0.0.0.0", " " * 16)
    with pytest.raises(MedAlignError):
        check_bind("0.0.0.0", " " + "a" * 20)
    check_bind("0.0.0.0", "a" * 16)


class _PathLeakingModel(FakeModel):
    def encode_image(self, x, sequence_mask=None):
        if isinstance(x, dict):
            raise CohortError("cannot read image", path=next(iter(x.values())))
        return super().encode_image(x, sequence_mask)


def test_upload_errors_do_not_reveal_server_paths(built_index, cohort):
    c = TestClient(create_app(built_index, _PathLeakingModel()))
    data = (cohort.parent / "S000" / "dwi.nii.gz").read_bytes()
    r = c.post("/search/upload", files={"dwi": ("a.nii.gz", data, "application/gzip")})
    assert r.status_code == 400 and "dwi.nii.gz" in r.json()["detail"]
    assert "medalign-upload-" not in r.text and "/tmp" not in r.text, r.text
