"""Retrieval API in-process (fastapi TestClient): results, ids, uploads, limits, auth, logs."""
from __future__ import annotations

import gzip
import logging

import numpy as np
import pytest
from fastapi.testclient import TestClient
from serve_fakes import FakeModel, make_volume, write_nifti

from medalign.data.schema import CLASSES
from medalign.serve.app import _nifti_suffix, create_app, load_class_prompts
from medalign.serve.security import RedactFilter, check_bind, is_loopback, token_ok

SECRET = "Zebra-unique-phrase glioblastoma 4711"


@pytest.fixture(scope="module")
def client(served_app):
    return TestClient(served_app)


def test_health_and_openapi(client, fake_model):
    h = client.get("/health").json()
    assert h["status"] == "ok" and h["n_studies"] == 12 and h["model_id"] == fake_model.model_id
    assert h["auth_required"] is False and h["index_kind"] == "flat"
    paths = client.get("/openapi.json").json()["paths"]
    for p in ("/health", "/search/text", "/search/study/{study_id}", "/search/upload", "/study/{study_id}",
              "/thumb/{study_id}/{sequence}.png"):
        assert p in paths


def test_text_search_report_target_finds_exact_report(client):
    text = client.get("/study/S007").json()["report"]
    r = client.post("/search/text", json={"text": text, "k": 3, "target": "report"})
    assert r.status_code == 200
    res = r.json()["results"]
    assert len(res) == 3 and res[0]["study_id"] == "S007" and res[0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert [h["rank"] for h in res] == [1, 2, 3]
    assert res[0]["sequences"] == ["dwi", "flair"] and res[0]["label"] == CLASSES[7 % 5]


def test_text_search_image_target_and_bounds(client):
    r = client.post("/search/text", json={"text": "acute infarct", "k": 5})
    assert r.status_code == 200 and len(r.json()["results"]) == 5
    scores = [h["score"] for h in r.json()["results"]]
    assert scores == sorted(scores, reverse=True)
    assert client.post("/search/text", json={"text": "", "k": 5}).status_code == 422
    assert client.post("/search/text", json={"text": "x", "k": 0}).status_code == 422
    assert client.post("/search/text", json={"text": "x", "k": 101}).status_code == 422
    assert client.post("/search/text", json={"text": "x", "target": "omics"}).status_code == 422


def test_study_search_excludes_itself_and_gives_zero_shot(client):
    r = client.get("/search/study/S003", params={"k": 4})
    assert r.status_code == 200
    body = r.json()
    ids = [h["study_id"] for h in body["results"]]
    assert len(ids) == 4 and "S003" not in ids and ids[0] == "S008"  # S008 shares S003's label blob
    zs = body["zero_shot"]
    assert zs["classes"] == list(CLASSES) and sum(zs["probs"]) == pytest.approx(1.0, abs=1e-4)
    assert zs["predicted"] == CLASSES[int(np.argmax(zs["probs"]))]


@pytest.mark.parametrize("path,codes", [
    ("/study/NOPE", {404}),
    ("/study/..%2F..%2Fetc%2Fpasswd", {404, 422}),
    ("/study/.hidden", {422}),
    ("/search/study/S0%00", {404, 422}),
    ("/thumb/S003/t1.png", {404}),
    ("/thumb/S003/passwd.png", {422}),
    ("/thumb/..%2FS003/dwi.png", {404, 422}),
    ("/thumb/S003/..%2F..%2Fmeta.png", {404, 422}),
    ("/static/..%2F..%2Fapp.py", {404}),
])
def test_bad_ids_never_reach_the_filesystem(client, path, codes):
    r = client.get(path)
    assert r.status_code in codes, (path, r.status_code)
    assert b"import" not in r.content and b"root:" not in r.content


def test_study_details_and_thumbnail(client):
    d = client.get("/study/S002").json()
    assert d == {"study_id": "S002", "label": "hemorrhage", "split": "test", "sequences": ["dwi", "flair"],
                 "report": d["report"]} and "Case S002" in d["report"]
    r = client.get("/thumb/S002/flair.png")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png" and r.content[:4] == b"\x89PNG"


def test_page_and_static_assets(client):
    r = client.get("/")
    assert r.status_code == 200 and 'id="query"' in r.text and 'id="drop"' in r.text
    assert client.get("/static/app.js").status_code == 200


# ---- uploads ----------------------------------------------------------------------------------
def _nifti_bytes(tmp_path, name, vol):
    return write_nifti(tmp_path / name, vol).read_bytes()


def test_upload_finds_the_same_study_and_classifies(client, cohort):
    files = {s: (f"{s}.nii.gz", (cohort.parent / "S004" / f"{s}.nii.gz").read_bytes(), "application/gzip")
             for s in ("dwi", "flair")}
    r = client.post("/search/upload", files=files, params={"k": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["results"][0]["study_id"] == "S004" and body["results"][0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert body["query"]["sequences"] == ["dwi", "flair"]
    assert len(body["zero_shot"]["probs"]) == len(CLASSES)


def test_upload_uncompressed_single_sequence(client, tmp_path):
    import nibabel as nib

    p = tmp_path / "x.nii"
    nib.save(nib.Nifti1Image(make_volume(1, 99), np.eye(4)), str(p))
    r = client.post("/search/upload", files={"flair": ("x.nii", p.read_bytes())})
    assert r.status_code == 200 and r.json()["query"]["sequences"] == ["flair"]


def test_upload_rejects_garbage_missing_unused_and_oversize(client, served_app, built_index, fake_model, tmp_path):
    r = client.post("/search/upload", files={"dwi": ("dwi.nii.gz", b"hello world" * 50)})
    assert r.status_code == 400 and "dwi" in r.json()["detail"] and "not a NIfTI" in r.json()["detail"]
    r = client.post("/search/upload", files={"dwi": ("dwi.nii.gz", gzip.compress(b"\0" * 2000))})
    assert r.status_code == 400
    assert client.post("/search/upload", data={"note": "x"}).status_code == 400
    good = _nifti_bytes(tmp_path, "t1.nii.gz", make_volume(0, 1))
    # a sequence the model does not read is skipped and listed; a study left with none is refused
    r = client.post("/search/upload", files={"t1": ("t1.nii.gz", good)})
    assert r.status_code == 400 and "no usable sequence" in r.json()["detail"]
    r = client.post("/search/upload", files={"t1": ("t1.nii.gz", good), "dwi": ("dwi.nii.gz", good)})
    assert r.status_code == 200 and r.json()["query"]["sequences"] == ["dwi"]
    assert r.json()["query"]["skipped"] == ["t1"]
    # per-file limit (2 MiB in the fixture app) and whole-request limit
    small = TestClient(create_app(built_index, fake_model, max_file_bytes=1000, max_request_bytes=1 << 20))
    r = small.post("/search/upload", files={"dwi": ("dwi.nii.gz", good)})
    assert r.status_code == 413 and "dwi" in r.json()["detail"]
    r = small.post("/search/upload", files={"dwi": ("dwi.nii", b"\0" * (2 << 20))})
    assert r.status_code == 413


def test_nifti_sniffing():
    import nibabel as nib

    hdr = nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4)).header.binaryblock
    assert _nifti_suffix(hdr + b"\0" * 4) == ".nii"
    assert _nifti_suffix(gzip.compress(hdr + b"\0" * 500)) == ".nii.gz"
    assert _nifti_suffix(b"\x1f\x8bgarbage") is None and _nifti_suffix(b"") is None


# ---- auth, binding --------------------------------------------------------------------------
def test_bearer_token_required_when_configured(built_index, fake_model):
    tok = "s3cret-token-0123456789"
    c = TestClient(create_app(built_index, fake_model, token=tok))
    assert c.get("/health").json()["auth_required"] is True
    assert c.post("/search/text", json={"text": "x"}).status_code == 401
    assert c.get("/thumb/S001/dwi.png", headers={"Authorization": "Bearer wrong"}).status_code == 401
    ok = c.post("/search/text", json={"text": "x"}, headers={"Authorization": f"Bearer {tok}"})
    assert ok.status_code == 200
    assert c.get("/").status_code == 200  # the page itself is public; it asks for the token
    assert "HTTPBearer" in c.get("/openapi.json").json()["components"]["securitySchemes"]


def test_bind_rules():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1") and is_loopback("127.1.2.3")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4") and not is_loopback("example.org")
    check_bind("127.0.0.1", None)
    check_bind("0.0.0.0", "x" * 20)
    with pytest.raises(Exception, match="refusing to serve on 0.0.0.0"):
        check_bind("0.0.0.0", None)
    assert token_ok("Bearer abc", "abc") and not token_ok("Basic abc", "abc") and not token_ok(None, "abc")


# ---- privacy of logs --------------------------------------------------------------------------
def test_no_report_text_or_patient_id_in_logs(client, caplog, cohort):
    caplog.set_level(logging.DEBUG)
    client.post("/search/text", json={"text": SECRET, "k": 3})
    client.get("/search/study/S001", params={"k": 2})
    client.get("/study/S001")
    client.post("/search/upload", files={"dwi": ("PATIENT-001.nii.gz", b"junk")})
    report = client.get("/study/S001").json()["report"]
    server = ("medalign", "uvicorn", "fastapi", "starlette")  # the test client's own httpx log is not the server's
    text = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith(server))
    assert "POST /search/text 200" in text and "GET /study/{study_id} 200" in text
    for needle in (SECRET, "Zebra", report, "PATIENT-", "S001", "k=2"):
        assert needle not in text, needle


def test_redact_filter_strips_query_strings_from_access_log():
    rec = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                            ("127.0.0.1:5", "GET", "/search/study/S1?k=3&text=PATIENT-9", "1.1", 200), None)
    assert RedactFilter().filter(rec)
    msg = rec.getMessage()
    assert "PATIENT-9" not in msg and "k=3" not in msg and "/search/study/S1?<redacted>" in msg


def test_prompts_file_or_builtin(tmp_path):
    p = load_class_prompts()
    assert list(p) == list(CLASSES) and all(p[c] for c in CLASSES)
    (tmp_path / "p.yaml").write_text("infarct: [stroke]\ntumor: {presence: [mass]}\n")
    q = load_class_prompts(tmp_path / "p.yaml")
    assert q["infarct"] == ["stroke"] and q["tumor"] == ["mass"] and q["normal"]  # missing class -> built-in
    assert load_class_prompts(tmp_path / "absent.yaml")["infarct"]


def test_other_model_refused_at_startup(built_index):
    with pytest.raises(Exception, match="built by model"):
        create_app(built_index, FakeModel(seed=3))
