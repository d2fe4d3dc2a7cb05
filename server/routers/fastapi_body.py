"""A JSON body read the way FastAPI reads a single body parameter, for routes that read their
own body on a fast path (`server.routers.log_body`, `server.routers.bulk_body`) and hand
anything unusual to these steps, so the client gets the same 422 or 400 as from a route
declaring the model."""

from __future__ import annotations

import email.message
import json
from typing import Any, TypeVar

from fastapi import HTTPException
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, TypeAdapter, ValidationError

M = TypeVar("M", bound=BaseModel)


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
