"""The ASGI middleware: access log and metrics, auth before body, body limits, fast lane.

Plain ASGI, not Starlette's BaseHTTPMiddleware, and one layer (`Front`): it wraps every request,
so it stays cheap.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from http import HTTPStatus
from typing import Any

from starlette.exceptions import HTTPException as StarletteHTTPException

from server.http.bodyguard import (
    BODY_METHODS,
    PUBLIC_BODY_LIMIT,
    PUBLIC_BODY_PATHS,
    anonymous_refusal,
    send_json,
)
from server.http.hotpath import HotRoute
from server.http.metrics import LATENCY, REQUESTS

log = logging.getLogger("server.access")

MAX_BODY_BYTES = 16 * 1024 * 1024
_TOO_LARGE = b'{"detail":"Request body too large"}'

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class _BodyTooLarge(StarletteHTTPException):
    """An HTTPException, because FastAPI turns any other error raised while it reads the body
    into "400 There was an error parsing the body"; this one it lets through as a 413."""

    def __init__(self) -> None:
        super().__init__(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "Request body too large")


#: how many (method, route, status) series the middleware keeps at hand (a bound: methods are
#: free text; those past it are looked up each time, as before)
_MAX_SERIES = 1024


def _figures(method: str, path: str, status: int) -> tuple[Any, Any]:
    return REQUESTS.labels(method, path, str(status)), LATENCY.labels(method, path)


class Front:
    """The one middleware around every request (a single ASGI layer: each layer costs a call
    and a wrapped `send` per request), in this order:

    1. the access log line and the Prometheus figures, whatever the answer;
    2. authentication before the body (`server.http.bodyguard`): a request with a body to
       an `/api/` route that takes a token is refused from its headers alone;
    3. the body limit: 64 KiB on the public routes, 16 MiB elsewhere, 413 before the app
       parses anything, whether the length is declared or the stream does not end;
    4. the fast lane (`server.http.hotpath`) for the hottest routes, else the FastAPI app.
    """

    def __init__(self, app: ASGIApp, hot: Sequence[HotRoute] = (), routes: Any = ()) -> None:
        self.app = app
        # (method, route, status) -> its counter and histogram: `labels()` checks and locks
        # on every call
        self._figures: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self.hot = {(r.method, r.path): r for r in hot}
        # the route objects the access log labels the metrics with (FastAPI sets
        # scope["route"] when it routes; the fast lane sets the same object)
        self.route_of: dict[tuple[str, str], Any] = {}
        for route in routes:
            for method in getattr(route, "methods", None) or ():
                if (method, route.path) in self.hot:
                    self.route_of[(method, route.path)] = route
        missing = sorted(set(self.hot) - set(self.route_of))
        if missing:
            # a fast lane stands for a FastAPI route (its schema, policy walk, fallback)
            raise ValueError(f"fast-lane routes without a FastAPI route: {missing}")

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
            await self._serve(scope, receive, capture)
        finally:
            elapsed = time.perf_counter() - start
            route = scope.get("route")
            key = (scope["method"], getattr(route, "path", "unmatched"), status)
            figures = self._figures.get(key)
            if figures is None:
                figures = _figures(*key)
                if len(self._figures) < _MAX_SERIES:
                    self._figures[key] = figures
            figures[0].inc()
            figures[1].observe(elapsed)
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

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        method, path = scope["method"], scope["path"]
        limit = MAX_BODY_BYTES
        if method in BODY_METHODS and path.startswith("/api/"):
            if path.rstrip("/") in PUBLIC_BODY_PATHS:
                limit = PUBLIC_BODY_LIMIT
            else:
                refusal = anonymous_refusal(scope)
                if refusal is not None:
                    await send_json(send, HTTPStatus.UNAUTHORIZED, refusal)
                    return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                await send_json(send, HTTPStatus.REQUEST_ENTITY_TOO_LARGE, _TOO_LARGE)
                return
        hot = self.hot.get((method, path))
        if hot is not None:
            await self._fast(hot, scope, receive, send, limit)
            return
        await self._limited(scope, receive, send, limit)

    async def _fast(
        self, hot: HotRoute, scope: Scope, receive: Receive, send: Send, limit: int
    ) -> None:
        """The fast lane: the whole body first (within the limit), then the hot route's
        answer, or the FastAPI app with the body replayed."""
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away before its body was complete
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > limit:
                await send_json(send, HTTPStatus.REQUEST_ENTITY_TOO_LARGE, _TOO_LARGE)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        raw = b"".join(chunks)
        scope["route"] = self.route_of.get((hot.method, hot.path))
        response = await hot.answer(scope["app"].state.ctx, scope, raw)
        if response is not None:
            await response(scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": raw, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _limited(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        """The FastAPI app, with the body counted as it is read."""
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
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
                await send_json(send, HTTPStatus.REQUEST_ENTITY_TOO_LARGE, _TOO_LARGE)
