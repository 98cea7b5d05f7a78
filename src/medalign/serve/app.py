"""FastAPI case-retrieval service over an index directory (see ``medalign serve``).

Endpoints (all JSON unless noted; OpenAPI at /openapi.json; no /docs: Swagger UI would load from a CDN):

- ``GET /health``                       index size, model id, whether a token is required
- ``POST /search/text``                 {text, k, target} -> studies whose image (or report) is closest
- ``GET /search/study/{study_id}?k=``   studies closest to a study of the index (itself excluded)
- ``POST /search/upload``               multipart, one NIfTI per sequence field -> studies + zero-shot classes
- ``GET /study/{study_id}``             report, label, thumbnails of one study
- ``GET /thumb/{study_id}/{sequence}.png``  mid-axial thumbnail
- ``POST /attention/{study_id}``        {text, slices} -> PNG: the query's attention over the study's most
                                        attended axial slice(s) (GLoRIA word attention / CLIP Grad-CAM)
- ``GET /``                              the web page (static/index.html)

A new index version (``medalign index add`` / ``build`` into the same folder) is picked up
without a restart: see ``ServeState.current_store``.

Study ids are checked against a strict pattern and looked up in the store; file paths never
come from a request. The app logs method, route template, status and latency only. Before any
route runs (security.py): Host allow-list (400), bearer token (401), body size (413), without
reading the body; every response carries CSP / X-Frame-Options / nosniff headers; 422 bodies
name the field and the problem, never echo the input.

Layout: state.py (limits, prompts, the shared ServeState), schemas.py (bodies), uploads.py (NIfTI
checks), attention.py (overlays: maps, volumes, cache), routes.py (one router per concern); this module
assembles them and runs uvicorn.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from medalign.errors import MedAlignError
from medalign.index.store import IndexStore
from medalign.serve.security import LOOPBACK_HOSTS
from medalign.serve.state import (MAX_FILE_BYTES, MAX_JSON_BYTES, MAX_REQUEST_BYTES, STATIC_DIR, ServeState,
                                  open_index)
# re-exported: both lived here before the split, and callers (tests/serve) import them from here
from medalign.serve.state import load_class_prompts  # noqa: F401
from medalign.serve.uploads import nifti_suffix as _nifti_suffix  # noqa: F401

log = logging.getLogger("medalign.serve")


def create_app(index: str | Path | IndexStore, model: Any = None, *, token: str | None = None,
               max_file_bytes: int = MAX_FILE_BYTES, max_request_bytes: int = MAX_REQUEST_BYTES,
               max_json_bytes: int = MAX_JSON_BYTES, prompts_path: str | Path | None = None,
               hosts: list[str] | None = None, batch_window_s: float = 0.002, cache_size: int = 4096,
               max_uploads: int = 1, max_waiting_uploads: int = 4, reload_s: float = 1.0,
               volumes: str | Path | None = None, overlay_dir: str | Path | None = None,
               overlay_cache_size: int = 256) -> Any:
    """Build the ASGI app. ``model`` defaults to ``medalign.api.load(meta['run_dir'])``.

    Throughput knobs (state.py, batching.py): concurrent text queries are encoded together after
    waiting up to ``batch_window_s``; ``cache_size`` query embeddings are kept (LRU); at most
    ``max_uploads`` uploads preprocess at once and ``max_waiting_uploads`` queue (more get 503).
    The index directory is re-checked at most every ``reload_s`` seconds (negative: never) and a
    new version is swapped in without a restart. Attention overlays are drawn on ``volumes`` (the
    preprocessed cohort cache the index was built from; default the run's ``data.cache_dir``), kept
    in memory (``overlay_cache_size`` PNGs) and, when ``overlay_dir`` is given, on disk.

    ``hosts``: allowed Host headers (default: loopback names and ``testserver``, the in-process
    test client's; ``serve`` passes :func:`security.allowed_hosts` of its bind address).
    Raises MedAlignError if the model is not the one that built the index.
    """
    # FastAPI is the optional "serve" extra: imported here so this module imports without it
    from fastapi import FastAPI
    from fastapi.staticfiles import StaticFiles

    from medalign.serve import routes
    from medalign.serve.security import install_log_filter

    store, model = open_index(index, model)
    install_log_filter()
    state = ServeState.build(store, model, token=token, max_file_bytes=max_file_bytes, prompts_path=prompts_path,
                             batch_window_s=batch_window_s, cache_size=cache_size, max_uploads=max_uploads,
                             max_waiting_uploads=max_waiting_uploads, reload_s=reload_s, volumes=volumes,
                             overlay_dir=overlay_dir, overlay_cache_size=overlay_cache_size)

    app = FastAPI(title="medalign case retrieval", version="1", docs_url=None, redoc_url=None,
                  description="Similar-case search over a medalign index: text, study and upload queries.")
    app.state.serve = state
    app.state.store, app.state.model = store, model
    auth = routes.auth_dependencies(state)
    for router in (routes.health_router(state), routes.search_router(state, auth), routes.upload_router(state, auth),
                   routes.study_router(state, auth), routes.attention_router(state, auth), routes.page_router()):
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    _install_middleware(app, max_request_bytes, max_json_bytes, token,
                        hosts if hosts is not None else [*LOOPBACK_HOSTS, "testserver"])
    return app


def _install_middleware(app: Any, max_request_bytes: int, max_json_bytes: int, token: str | None,
                        hosts: list[str]) -> None:
    """Request log (route templates only), MedAlignError -> 400, 422 without input, and (outermost
    first) security headers -> Host allow-list -> token -> body size."""
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    from medalign.serve.security import RequestGate, SecurityHeaders

    @app.exception_handler(MedAlignError)
    async def _medalign_error(request: Request, exc: MedAlignError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's default echoes the offending input (a 1 MB query text came back whole)
        errors = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", ""))[:200], "type": e.get("type", "")}
                  for e in exc.errors()[:20]]
        return JSONResponse({"detail": errors}, status_code=422)

    # each add_middleware wraps the previous ones: the last added runs first
    app.add_middleware(RequestLog)
    app.add_middleware(RequestGate, max_bytes=max_request_bytes, token=token, max_json_bytes=max_json_bytes)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=hosts, www_redirect=False)
    app.add_middleware(SecurityHeaders)


class RequestLog:
    """Log method, route template, status and latency of each request (pure ASGI: Starlette's
    ``@app.middleware("http")`` costs about a millisecond per request, a third of a text search).

    The router records the route it picked in the (shared) scope; only its template is logged,
    never the study id, query string, report or body. Static files (a Mount) log as unmatched.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from fastapi.routing import APIRoute

        t0 = time.perf_counter()
        status = [500]

        async def send_status(msg: dict) -> None:
            if msg["type"] == "http.response.start":
                status[0] = msg["status"]
            await send(msg)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            template = route.path if isinstance(route, APIRoute) else "<unmatched>"
            log.info("%s %s %d %.1fms", scope.get("method", ""), template, status[0], 1000 * (time.perf_counter() - t0))


def serve(index_dir: str | Path, *, host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
          run_dir: str | None = None, model: Any = None, extra_hosts: tuple[str, ...] = (), **app_kwargs: Any) -> None:
    """Run the app with uvicorn (access log off; the app logs route templates only); ``app_kwargs``
    go to :func:`create_app` (batching window, cache size, upload limits, reload interval)."""
    import uvicorn

    from medalign.serve.security import allowed_hosts, check_bind, install_log_filter

    check_bind(host, token)
    if model is None and run_dir:
        from medalign.api import load

        model = load(run_dir)
    app = create_app(index_dir, model, token=token, hosts=allowed_hosts(host, extra_hosts), **app_kwargs)
    install_log_filter()
    uvicorn.run(app, host=host, port=port, access_log=False, log_level="info")
