"""ASGI middleware: the body size limit and the access log (with the request metrics).

Plain ASGI, not Starlette's BaseHTTPMiddleware: they wrap every request, so they stay cheap.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from http import HTTPStatus
from typing import Any

from starlette.exceptions import HTTPException as StarletteHTTPException

from server.http.metrics import LATENCY, REQUESTS

log = logging.getLogger("server.access")

MAX_BODY_BYTES = 16 * 1024 * 1024

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodyLimit:
    """Refuse bodies over `limit` bytes with 413 before the app parses them: memory stays
    bounded whatever a client sends (declared length or a stream that does not end)."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                await send_json(
                    send,
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                    b'{"detail":"Request body too large"}',
                )
                return
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _BodyTooLarge()
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await send_json(
                    send,
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                    b'{"detail":"Request body too large"}',
                )


class _BodyTooLarge(StarletteHTTPException):
    """An HTTPException, because FastAPI turns any other error raised while it reads the body
    into "400 There was an error parsing the body"; this one it lets through as a 413."""

    def __init__(self) -> None:
        super().__init__(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "Request body too large")


async def send_json(send: Send, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class AccessLog:
    """One key=value line and the Prometheus figures per request; never the query string
    (the DIRAC pilot sends its refresh token in one)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            elapsed = time.perf_counter() - start
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            REQUESTS.labels(scope["method"], path, str(status)).inc()
            LATENCY.labels(scope["method"], path).observe(elapsed)
            if log.isEnabledFor(logging.INFO):
                client = scope.get("client") or ("-", 0)
                log.info(
                    "method=%s path=%s status=%d ms=%.1f client=%s",
                    scope["method"],
                    scope["path"],
                    status,
                    elapsed * 1000,
                    client[0],
                )
