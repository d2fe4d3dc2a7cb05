"""The exception handlers: domain errors through the one table (`server.errors.STATUS_OF`),
request validation errors, and values Python itself refuses.

`install(app)` registers them all.
"""

from __future__ import annotations

import errno
import json
import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from server.errors import RateLimited, ServerDomainError, status_of


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


def install(app: FastAPI) -> None:
    app.add_exception_handler(ServerDomainError, _domain_error)
    for db_error in (OperationalError, PoolTimeout, DBAPIError, ConnectionError, OSError):
        app.add_exception_handler(db_error, _database_unavailable)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    for bad_value in (UnicodeEncodeError, OverflowError):
        app.add_exception_handler(bad_value, _bad_value)
