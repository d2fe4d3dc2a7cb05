"""The exception handlers: domain errors through the one table (`server.errors.STATUS_OF`),
request validation errors, and values Python itself refuses.

Driver errors never get here as such: the database layer translates them into domain errors
(`server.db.driver_errors`). `install(app)` registers the handlers.
"""

from __future__ import annotations

import json
import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from server.errors import ServerDomainError, status_of


def _domain_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServerDomainError)
    return domain_error_response(exc)


def domain_error_response(exc: ServerDomainError) -> JSONResponse:
    """The answer to a domain error, from the one table (also the fast lane's)."""
    headers = None if exc.retry_after is None else {"Retry-After": str(exc.retry_after)}
    return _AsciiJSONResponse({"detail": exc.detail}, status_of(exc), headers=headers)


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
    return bad_value_response(exc)


def bad_value_response(exc: Exception) -> JSONResponse:
    """A value Python cannot encode or convert outside the database (an unpaired surrogate,
    an integer beyond any range): the client's fault, so 400, not 500 (as InvalidValue)."""
    logging.getLogger("server").info("refused a value: %s", type(exc).__name__)
    return JSONResponse({"detail": "Invalid value in the request"}, HTTPStatus.BAD_REQUEST)


def install(app: FastAPI) -> None:
    app.add_exception_handler(ServerDomainError, _domain_error)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    for bad_value in (UnicodeEncodeError, OverflowError):
        app.add_exception_handler(bad_value, _bad_value)
