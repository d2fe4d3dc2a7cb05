"""The FastAPI application: routers, the error table, access logs, metrics and size limits.

`create_app(settings)` builds everything from settings passed in; nothing is read from globals,
so tests make as many apps as they like (one per database backend).
"""

from __future__ import annotations

import errno
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import Counter, Histogram
from sqlalchemy.exc import DataError, DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from server.bodyguard import AuthBeforeBody
from server.context import ServerContext
from server.db.engine import Database
from server.db.migrate import upgrade
from server.errors import RateLimited, ServerDomainError, status_of
from server.http.policies import LoginRequired
from server.installation import open_server_keys, record_vos
from server.monitor.origin import CrossSiteRequest
from server.routers import (
    auth,
    bans,
    cetokens,
    director,
    home,
    leases,
    logs,
    monitor,
    monitor_requests,
    pilot_requests,
    pilots,
    responses,
    secrets,
    wellknown,
)
from server.scheduler import MaintenanceRunner
from server.settings import ServerSettings

log = logging.getLogger("server.access")

MAX_BODY_BYTES = 16 * 1024 * 1024

REQUESTS = Counter(
    "site_director_server_requests_total", "HTTP requests served", ["method", "route", "status"]
)
LATENCY = Histogram(
    "site_director_server_request_seconds",
    "HTTP request latency",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)

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
                await _send_json(
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
                await _send_json(
                    send,
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                    b'{"detail":"Request body too large"}',
                )


class _BodyTooLarge(StarletteHTTPException):
    """An HTTPException, because FastAPI turns any other error raised while it reads the body
    into "400 There was an error parsing the body"; this one it lets through as a 413."""

    def __init__(self) -> None:
        super().__init__(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "Request body too large")


async def _send_json(send: Send, status: int, body: bytes) -> None:
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


def _domain_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServerDomainError)
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, RateLimited) else None
    return _AsciiJSONResponse({"detail": exc.detail}, status_of(exc), headers=headers)


def _is_bad_value(exc: Exception) -> bool:
    """A driver error caused by a value (SQLSTATE class 22, data exception), not by the
    database being away: asyncpg reports those as a generic DBAPI error with the code."""
    if isinstance(exc, DataError):
        return True
    code = getattr(getattr(exc, "orig", None), "sqlstate", None)
    return isinstance(code, str) and code.startswith("22")


def _is_disk_full(exc: BaseException) -> bool:
    """No space left for the database: SQLite's SQLITE_FULL ("database or disk is full"),
    ENOSPC, PostgreSQL's disk_full (SQLSTATE 53100), MySQL's "table is full" (1114)."""
    orig = getattr(exc, "orig", None)
    for error in (exc, orig, exc.__cause__, getattr(orig, "__cause__", None)):
        if error is None:
            continue
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return True
        if getattr(error, "sqlite_errorcode", None) == 13:  # sqlite3.SQLITE_FULL
            return True
        if getattr(error, "sqlstate", None) == "53100" or getattr(error, "pgcode", None) == "53100":
            return True
        text = str(error)
        if "database or disk is full" in text or "No space left on device" in text:
            return True
        args = getattr(error, "args", ())
        if args and args[0] == 1114:  # MySQL ER_RECORD_FILE_FULL
            return True
    return False


def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """The database is down or overloaded: 503 so clients retry, never a bare 500. Its disk
    full: 507 naming that (clients retry 5xx alike; nothing was stored)."""
    if _is_bad_value(exc):
        return _bad_value(request, exc)
    if _is_disk_full(exc):
        reason = str(getattr(exc, "orig", None) or exc)[:200]  # the driver's words, no SQL
        logging.getLogger("server").error("storage full, a write was refused: %s", reason)
        return JSONResponse(
            {"detail": "Server storage full: no space left on the database's disk, retry later"},
            HTTPStatus.INSUFFICIENT_STORAGE,
            headers={"Retry-After": "30"},
        )
    logging.getLogger("server").warning("database unavailable: %s", type(exc).__name__)
    return JSONResponse(
        {"detail": "Database unavailable, retry later"},
        HTTPStatus.SERVICE_UNAVAILABLE,
        headers={"Retry-After": "5"},
    )


class _AsciiJSONResponse(JSONResponse):
    """JSON with non-ASCII escaped: an input echoed back with an unpaired surrogate
    (`"\\ud800"` is valid JSON) cannot be encoded as UTF-8 and would turn a 422 into a 500."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode()


_MAX_ECHO = 256


def _short_input(error: dict[str, Any]) -> dict[str, Any]:
    """Pydantic puts the offending input in each error; a hostile body of megabytes would come
    back whole (a 9 MB 422 for a 9 MB list). Small scalars are kept, anything else dropped."""
    value = error.get("input")
    small = (
        value is None
        or isinstance(value, bool | int | float)
        or (isinstance(value, str) and len(value) <= _MAX_ECHO)
    )
    short = error if small else {k: v for k, v in error.items() if k != "input"}
    loc = short.get("loc", ())
    if any(isinstance(part, str) and len(part) > _MAX_ECHO for part in loc):
        # a megabyte-long JSON key comes back in `loc` too
        short = {**short, "loc": [p[:_MAX_ECHO] if isinstance(p, str) else p for p in loc]}
    return short


def _invalid_request(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [_short_input(e) for e in exc.errors()[:100]]
    return _AsciiJSONResponse({"detail": jsonable_encoder(errors)}, HTTPStatus.UNPROCESSABLE_ENTITY)


def _bad_value(_: Request, exc: Exception) -> JSONResponse:
    """A value the database or its driver cannot take (an unpaired surrogate, an integer
    beyond 64 bits, a NUL in PostgreSQL text...): the client's fault, so 400, not 500/503."""
    logging.getLogger("server").info("refused a value: %s", type(exc).__name__)
    return JSONResponse({"detail": "Invalid value in the request"}, HTTPStatus.BAD_REQUEST)


def create_app(settings: ServerSettings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        db = Database(settings.database_url)
        if settings.auto_migrate:
            await upgrade(db)
        keys = open_server_keys(settings)
        record_vos(settings.data_dir, settings.vos)
        app.state.ctx = ServerContext(settings=settings, db=db, keys=keys)
        # the scheduled maintenance: every process ticks, the lease holder runs it
        app.state.maintenance = MaintenanceRunner(app.state.ctx) if settings.maintenance else None
        if app.state.maintenance is not None:
            app.state.maintenance.start()
        try:
            yield
        finally:
            if app.state.maintenance is not None:
                await app.state.maintenance.stop()
            await db.close()

    app = FastAPI(
        title="Site Director server",
        version="0.1.0",
        lifespan=lifespan,
        description="Pilot and auth endpoints, wire-compatible with DiracX 0.7.0.",
    )
    app.add_exception_handler(ServerDomainError, _domain_error)
    app.add_exception_handler(LoginRequired, monitor.login_required)
    app.add_exception_handler(CrossSiteRequest, monitor.cross_site_refused)
    for db_error in (OperationalError, PoolTimeout, DBAPIError, ConnectionError, OSError):
        app.add_exception_handler(db_error, _database_unavailable)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    for bad_value in (UnicodeEncodeError, OverflowError):
        app.add_exception_handler(bad_value, _bad_value)
    for router in (
        pilots.router,
        secrets.router,
        logs.router,
        auth.router,
        leases.router,
        director.router,
        bans.router,
        pilot_requests.router,
        cetokens.router,
        wellknown.router,
        monitor.router,
        monitor_requests.router,
        home.router,
    ):
        app.include_router(responses.document(router))
    app.add_middleware(BodyLimit)
    app.add_middleware(AuthBeforeBody)
    app.add_middleware(AccessLog)
    return app
