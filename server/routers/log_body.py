"""The body of `POST /api/pilots/internal/message`, read on a fast path.

FastAPI would parse the JSON body with the standard library and validate it with pydantic
into one model object a line, about a microsecond a line, the largest part of ingestion's
per-line cost outside SQLite. Here the route reads the bytes itself: orjson parses them,
and a batch of the usual shape (an object whose `lines` are objects with string fields
within the lengths of `LogLine`) is taken as plain tuples, after a check that accepts only
what `LogBatch` accepts. Anything else (another content type, no body, JSON orjson refuses,
a wrong type or a missing field anywhere) goes the slow way, `as_fastapi_would`: the steps
FastAPI takes for a body parameter, so the client gets the same 422 or 400 as from a route
declaring `body: LogBatch` (tests/server/test_log_body.py compares the two).

The route documents the body with `OPENAPI`, the schema FastAPI would have generated.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from pydantic import TypeAdapter

from server.logic.logs import WireLine
from server.models import LogBatch, LogLine
from server.routers.fastapi_body import max_length, read_body

_TIMESTAMP_MAX = max_length(LogLine, "timestamp")
_SEVERITY_MAX = max_length(LogLine, "severity")
_SCOPE_MAX = max_length(LogLine, "scope")
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


def _from_model(batch: LogBatch) -> list[WireLine]:
    """The lines of a batch pydantic validated."""
    return [(x.timestamp, x.severity, x.message, x.scope) for x in batch.lines]


async def read_lines(request: Request) -> list[WireLine]:
    """The batch's lines, or the 422/400 FastAPI would answer for this body."""
    return await read_body(request, fast_lines, _BATCH, _from_model)
