"""The retrieval API's routes: one APIRouter per concern, each built around the app's ServeState.

Study ids are checked against a strict pattern and looked up in the store; file paths never
come from a request (thumbnails: only paths the store records; uploads: named by sequence).
"""
# no "from __future__ import annotations": FastAPI reads the route signatures at runtime

import tempfile
from pathlib import Path
from typing import Any, Literal

import numpy as np
from fastapi import APIRouter, Depends, File, HTTPException, Path as PathParam, Query, Request, UploadFile
from fastapi.params import Depends as DependsParam
from fastapi.responses import FileResponse, Response
from fastapi.security import HTTPBearer

from medalign.data.schema import CLASSES, DEFAULT_TOP_K, KNOWN_SEQUENCES
from medalign.errors import MedAlignError
from medalign.serve.batching import ServerBusy
from medalign.serve.attention import OverlayUnavailable
from medalign.serve.schemas import AttentionQuery, Health, Hit, SearchResponse, StudyDetail, TextQuery, ZeroShot
from medalign.serve.security import token_ok
from medalign.serve.state import ID_PATTERN, MAX_K, STATIC_DIR, ServeState
from medalign.serve.uploads import read_dicom_zip, read_upload

StudyId = PathParam(..., pattern=ID_PATTERN, max_length=128, description="study id from the index")


def auth_dependencies(state: ServeState) -> list[DependsParam]:
    """Route dependencies that demand ``Authorization: Bearer <token>`` when the state has a token."""
    bearer = HTTPBearer(auto_error=False, description="required when the server was started with a token")

    def require_token(request: Request, _cred: Any = Depends(bearer)) -> None:
        if state.token and not token_ok(request.headers.get("authorization"), state.token):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    return [Depends(require_token)]


def _hits(state: ServeState, pairs: list[tuple[int, float]], store: Any = None) -> list[Hit]:
    """Hits for (row, score) pairs; ``store`` is the version the rows came from (default: live)."""
    store = store if store is not None else state.store
    out = []
    for rank, (row, score) in enumerate(pairs, start=1):
        r = store.record(row)
        out.append(Hit(rank=rank, study_id=r["study_id"], score=round(score, 6), label=r["label"] or "",
                       report=r["report"] or "", sequences=sorted(r["thumbs"])))
    return out


def _zero_shot(state: ServeState, vec: np.ndarray) -> ZeroShot:
    p = state.class_probs(vec)  # (K,)
    return ZeroShot(classes=list(CLASSES), probs=[round(float(x), 6) for x in p], predicted=CLASSES[int(p.argmax())])


def _row_or_404(state: ServeState, study_id: str, store: Any = None) -> int:
    row = (store if store is not None else state.store).row(study_id)
    if row is None:
        raise HTTPException(404, "unknown study id")
    return row


def health_router(state: ServeState) -> APIRouter:
    """``GET /health``: open to all (no token), so probes need no secret."""
    router = APIRouter()

    @router.get("/health", response_model=Health)
    def health() -> Health:
        store = state.current_store()
        return Health(status="ok", n_studies=len(store), n_reports=int(len(store.text_rows)), model_id=store.model_id,
                      index_kind=store.image_index.kind, version=store.version, auth_required=bool(state.token),
                      sequences=list(state.sequences),
                      attention=bool(state.overlays is not None and state.overlays.available))

    return router


def search_router(state: ServeState, auth: list[DependsParam]) -> APIRouter:
    """``POST /search/text`` and ``GET /search/study/{study_id}``."""
    router = APIRouter()

    @router.post("/search/text", response_model=SearchResponse, dependencies=auth)
    async def search_text(q: TextQuery) -> SearchResponse:
        # async: the request waits for its (batched) encoding without holding a pool thread, and the
        # search itself is sub-millisecond; one store version for the whole request (hot reload)
        store = state.current_store()
        pairs = store.search(await state.encode_text_async(q.text), q.k, target=q.target)
        return SearchResponse(query={"type": "text", "k": q.k, "target": q.target},
                              results=_hits(state, pairs, store))

    @router.get("/search/study/{study_id}", response_model=SearchResponse, dependencies=auth,
                responses={404: {"description": "unknown study id"}})
    def search_study(study_id: str = StudyId, k: int = Query(DEFAULT_TOP_K, ge=1, le=MAX_K)) -> SearchResponse:
        store = state.current_store()
        row = _row_or_404(state, study_id, store)
        vec = store.image_vector(row)
        if vec is None:
            raise HTTPException(404, "study has no image embedding")
        pairs = store.search(vec, k, target="image", exclude_row=row)
        return SearchResponse(query={"type": "study", "study_id": study_id, "k": k},
                              results=_hits(state, pairs, store),
                              zero_shot=_zero_shot(state, vec))

    return router


def _upload_embedding(state: ServeState, given: dict[str, UploadFile]) -> tuple[np.ndarray, list[str]]:
    """(E,) embedding of the uploaded study and its sequences; HTTPException 400/413 when refused.

    Sequences the model does not read are skipped (the caller lists them in the response), as
    ``encode_image`` skips them; a study left with none is refused."""
    given = {s: f for s, f in given.items() if not state.sequences or s in state.sequences}
    if not given:
        raise HTTPException(400, f"no usable sequence: this model reads {', '.join(state.sequences)}")
    with tempfile.TemporaryDirectory(prefix="medalign-upload-") as td:
        paths = {s: read_upload(s, f.file, Path(td), state.max_file_bytes) for s, f in given.items()}
        return _encode_upload(state, paths, td), sorted(paths)


def _encode_upload(state: ServeState, paths: dict[str, str], td: str) -> np.ndarray:
    """(E,) embedding of spooled files; 400 with the problem (never the server's folder) when refused."""
    try:
        vec = state.encode_image(paths)  # (E,)
    except MedAlignError as e:  # the message names the spooled file: keep its name, not the server's folder
        raise HTTPException(400, f"upload could not be processed: {str(e).replace(td + '/', '')}") from None
    except (ValueError, OSError, RuntimeError, EOFError) as e:
        raise HTTPException(400, f"upload could not be processed: {type(e).__name__}") from None
    if not np.all(np.isfinite(vec)):
        raise HTTPException(400, "upload gave a non-finite embedding (empty or constant volume?)")
    return vec


def _dicom_embedding(state: ServeState, upload: UploadFile) -> tuple[np.ndarray, list[str]]:
    """(E,) embedding of a zipped DICOM study and the sequences found: unpacked under limits, then
    the identification and choice of ``medalign ingest`` (``study_volumes``), as ``encode_image`` of a
    DICOM folder does. Messages carry no file paths, patient names or UIDs; the folder is removed."""
    from medalign.data.ingest import study_volumes

    with tempfile.TemporaryDirectory(prefix="medalign-upload-") as td:
        folder = read_dicom_zip(upload.file, Path(td), state.max_file_bytes)
        try:
            paths = study_volumes(folder, Path(td) / "nifti", sequences=tuple(state.sequences) or None)
        except MedAlignError as e:  # "file <tmp>/dicom: no readable DICOM ..." -> the problem only
            msg = str(e).replace(f"file {folder}: ", "").replace(td + "/", "")
            raise HTTPException(400, f"upload 'dicom': {msg}") from None
        return _encode_upload(state, paths, td), sorted(paths)


def upload_router(state: ServeState, auth: list[DependsParam]) -> APIRouter:
    """``POST /search/upload``: one NIfTI per sequence form field, or one zipped DICOM study in the
    field ``dicom`` -> similar studies + zero-shot classes."""
    router = APIRouter()
    doc = ("One NIfTI file per sequence, each in a form field named by the sequence "
           f"(model uses: {', '.join(state.sequences) or 'any'}); or one zip of a DICOM study (any layout) in the "
           "field 'dicom': its series are identified as by `medalign ingest`. "
           f"Max {state.max_file_bytes >> 20} MiB per file.")

    # one explicit File parameter per known sequence, so the OpenAPI form lists every field
    @router.post("/search/upload", response_model=SearchResponse, dependencies=auth, description=doc,
                 responses={400: {"description": "bad or missing NIfTI / DICOM zip"}, 413: {"description": "too large"},
                            503: {"description": "too many uploads in flight; retry"}})
    def search_upload(k: int = Query(DEFAULT_TOP_K, ge=1, le=MAX_K),
                      dwi: UploadFile | None = File(None), adc: UploadFile | None = File(None),
                      t2s: UploadFile | None = File(None), flair: UploadFile | None = File(None),
                      t1: UploadFile | None = File(None), t2: UploadFile | None = File(None),
                      t1c: UploadFile | None = File(None),
                      dicom: UploadFile | None = File(None, description="a zip of one DICOM study")) -> SearchResponse:
        # a plain string in a file field (a form value, not a file) counts as absent
        given = {s: f for s, f in zip(KNOWN_SEQUENCES, (dwi, adc, t2s, flair, t1, t2, t1c))
                 if f is not None and not isinstance(f, str)}
        study = dicom if dicom is not None and not isinstance(dicom, str) else None
        if study is not None and given:
            raise HTTPException(400, "send either one DICOM study zip ('dicom') or NIfTI files per sequence, not both")
        if not given and study is None:
            raise HTTPException(400, "upload at least one NIfTI, in a form field named by its sequence, "
                                     "or a zipped DICOM study in the field 'dicom'")
        try:
            with state.uploads.slot():  # bounded: text queries never wait behind a queue of uploads
                vec, sequences = _dicom_embedding(state, study) if study else _upload_embedding(state, given)
        except ServerBusy as e:
            raise HTTPException(503, str(e), headers={"Retry-After": "2"}) from None
        store = state.current_store()
        pairs = store.search(vec, k, target="image")
        skipped = sorted(s for s in given if state.sequences and s not in state.sequences)
        query = {"type": "upload", "sequences": sequences, "k": k, **({"source": "dicom"} if study else {}),
                 **({"skipped": skipped} if skipped else {})}
        return SearchResponse(query=query,
                              results=_hits(state, pairs, store),
                              zero_shot=_zero_shot(state, vec))

    return router


def study_router(state: ServeState, auth: list[DependsParam]) -> APIRouter:
    """``GET /study/{study_id}`` (report, label, sequences) and ``GET /thumb/{study_id}/{sequence}.png``."""
    router = APIRouter()

    @router.get("/study/{study_id}", response_model=StudyDetail, dependencies=auth,
                responses={404: {"description": "unknown study id"}})
    def study(study_id: str = StudyId) -> StudyDetail:
        store = state.current_store()
        r = store.record(_row_or_404(state, study_id, store))
        return StudyDetail(study_id=r["study_id"], label=r["label"] or "", report=r["report"] or "",
                           split=r["split"] or "", sequences=sorted(r["thumbs"]))

    @router.get("/thumb/{study_id}/{sequence}.png", dependencies=auth, response_class=FileResponse,
                responses={200: {"content": {"image/png": {}}}, 404: {"description": "no such thumbnail"}})
    def thumb(study_id: str = StudyId,
              sequence: Literal["dwi", "adc", "t2s", "flair", "t1", "t2", "t1c"] = PathParam(...)) -> FileResponse:
        path = state.current_store().thumb_file(study_id, sequence)  # only paths recorded in the store, inside the index
        if path is None:
            raise HTTPException(404, "no such thumbnail")
        return FileResponse(path, media_type="image/png")

    return router


def attention_router(state: ServeState, auth: list[DependsParam]) -> APIRouter:
    """``POST /attention/{study_id}``: the query's attention overlay on the study's most attended slice(s).

    POST, with the query in the JSON body: a query string would put the text into every access log and
    browser history. The same map again is served from memory (serve/attention.py)."""
    router = APIRouter()

    @router.post("/attention/{study_id}", dependencies=auth, response_class=Response,
                 responses={200: {"content": {"image/png": {}},
                                  "description": "PNG: grey image, query attention in colour, L/R markers"},
                            404: {"description": "unknown study id, or no preprocessed volume for it"},
                            501: {"description": "this model draws no attention maps"},
                            503: {"description": "the map could not be drawn now; retry"}})
    def attention(q: AttentionQuery, study_id: str = StudyId) -> Response:
        store = state.current_store()
        _row_or_404(state, study_id, store)  # only studies of the index: never an arbitrary cache entry
        if state.overlays is None:
            raise HTTPException(501, "attention overlays are not set up on this server")
        try:
            png, info = state.overlays.get(study_id, q.text, q.slices)
        except OverlayUnavailable as e:
            raise HTTPException(e.status, str(e)) from None
        except (ValueError, RuntimeError) as e:  # e.g. Grad-CAM lost its hook to an interleaved upload
            raise HTTPException(503, f"attention map failed ({type(e).__name__}); retry",
                                headers={"Retry-After": "1"}) from None
        headers = {"Cache-Control": "no-store", "X-Attention-Method": str(info.get("method", "")),
                   "X-Overlay-Cache": str(info.get("cache", "")),
                   "X-Attention-Slices": ",".join(str(z) for z in info.get("slices", []))}
        return Response(png, media_type="image/png", headers=headers)

    return router


def page_router() -> APIRouter:
    """``GET /``: the web page (its scripts and styles are mounted at /static by the app)."""
    router = APIRouter()

    @router.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    return router
