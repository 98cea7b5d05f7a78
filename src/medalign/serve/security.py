"""Service hardening: loopback-by-default, bearer tokens checked before bodies, size limits, Host
allow-list, security headers, log redaction."""
from __future__ import annotations

import hmac
import ipaddress
import logging
import re
from typing import Any, Awaitable, Callable

from medalign.errors import MedAlignError

LOOPBACK_NAMES = {"localhost", "ip6-localhost"}
TOKEN_MIN_LEN = 16


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and 'localhost'."""
    h = host.strip().strip("[]").lower()
    if h in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse to bind a non-loopback address without a (long enough) bearer token."""
    if token is not None and (len(token.strip()) < TOKEN_MIN_LEN or token != token.strip()):
        raise MedAlignError(f"--token must be at least {TOKEN_MIN_LEN} characters, without surrounding whitespace")
    if not is_loopback(host) and not token:
        raise MedAlignError(
            f"refusing to serve on {host} without a bearer token: pass --token (or MEDALIGN_TOKEN), "
            "or bind 127.0.0.1")


def token_ok(header: str | None, token: str) -> bool:
    """Constant-time check of an ``Authorization: Bearer <token>`` header."""
    if not header or not header.startswith("Bearer "):
        return False
    return hmac.compare_digest(header[len("Bearer "):].strip().encode(), token.encode())


# ---- logging ------------------------------------------------------------------------------
_QUERY_RE = re.compile(r"\?[^\s\"']*")


class RedactFilter(logging.Filter):
    """Drop query strings from log records (uvicorn's access log puts the full path in args).

    Report text and patient ids only ever travel in request bodies or query strings, and the
    app itself logs route templates, never values, so stripping queries closes the last gap.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and record.args:
            record.args = tuple(_QUERY_RE.sub("?<redacted>", a) if isinstance(a, str) else a for a in record.args)
        if isinstance(record.msg, str) and "?" in record.msg:
            record.msg = _QUERY_RE.sub("?<redacted>", record.msg)
        return True


def install_log_filter(names: tuple[str, ...] = ("uvicorn.access", "uvicorn.error", "medalign.serve")) -> RedactFilter:
    f = RedactFilter()
    for n in names:
        lg = logging.getLogger(n)
        if not any(isinstance(x, RedactFilter) for x in lg.filters):
            lg.addFilter(f)
    return f


# ---- the gate: auth, then size, before any body is read (pure ASGI) -------------------------
PUBLIC_PATHS = ("/health", "/", "/openapi.json")  # plus /static/*: no secrets, no bodies
UPLOAD_PATHS = ("/search/upload",)


class RequestGate:
    """Answer 401 (no/wrong token) and then 413 (body over the route's limit) before the app runs.

    Why here and not in a route dependency: FastAPI parses (and for multipart, spools to disk)
    the whole body before any dependency runs, so an unauthenticated client could make the server
    store 200 MB before its 401. Upload routes get ``max_request_bytes``; every other route
    ``max_json_bytes``; the body is counted as it streams in (a lying Content-Length is caught too).
    """

    def __init__(self, app: Any, max_bytes: int, token: str | None = None, max_json_bytes: int = 64 << 10) -> None:
        self.app, self.max_bytes, self.token, self.max_json_bytes = app, int(max_bytes), token, int(max_json_bytes)

    async def __call__(self, scope: dict, receive: Callable[[], Awaitable[dict]], send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        headers = dict(scope.get("headers", []))
        public = path in PUBLIC_PATHS or path.startswith("/static/")
        if self.token and not public:
            auth = headers.get(b"authorization", b"").decode("latin-1")
            if not token_ok(auth, self.token):
                await _send_json(send, 401, "missing or wrong bearer token", [(b"www-authenticate", b"Bearer")])
                return
        limit = self.max_bytes if path in UPLOAD_PATHS else self.max_json_bytes
        if b"content-length" in headers:
            try:
                too_big = int(headers[b"content-length"]) > limit
            except ValueError:
                too_big = True
            if too_big:
                await _send_json(send, 413, f"request body larger than {limit} bytes")
                return
        seen = 0
        refused = False  # once the 413 is out, the app sees a disconnect and its reply is dropped

        async def limited_receive() -> dict:
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit:
                    refused = True
                    if not started:
                        await _send_json(send, 413, f"request body larger than {limit} bytes")
                    return {"type": "http.disconnect"}
            return msg

        started = False

        async def tracking_send(msg: dict) -> None:
            nonlocal started
            if refused:
                return
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        await self.app(scope, limited_receive, tracking_send)


async def _send_json(send: Callable, status: int, detail: str, extra: list | None = None) -> None:
    import json

    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(extra or [])]})
    await send({"type": "http.response.body", "body": body})


# ---- security headers on every response ----------------------------------------------------
SECURITY_HEADERS = [
    # the page loads its script and style from /static only; nothing may frame it
    (b"content-security-policy", b"default-src 'self'; img-src 'self' data: blob:; object-src 'none'; "
                                 b"base-uri 'none'; form-action 'self'; frame-ancestors 'none'"),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-resource-policy", b"same-origin"),
]


class SecurityHeaders:
    """Add :data:`SECURITY_HEADERS` to every HTTP response (errors from other middleware included)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(msg: dict) -> None:
            if msg["type"] == "http.response.start":
                have = {k.lower() for k, _ in msg.get("headers", [])}
                msg = {**msg, "headers": [*msg.get("headers", []), *[h for h in SECURITY_HEADERS if h[0] not in have]]}
            await send(msg)

        await self.app(scope, receive, send_with_headers)


LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "::1", "[::1]"]


def allowed_hosts(bind: str, extra: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Host headers the server answers: loopback names, the bind address (unless a wildcard), ``extra``.

    A Host allow-list is what stops DNS rebinding: a page on evil.example re-pointed at 127.0.0.1
    sends ``Host: evil.example``, which is refused with 400.
    """
    hosts = list(LOOPBACK_HOSTS)
    if bind not in ("0.0.0.0", "::", "") and bind not in hosts:
        hosts.append(bind)
    return hosts + [h for h in extra if h not in hosts]
