"""Service hardening: loopback-by-default, bearer tokens, request size limits, log redaction."""
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
    if token is not None and len(token) < TOKEN_MIN_LEN:
        raise MedAlignError(f"--token must be at least {TOKEN_MIN_LEN} characters")
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


# ---- request size limit (pure ASGI, before any body is parsed) ------------------------------
class _TooLarge(Exception):
    pass


class BodySizeLimit:
    """Answer 413 to a request whose body is (or turns out to be) larger than ``max_bytes``."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, int(max_bytes)

    async def __call__(self, scope: dict, receive: Callable[[], Awaitable[dict]], send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for k, v in scope.get("headers", []):
            if k == b"content-length":
                try:
                    too_big = int(v) > self.max_bytes
                except ValueError:
                    too_big = True
                if too_big:
                    await _send_413(send, self.max_bytes)
                    return
        seen = 0
        started = False

        async def limited_receive() -> dict:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge()
            return msg

        async def tracking_send(msg: dict) -> None:
            nonlocal started
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await _send_413(send, self.max_bytes)


async def _send_413(send: Callable, limit: int) -> None:
    body = ('{"detail":"request body larger than %d bytes"}' % limit).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
