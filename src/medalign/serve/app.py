"""FastAPI case-retrieval service over an index directory (see ``medalign serve``).

Endpoints (all JSON unless noted; OpenAPI at /openapi.json, docs at /docs):

- ``GET /health``                       index size, model id, whether a token is required
- ``POST /search/text``                 {text, k, target} -> studies whose image (or report) is closest
- ``GET /search/study/{study_id}?k=``   studies closest to a study of the index (itself excluded)
- ``POST /search/upload``               multipart, one NIfTI per sequence field -> studies + zero-shot classes
- ``GET /study/{study_id}``             report, label, thumbnails of one study
- ``GET /thumb/{study_id}/{sequence}.png``  mid-axial thumbnail
- ``GET /``                              the web page (static/index.html)

Study ids are checked against a strict pattern and looked up in the store; file paths never
come from a request. The app logs method, route template, status and latency only.
"""
# no "from __future__ import annotations": FastAPI must resolve the locally defined models

import logging
import struct
import tempfile
import threading
import time
import zlib
from pathlib import Path
from typing import Any, Literal

import numpy as np

from medalign.data.schema import CLASSES, KNOWN_SEQUENCES
from medalign.errors import MedAlignError
from medalign.index.store import STUDY_ID_RE, IndexStore

log = logging.getLogger("medalign.serve")

STATIC_DIR = Path(__file__).with_name("static")
PROMPTS_FILE = Path(__file__).resolve().parents[1] / "eval" / "prompts.yaml"
MAX_FILE_BYTES = 64 << 20      # one uploaded NIfTI
MAX_REQUEST_BYTES = 256 << 20  # a whole request body
MAX_VOXELS = 64_000_000        # decoded volume size guard (gzip bombs)
MAX_K = 100
ID_PATTERN = STUDY_ID_RE.pattern

BUILTIN_PROMPTS: dict[str, list[str]] = {
    "infarct": ["acute infarct", "acute ischemic infarction with restricted diffusion"],
    "tumor": ["brain tumor", "intracranial mass lesion with surrounding edema"],
    "hemorrhage": ["intracranial hemorrhage", "acute intraparenchymal hematoma"],
    "normal": ["no acute intracranial abnormality", "normal MRI of the brain"],
    "others": ["chronic white matter changes", "other intracranial abnormality"],
}


def load_class_prompts(path: str | Path | None = None) -> dict[str, list[str]]:
    """Presence prompts per class from the eval prompts YAML (class: list | {presence: [...]})."""
    import yaml

    path = Path(path) if path else PROMPTS_FILE
    if not path.is_file():
        return dict(BUILTIN_PROMPTS)
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    out = {}
    for c in CLASSES:
        entry = raw.get(c)
        prompts = entry.get("presence") if isinstance(entry, dict) else entry
        out[c] = [str(p) for p in prompts] if prompts else list(BUILTIN_PROMPTS[c])
    return out


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def _logit_scale(model: Any) -> float:
    """The model's learned CLIP scale (``model.logit_scale`` or ``model.recipe.logit_scale``,
    a float, tensor or method returning one), else CLIP's initial 1/0.07; capped at 100."""
    for owner in (model, getattr(model, "recipe", None)):
        s = getattr(owner, "logit_scale", None) if owner is not None else None
        try:
            s = s() if callable(s) else s
            s = float(s.detach().cpu()) if hasattr(s, "detach") else (float(s) if s is not None else None)
        except Exception:
            s = None
        if s is not None and np.isfinite(s) and s > 0:
            return float(min(s, 100.0))
    return 1 / 0.07


def _nifti_suffix(head: bytes) -> str | None:
    """'.nii.gz' / '.nii' if ``head`` starts a NIfTI-1/2 file (gzipped or not), else None."""
    data = head
    gz = head[:2] == b"\x1f\x8b"
    if gz:
        try:  # a truncated gzip stream decodes as far as it goes
            data = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head, 1024)
        except zlib.error:
            return None
    if len(data) < 348:
        return None
    for endian in ("<", ">"):
        size = struct.unpack(endian + "i", data[:4])[0]
        if size == 348 and data[344:348] in (b"n+1\x00", b"ni1\x00"):
            return ".nii.gz" if gz else ".nii"
        if size == 540 and len(data) >= 8 and data[4:8] in (b"n+2\x00", b"ni2\x00"):
            return ".nii.gz" if gz else ".nii"
    return None


def create_app(index: str | Path | IndexStore, model: Any = None, *, token: str | None = None,
               max_file_bytes: int = MAX_FILE_BYTES, max_request_bytes: int = MAX_REQUEST_BYTES,
               prompts_path: str | Path | None = None) -> Any:
    """Build the ASGI app. ``model`` defaults to ``medalign.api.load(meta['run_dir'])``.

    Raises MedAlignError if the model is not the one that built the index.
    """
    from fastapi import Depends, FastAPI, File, HTTPException, Path as PathParam, Query, Request, UploadFile
    from fastapi.responses import FileResponse, JSONResponse
    from fastapi.security import HTTPBearer
    from fastapi.staticfiles import StaticFiles
    from pydantic import BaseModel, Field

    from medalign.serve.security import BodySizeLimit, install_log_filter, token_ok

    store = index if isinstance(index, IndexStore) else IndexStore.open(index)
    if model is None:
        run_dir = store.meta.get("run_dir")
        if not run_dir:
            raise MedAlignError(f"index {store.root} records no run directory; pass --run RUN")
        from medalign.api import load

        model = load(run_dir)
    store.check_model(model)
    install_log_filter()
    model_lock = threading.Lock()  # encoders are not guaranteed thread-safe; FAISS reads are
    class_prompts = load_class_prompts(prompts_path)
    with model_lock:
        class_embed = []
        for c in CLASSES:
            e = np.asarray(model.encode_text(class_prompts[c]), dtype=np.float32)  # (P, E)
            e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
            m = e.mean(0)
            class_embed.append(m / max(np.linalg.norm(m), 1e-12))
    class_embed = np.stack(class_embed)  # (K, E)
    scale = _logit_scale(model)
    model_sequences = [s for s in (getattr(model, "sequences", None) or store.meta.get("sequences") or [])]

    # ---- schemas -------------------------------------------------------------------------
    class TextQuery(BaseModel):
        text: str = Field(..., min_length=1, max_length=2000, description="free-text query (never logged)")
        k: int = Field(10, ge=1, le=MAX_K)
        target: Literal["image", "report"] = Field("image", description="search study images or their reports")

    class Hit(BaseModel):
        rank: int
        study_id: str
        score: float = Field(..., description="cosine similarity")
        label: str
        report: str
        sequences: list[str] = Field(..., description="sequences with a thumbnail at /thumb/{study_id}/{seq}.png")

    class ZeroShot(BaseModel):
        classes: list[str]
        probs: list[float]
        predicted: str

    class SearchResponse(BaseModel):
        query: dict
        results: list[Hit]
        zero_shot: ZeroShot | None = None

    class StudyDetail(BaseModel):
        study_id: str
        label: str
        report: str
        split: str
        sequences: list[str]

    class Health(BaseModel):
        status: str
        n_studies: int
        n_reports: int
        model_id: str
        index_kind: str
        version: str
        auth_required: bool
        sequences: list[str]

    # ---- helpers -------------------------------------------------------------------------
    def hits(pairs: list[tuple[int, float]]) -> list[Hit]:
        out = []
        for rank, (row, score) in enumerate(pairs, start=1):
            r = store.record(row)
            out.append(Hit(rank=rank, study_id=r["study_id"], score=round(score, 6), label=r["label"] or "",
                           report=r["report"] or "", sequences=sorted(r["thumbs"])))
        return out

    def zero_shot(vec: np.ndarray) -> ZeroShot:
        v = np.asarray(vec, dtype=np.float32).reshape(-1)  # (E,)
        v = v / max(float(np.linalg.norm(v)), 1e-12)
        p = _softmax(scale * (class_embed @ v))  # (K,)
        return ZeroShot(classes=list(CLASSES), probs=[round(float(x), 6) for x in p], predicted=CLASSES[int(p.argmax())])

    def row_or_404(study_id: str) -> int:
        row = store.row(study_id)
        if row is None:
            raise HTTPException(404, "unknown study id")
        return row

    bearer = HTTPBearer(auto_error=False, description="required when the server was started with a token")

    def require_token(request: Request, _cred: Any = Depends(bearer)) -> None:
        if token and not token_ok(request.headers.get("authorization"), token):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    app = FastAPI(title="medalign case retrieval", version="1",
                  description="Similar-case search over a medalign index: text, study and upload queries.")
    auth = [Depends(require_token)]
    StudyId = PathParam(..., pattern=ID_PATTERN, max_length=128, description="study id from the index")

    @app.middleware("http")
    async def log_requests(request: Request, call_next: Any) -> Any:
        from starlette.routing import Match

        t0 = time.perf_counter()
        response = await call_next(request)
        template = "<unmatched>"
        for route in app.router.routes:
            if route.matches(request.scope)[0] == Match.FULL:
                template = getattr(route, "path", template)
                break
        # route template only: never the study id, query string, report or body
        log.info("%s %s %d %.1fms", request.method, template, response.status_code, 1000 * (time.perf_counter() - t0))
        return response

    @app.exception_handler(MedAlignError)
    async def _medalign_error(request: Request, exc: MedAlignError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.get("/health", response_model=Health)
    def health() -> Health:
        return Health(status="ok", n_studies=len(store), n_reports=int(len(store.text_rows)), model_id=store.model_id,
                      index_kind=store.image_index.kind, version=store.version, auth_required=bool(token),
                      sequences=list(model_sequences))

    @app.post("/search/text", response_model=SearchResponse, dependencies=auth)
    def search_text(q: TextQuery) -> SearchResponse:
        with model_lock:
            vec = np.asarray(model.encode_text([q.text]), dtype=np.float32)[0]  # (E,)
        pairs = store.search(vec, q.k, target=q.target)
        return SearchResponse(query={"type": "text", "k": q.k, "target": q.target}, results=hits(pairs))

    @app.get("/search/study/{study_id}", response_model=SearchResponse, dependencies=auth,
             responses={404: {"description": "unknown study id"}})
    def search_study(study_id: str = StudyId, k: int = Query(10, ge=1, le=MAX_K)) -> SearchResponse:
        row = row_or_404(study_id)
        vec = store.image_vector(row)
        if vec is None:
            raise HTTPException(404, "study has no image embedding")
        pairs = store.search(vec, k, target="image", exclude_row=row)
        return SearchResponse(query={"type": "study", "study_id": study_id, "k": k}, results=hits(pairs),
                              zero_shot=zero_shot(vec))

    def read_upload(seq: str, f: UploadFile, tmpdir: Path) -> str:
        head = f.file.read(1024)
        suffix = _nifti_suffix(head)
        if suffix is None:
            raise HTTPException(400, f"upload '{seq}': not a NIfTI file (.nii or .nii.gz)")
        dest = tmpdir / f"{seq}{suffix}"
        size = len(head)
        with open(dest, "wb") as out:
            out.write(head)
            while chunk := f.file.read(1 << 20):
                size += len(chunk)
                if size > max_file_bytes:
                    raise HTTPException(413, f"upload '{seq}': larger than {max_file_bytes} bytes")
                out.write(chunk)
        try:
            import nibabel as nib

            img = nib.load(str(dest))
            shape = tuple(int(s) for s in img.shape)
        except Exception:
            raise HTTPException(400, f"upload '{seq}': unreadable NIfTI header") from None
        if len(shape) not in (3, 4) or min(shape) < 1 or int(np.prod(shape, dtype=np.int64)) > MAX_VOXELS:
            raise HTTPException(400, f"upload '{seq}': expected a 3-D volume, got shape {shape}")
        return str(dest)

    upload_doc = ("One NIfTI file per sequence, each in a form field named by the sequence "
                  f"(model uses: {', '.join(model_sequences) or 'any'}). Max {max_file_bytes >> 20} MiB per file.")

    @app.post("/search/upload", response_model=SearchResponse, dependencies=auth, description=upload_doc,
              responses={400: {"description": "bad or missing NIfTI"}, 413: {"description": "too large"}})
    def search_upload(k: int = Query(10, ge=1, le=MAX_K),
                      dwi: UploadFile | None = File(None), adc: UploadFile | None = File(None),
                      t2s: UploadFile | None = File(None), flair: UploadFile | None = File(None),
                      t1: UploadFile | None = File(None), t2: UploadFile | None = File(None),
                      t1c: UploadFile | None = File(None)) -> SearchResponse:
        given = {s: f for s, f in zip(KNOWN_SEQUENCES, (dwi, adc, t2s, flair, t1, t2, t1c))
                 if f is not None and not isinstance(f, str)}
        if not given:
            raise HTTPException(400, "upload at least one NIfTI, in a form field named by its sequence")
        unused = [s for s in given if model_sequences and s not in model_sequences]
        if unused:
            raise HTTPException(400, f"sequence(s) {', '.join(unused)} not used by this model "
                                     f"(uses {', '.join(model_sequences)})")
        with tempfile.TemporaryDirectory(prefix="medalign-upload-") as td:
            paths = {s: read_upload(s, f, Path(td)) for s, f in given.items()}
            try:
                with model_lock:
                    vec = np.asarray(model.encode_image(paths), dtype=np.float32).reshape(-1)  # (E,)
            except MedAlignError as e:
                raise HTTPException(400, f"upload could not be processed: {e}") from None
            except (ValueError, OSError, RuntimeError, EOFError) as e:
                raise HTTPException(400, f"upload could not be processed: {type(e).__name__}") from None
        if not np.all(np.isfinite(vec)):
            raise HTTPException(400, "upload gave a non-finite embedding (empty or constant volume?)")
        pairs = store.search(vec, k, target="image")
        return SearchResponse(query={"type": "upload", "sequences": sorted(paths), "k": k}, results=hits(pairs),
                              zero_shot=zero_shot(vec))

    @app.get("/study/{study_id}", response_model=StudyDetail, dependencies=auth,
             responses={404: {"description": "unknown study id"}})
    def study(study_id: str = StudyId) -> StudyDetail:
        r = store.record(row_or_404(study_id))
        return StudyDetail(study_id=r["study_id"], label=r["label"] or "", report=r["report"] or "",
                           split=r["split"] or "", sequences=sorted(r["thumbs"]))

    @app.get("/thumb/{study_id}/{sequence}.png", dependencies=auth, response_class=FileResponse,
             responses={200: {"content": {"image/png": {}}}, 404: {"description": "no such thumbnail"}})
    def thumb(study_id: str = StudyId,
              sequence: Literal["dwi", "adc", "t2s", "flair", "t1", "t2", "t1c"] = PathParam(...)) -> FileResponse:
        path = store.thumb_file(study_id, sequence)  # only paths recorded in the store, inside the index
        if path is None:
            raise HTTPException(404, "no such thumbnail")
        return FileResponse(path, media_type="image/png")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.state.store, app.state.model = store, model
    # outermost: reject oversize bodies before multipart parsing spools them to disk
    app.add_middleware(BodySizeLimit, max_bytes=max_request_bytes)
    return app


def serve(index_dir: str | Path, *, host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
          run_dir: str | None = None, model: Any = None) -> None:
    """Run the app with uvicorn (access log off; the app logs route templates only)."""
    import uvicorn

    from medalign.serve.security import check_bind, install_log_filter

    check_bind(host, token)
    if model is None and run_dir:
        from medalign.api import load

        model = load(run_dir)
    app = create_app(index_dir, model, token=token)
    install_log_filter()
    uvicorn.run(app, host=host, port=port, access_log=False, log_level="info")
