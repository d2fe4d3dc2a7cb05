"""A JSON body read the way FastAPI reads a single body parameter, for routes that read their
own body on a fast path (`server.routers.log_body`, `server.routers.bulk_body`) and hand
anything unusual to these steps, so the client gets the same 422 or 400 as from a route
declaring the model."""

from __future__ import annotations

import email.message
import json
from collections.abc import Callable
from typing import Any, TypeVar

import orjson
from annotated_types import MaxLen
from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, TypeAdapter, ValidationError

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")


def max_length(model: type[BaseModel], name: str) -> int:
    """The `max_length` declared on `model`'s field `name`, for a fast path's own check to
    accept exactly what the model accepts."""
    for rule in model.model_fields[name].metadata:
        if isinstance(rule, MaxLen):
            return rule.max_length
    raise LookupError(name)


def is_plain_json(content_type: str | None) -> bool:
    """The content type the fast paths take (any other, FastAPI's steps judge)."""
    return content_type is not None and content_type.lower() == "application/json"


def as_fastapi_would(adapter: TypeAdapter[M], raw: bytes, content_type: str | None) -> M:
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
        return adapter.validate_python(body, from_attributes=True)
    except ValidationError as exc:
        errors = [
            {**error, "loc": ("body", *error["loc"])} for error in exc.errors(include_url=False)
        ]
        raise RequestValidationError(errors, body=body) from exc


async def read_body(
    request: Request,
    fast: Callable[[Any], T | None],
    adapter: TypeAdapter[M],
    slow: Callable[[M], T],
) -> T:
    """The body as `fast` takes it from orjson's parse when it is plainly valid, else as `slow`
    takes the model validated by FastAPI's steps (which raise the 422 or 400 FastAPI would)."""
    raw = await request.body()
    content_type = request.headers.get("content-type")
    if raw and is_plain_json(content_type):
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass  # maybe valid for json (a lone surrogate, NaN): the slow path says
        else:
            taken = fast(data)
            if taken is not None:
                return taken
    return slow(as_fastapi_would(adapter, raw, content_type))
