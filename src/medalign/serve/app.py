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

Layout: state.py (limits, prompts, the shared ServeState), schemas.py (bodies), uploads.py (NIfTI
checks), routes.py (one router per concern); this module assembles them and runs uvicorn.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from medalign.errors import MedAlignError
from medalign.index.store import IndexStore
from medalign.serve.state import MAX_FILE_BYTES, MAX_REQUEST_BYTES, STATIC_DIR, ServeState, open_index
# re-exported: both lived here before the split, and callers (tests/serve) import them from here
from medalign.serve.state import load_class_prompts  # noqa: F401
from medalign.serve.uploads import nifti_suffix as _nifti_suffix  # noqa: F401

log = logging.getLogger("medalign.serve")


def create_app(index: str | Path | IndexStore, model: Any = None, *, token: str | None = None,
               max_file_bytes: int = MAX_FILE_BYTES, max_request_bytes: int = MAX_REQUEST_BYTES,
               prompts_path: str | Path | None = None) -> Any:
    """Build the ASGI app. ``model`` defaults to ``medalign.api.load(meta['run_dir'])``.

    Raises MedAlignError if the model is not the one that built the index.
    """
    # FastAPI is the optional "serve" extra: imported here so this module imports without it
    from fastapi import FastAPI
    from fastapi.staticfiles import StaticFiles

    from medalign.serve import routes
    from medalign.serve.security import install_log_filter

    store, model = open_index(index, model)
    install_log_filter()
    state = ServeState.build(store, model, token=token, max_file_bytes=max_file_bytes, prompts_path=prompts_path)

    app = FastAPI(title="medalign case retrieval", version="1",
                  description="Similar-case search over a medalign index: text, study and upload queries.")
    app.state.serve = state
    app.state.store, app.state.model = store, model
    auth = routes.auth_dependencies(state)
    for router in (routes.health_router(state), routes.search_router(state, auth), routes.upload_router(state, auth),
                   routes.study_router(state, auth), routes.page_router()):
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    _install_middleware(app, max_request_bytes)
    return app


def _install_middleware(app: Any, max_request_bytes: int) -> None:
    """Request log (route templates only), MedAlignError -> 400, and the body size limit."""
    from fastapi import Request
    from fastapi.responses import JSONResponse
    from fastapi.routing import APIRoute

    from medalign.serve.security import BodySizeLimit

    @app.middleware("http")
    async def log_requests(request: Request, call_next: Any) -> Any:
        t0 = time.perf_counter()
        response = await call_next(request)
        # the router records the route it picked in the (shared) scope; log its template only, never
        # the study id, query string, report or body. Static files (a Mount) log as unmatched.
        route = request.scope.get("route")
        template = route.path if isinstance(route, APIRoute) else "<unmatched>"
        log.info("%s %s %d %.1fms", request.method, template, response.status_code, 1000 * (time.perf_counter() - t0))
        return response

    @app.exception_handler(MedAlignError)
    async def _medalign_error(request: Request, exc: MedAlignError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    # added last = outermost: reject oversize bodies before multipart parsing spools them to disk
    app.add_middleware(BodySizeLimit, max_bytes=max_request_bytes)


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
