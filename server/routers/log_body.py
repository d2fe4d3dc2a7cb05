"""The body of `POST /api/pilots/internal/message`, read on a fast path.

FastAPI would parse the JSON body with the standard library and validate it with pydantic
into one model object a line, about a microsecond a line, the largest part of ingestion's
per-line cost outside SQLite. Here the route reads the bytes itself: orjson parses them,
and a batch of the usual shape (an object whose `lines` are objects with string fields
within the lengths of `LogLine`) is taken as plain tuples, after a check that accepts only
what `LogBatch` accepts. Anything else (another content type, no body, JSON orjson refuses,
a wrong type or a missing field anywhere) goes the slow way, `_as_fastapi_would`: the steps
FastAPI takes for a body parameter, so the client gets the same 422 or 400 as from a route
declaring `body: LogBatch` (tests/server/test_log_body.py compares the two).

The route documents the body with `OPENAPI`, the schema FastAPI would have generated.
"""

from __future__ import annotations

import email.message
import json
from typing import Any

import orjson
from annotated_types import MaxLen
from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import TypeAdapter, ValidationError

from server.logic.logs import WireLine
from server.models import LogBatch, LogLine


def _max_length(name: str) -> int:
    for rule in LogLine.model_fields[name].metadata:
        if isinstance(rule, MaxLen):
            return rule.max_length
    raise LookupError(name)


_TIMESTAMP_MAX = _max_length("timestamp")
_SEVERITY_MAX = _max_length("severity")
_SCOPE_MAX = _max_length("scope")
_SCOPE_DEFAULT: str = LogLine.model_fields["scope"].default
_BATCH = TypeAdapter(LogBatch)

_SCHEMA = LogBatch.model_json_schema(ref_template="#/components/schemas/{model}")
#: The request body as FastAPI documents `body: LogBatch`, inline (LogLine is in the
#: components through the legacy route's LegacyLogBatch; a test checks every $ref resolves).
OPENAPI: dict[str, Any] = {
    "requestBody": {
        "content": {
            "application/json": {"schema": {k: v for k, v in _SCHEMA.items() if k != "$defs"}}
        },
        "required": True,
    }
}


def fast_lines(data: Any) -> list[WireLine] | None:
    """The lines of a parsed body as (timestamp, severity, message, scope), or None when the
    body is not plainly a valid LogBatch (then pydantic decides, and explains)."""
    if type(data) is not dict:
        return None
    stamp = data.get("pilot_stamp")
    if stamp is not None and type(stamp) is not str:
        return None
    lines = data.get("lines", [])
    if type(lines) is not list:
        return None
    out: list[WireLine] = []
    append = out.append
    for line in lines:
        if type(line) is not dict:
            return None
        timestamp = line.get("timestamp")
        severity = line.get("severity")
        message = line.get("message")
        scope = line.get("scope", _SCOPE_DEFAULT)
        if (
            type(timestamp) is not str
            or type(severity) is not str
            or type(message) is not str
            or type(scope) is not str
            or len(timestamp) > _TIMESTAMP_MAX
            or len(severity) > _SEVERITY_MAX
            or len(scope) > _SCOPE_MAX
        ):
            return None
        append((timestamp, severity, message, scope))
    return out


async def read_lines(request: Request) -> list[WireLine]:
    """The batch's lines, or the 422/400 FastAPI would answer for this body."""
    raw = await request.body()
    content_type = request.headers.get("content-type")
    if raw and content_type is not None and content_type.lower() == "application/json":
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass  # maybe valid for json (a lone surrogate, NaN): the slow path says
        else:
            lines = fast_lines(data)
            if lines is not None:
                return lines
    batch = _as_fastapi_would(raw, content_type)
    return [(x.timestamp, x.severity, x.message, x.scope) for x in batch.lines]


def _as_fastapi_would(raw: bytes, content_type: str | None) -> LogBatch:
    """FastAPI's handling of a single body parameter (fastapi.routing.get_request_handler):
    JSON only for a JSON content type (strict: none is no JSON), a decoding error as
    `json_invalid`, any other failure to read it as 400, no body as `missing`, then the model's
    validation errors under `body`."""
    body: Any = None
    if raw:
        body = raw
        if content_type:
            kind = email.message.Message()
            kind["content-type"] = content_type
            subtype = kind.get_content_subtype()
            if kind.get_content_maintype() == "application" and (
                subtype == "json" or subtype.endswith("+json")
            ):
                try:
                    body = json.loads(raw)
                except json.JSONDecodeError as exc:
                    raise RequestValidationError(
                        [
                            {
                                "type": "json_invalid",
                                "loc": ("body", exc.pos),
                                "msg": "JSON decode error",
                                "input": {},
                                "ctx": {"error": exc.msg},
                            }
                        ],
                        body=exc.doc,
                    ) from exc
                except Exception as exc:  # e.g. bytes that are not UTF-8
                    raise HTTPException(400, "There was an error parsing the body") from exc
    if body is None:
        missing = {"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}
        raise RequestValidationError([missing])
    try:
        return _BATCH.validate_python(body, from_attributes=True)
    except ValidationError as exc:
        errors = [
            {**error, "loc": ("body", *error["loc"])} for error in exc.errors(include_url=False)
        ]
        raise RequestValidationError(errors, body=body) from exc
