"""A zipped DICOM study uploaded to ``POST /search/upload`` (field ``dicom``): the same identification
as ``medalign ingest``, zip-safety limits, clear 400/413s, no PHI in answers or logs, nothing left
in the temporary folder; and the web page sends a dropped .zip as that field."""
from __future__ import annotations

import io
import logging
import struct
import tempfile
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from fastapi.testclient import TestClient
from serve_fakes import make_volume

from medalign.serve import uploads
from medalign.serve.app import create_app

PHI = ("DOE", "JANE", "MRN700", "ACC900", "19500101")  # what the generator writes as patient data
SERVER_LOGS = ("medalign", "uvicorn", "fastapi", "starlette", "pydicom")


@pytest.fixture(scope="module")
def client(served_app):
    return TestClient(served_app)


def _export(root: Path, cohort: Path, study: str = "S004", index: int = 0, layout: str = "nested",
            kinds: tuple[str, ...] | None = None) -> list[dict]:
    """One vendor-style DICOM study from a cohort study's dwi/flair (x100: int16 keeps the signal)."""
    from medalign.data.synth.dicom_export import export_study

    vols = {s: (100 * np.asarray(nib.load(cohort.parent / study / f"{s}.nii.gz").dataobj, np.float32), np.eye(4))
            for s in ("dwi", "flair")}
    vols.update({s: (100 * make_volume(i, 50 + i), np.eye(4)) for i, s in enumerate(("adc", "t2s", "t1", "t2"))})
    rows = export_study(vols, root, index, seed=3, layout=layout)
    if kinds is not None:  # keep only some series: drop the others' files
        import pydicom

        keep = {r["series_uid"] for r in rows if r["kind"] in kinds}
        for p in [p for p in root.rglob("*") if p.is_file()]:
            if str(pydicom.dcmread(p, stop_before_pixels=True).SeriesInstanceUID) not in keep:
                p.unlink()
    return rows


def _zip(root: Path, extra: dict[str, bytes] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(root.rglob("*")):
            if p.is_file():
                zf.write(p, str(p.relative_to(root)))
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return buf.getvalue()


def _post(c: TestClient, data: bytes, **params):
    return c.post("/search/upload", files={"dicom": ("study.zip", data, "application/zip")}, params=params)


@pytest.fixture(scope="module")
def study_zip(tmp_path_factory, cohort) -> dict:
    root = tmp_path_factory.mktemp("dicom_upload")
    rows = _export(root / "dicom", cohort)
    return {"root": root, "zip": _zip(root / "dicom"), "rows": rows}


@pytest.fixture
def private_tmp(tmp_path, monkeypatch) -> Path:
    """The process' temporary folder, watched: uploads must leave nothing in it."""
    d = tmp_path / "tmp"
    d.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    return d


# ---- the identification is ingest's ---------------------------------------------------------------
@pytest.mark.parametrize("layout", ["nested", "flat"])
def test_dicom_zip_gives_what_ingest_gives(client, cohort, tmp_path, private_tmp, caplog, layout):
    from medalign.data.ingest import ingest

    rows = _export(tmp_path / "dicom", cohort, layout=layout)
    caplog.set_level(logging.DEBUG)
    r = _post(client, _zip(tmp_path / "dicom"), k=4)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["query"] == {"type": "upload", "sequences": ["dwi", "flair"], "k": 4, "source": "dicom"}
    assert body["results"][0]["study_id"] in {"S004", "S009"}  # the two studies with S004's label blob
    # the NIfTI that `medalign ingest` makes of the same export, uploaded as NIfTI: the same answer
    ingest(tmp_path / "dicom", tmp_path / "cohort")
    study = next((tmp_path / "cohort" / "studies").iterdir())
    files = {s: (f"{s}.nii.gz", (study / f"{s}.nii.gz").read_bytes()) for s in ("dwi", "flair")}
    ref = client.post("/search/upload", files=files, params={"k": 4}).json()
    assert [h["study_id"] for h in body["results"]] == [h["study_id"] for h in ref["results"]]
    assert [h["score"] for h in body["results"]] == pytest.approx([h["score"] for h in ref["results"]], abs=1e-5)
    # no patient data or UIDs in the answer or the server's logs; nothing left on disk
    logs = "\n".join(rec.getMessage() for rec in caplog.records if rec.name.startswith(SERVER_LOGS))
    for text in (r.text, logs):
        for needle in (*PHI, rows[0]["study_uid"], rows[0]["series_uid"]):
            assert needle not in text, needle
    assert list(private_tmp.iterdir()) == []


def test_openapi_lists_the_dicom_field(client):
    schema = client.get("/openapi.json").json()
    ref = schema["paths"]["/search/upload"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"]
    assert "dicom" in schema["components"]["schemas"][ref.rsplit("/", 1)[1]]["properties"]


# ---- refused, with the reason, and nothing left behind ---------------------------------------------
def _zip_members(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data, compress_type=zipfile.ZIP_DEFLATED)
    return buf.getvalue()


def _sr_only() -> bytes:
    from medalign.data.synth.dicom_export import SR_STORAGE, _dataset

    ds = _dataset({"PatientName": "DOE^JANE", "StudyInstanceUID": "1.2.3", "SeriesInstanceUID": "1.2.3.4",
                   "Modality": "SR"}, SR_STORAGE, "1.2.3.4.5")
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return _zip_members({"DOE_JANE/SR1.dcm": buf.getvalue()})


@pytest.mark.parametrize("make, status, words", [
    (lambda: b"hello, not a zip" * 10, 400, "not a zip archive"),
    (lambda: _zip_members({}), 400, "holds no files"),
    (lambda: _zip_members({"__MACOSX/._IM1": b"x", ".DS_Store": b"x"}), 400, "holds no files"),
    (lambda: _zip_members({"study/IM1.dcm": b"x", "../../evil.dcm": b"x"}), 400, "unsafe path"),
    (lambda: _zip_members({"/etc/cron.d/evil": b"x"}), 400, "unsafe path"),
    (lambda: _zip_members({"C:/evil.dcm": b"x"}), 400, "unsafe path"),
    (lambda: _zip_members({"DOE_JANE/notes.txt": b"hello", "DOE_JANE/IM1": b"\0" * 300}), 400,
     "no readable DICOM MR image series among 2 file(s)"),
    (_sr_only, 400, "non-image object (SR)"),
])
def test_bad_zips_are_refused_with_the_reason(client, private_tmp, make, status, words):
    r = _post(client, make())
    assert r.status_code == status and words in r.json()["detail"], r.text
    assert r.json()["detail"].startswith("upload 'dicom'") and "DOE" not in r.text and str(private_tmp) not in r.text
    assert list(private_tmp.iterdir()) == []


def test_symlink_member_is_refused(client, private_tmp):
    info = zipfile.ZipInfo("study/link")
    info.external_attr = (0o120777 << 16)  # a symbolic link to /etc/passwd
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(info, "/etc/passwd")
    r = _post(client, buf.getvalue())
    assert r.status_code == 400 and "symbolic link" in r.json()["detail"]


def test_study_without_a_model_sequence_or_with_two_studies(client, cohort, tmp_path, private_tmp):
    _export(tmp_path / "t2only", cohort, kinds=("t2", "t1"))
    r = _post(client, _zip(tmp_path / "t2only"))
    assert r.status_code == 400 and "no usable sequence" in r.json()["detail"] and "dwi, flair" in r.json()["detail"]
    _export(tmp_path / "two" / "a", cohort, index=0, kinds=("flair",))
    _export(tmp_path / "two" / "b", cohort, index=1, kinds=("flair",))
    r = _post(client, _zip(tmp_path / "two"))
    assert r.status_code == 400 and "expected one DICOM study, found 2" in r.json()["detail"]
    assert str(private_tmp) not in r.text and list(private_tmp.iterdir()) == []


def test_zip_and_nifti_together_is_refused(client, study_zip):
    r = client.post("/search/upload", files={"dicom": ("s.zip", study_zip["zip"]), "dwi": ("dwi.nii.gz", b"x" * 400)})
    assert r.status_code == 400 and "not both" in r.json()["detail"]


# ---- zip bombs and sizes ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_client(built_index, fake_model):
    """Per-file limit 64 KiB: a zip may unpack to 16 x that = 1 MiB."""
    return TestClient(create_app(built_index, fake_model, max_file_bytes=64 << 10, max_request_bytes=4 << 20))


def test_zip_bomb_and_size_limits(small_client, private_tmp, monkeypatch):
    bomb = _zip_members({"a": b"\0" * (2 << 20)})  # 2 MiB of zeros in ~2 KiB
    assert len(bomb) < 64 << 10
    r = _post(small_client, bomb)
    assert r.status_code == 413 and "unpacks to more than 1048576 bytes" in r.json()["detail"]
    big = _zip_members({"a": np.random.default_rng(0).bytes(100 << 10)})  # incompressible 100 KiB
    r = _post(small_client, big)
    assert r.status_code == 413 and "zip larger than 65536 bytes" in r.json()["detail"]
    monkeypatch.setattr(uploads, "MAX_ZIP_MEMBERS", 3)
    r = _post(small_client, _zip_members({f"IM{i}": b"x" for i in range(5)}))
    assert r.status_code == 413 and "5 files in the zip, more than 3" in r.json()["detail"]
    assert list(private_tmp.iterdir()) == []


def test_a_lying_size_header_is_caught(small_client, private_tmp):
    """A member that says it holds 1000 bytes but inflates to 2 MiB: never unpacked past its word."""
    data = bytearray(_zip_members({"a": b"\0" * (2 << 20)}))
    local, central = data.find(b"PK\x03\x04"), data.find(b"PK\x01\x02")
    struct.pack_into("<I", data, local + 22, 1000)     # local header: uncompressed size
    struct.pack_into("<I", data, central + 24, 1000)   # central directory: uncompressed size
    r = _post(small_client, bytes(data))
    assert r.status_code == 400 and "member 1 is corrupt" in r.json()["detail"]
    assert list(private_tmp.iterdir()) == []


def test_members_unpack_under_numbered_names(tmp_path):
    data = _zip_members({"DOE_JANE/ACC900/SE1/IM1.dcm": b"a", "DOE_JANE/DICOMDIR": b"d", "x/.hidden": b"h",
                         "__MACOSX/x/._IM1": b"m", "DOE_JANE/ACC900/SE1/IM2": b"b"})
    out = uploads.read_dicom_zip(io.BytesIO(data), tmp_path, 1 << 20)
    assert sorted(p.name for p in out.iterdir()) == ["00000", "00001"]
    assert sorted(p.read_bytes() for p in out.iterdir()) == [b"a", b"b"]


# ---- the web page ----------------------------------------------------------------------------------
def test_page_accepts_a_zip_and_sends_it_as_the_dicom_field(client):
    page = client.get("/").text
    assert 'accept=".nii,.gz,.zip"' in page and "DICOM study" in page
    js = client.get("/static/app.js").text
    assert 'form.append("dicom", state.dicom' in js and "\\.zip$" in js


@pytest.mark.browser
def test_page_uploads_a_dicom_zip(served_app, study_zip, tmp_path):
    """The real server and page: choose a .zip, search, see the cases (needs chromium + playwright)."""
    sync_api = pytest.importorskip("playwright.sync_api")
    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():
        pytest.skip(f"{chromium} not installed")
    import socket
    import threading
    import time

    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(served_app, host="127.0.0.1", port=port, log_level="warning",
                                           access_log=False, lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
            time.sleep(0.05)
        (tmp_path / "study.zip").write_bytes(study_zip["zip"])
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(chromium), args=["--headless", "--no-sandbox", "--disable-gpu"])
            page = browser.new_page()
            page.set_default_timeout(20_000)
            page.goto(f"http://127.0.0.1:{port}/")
            page.set_input_files("#files", str(tmp_path / "study.zip"))
            assert "DICOM study" in page.locator("#file-list li").inner_text()
            page.click("#upload")
            sync_api.expect(page.locator("#summary")).to_contain_text("Uploaded case (DICOM study: dwi, flair)")
            assert page.locator("#results .card").first.get_attribute("data-study-id") in {"S004", "S009"}
            browser.close()
    finally:
        server.should_exit = True
        thread.join(timeout=10)
