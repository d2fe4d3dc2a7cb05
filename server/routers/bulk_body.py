"""The body of `POST /api/pilots/bulk`, read on a fast path, and its answer written directly.

FastAPI would parse the JSON body with the standard library, validate it with pydantic into a
model a pilot, and write the answer through two models a pilot (`RegisteredPilot`,
`MintedSecret`) validated again as the response model: for the director's 10,000 pilots a
call, a third of the call's server CPU. Here the route reads the bytes itself: orjson parses
them, and a body of the usual shape (the fields of `BulkRegistration` and `BulkPilot` with
values of their types and within their limits) is taken as plain tuples, after a check that
accepts only what `BulkRegistration` accepts. Anything else (another content type, no body,
JSON orjson refuses, a wrong type, an unknown field, a missing one anywhere) goes the slow way,
`as_fastapi_would`: the steps FastAPI takes for a body parameter, so the client gets the same
422 or 400 as from a route declaring `body: BulkRegistration` (tests/server/test_bulk_body.py
compares the two).

The route documents the body with `OPENAPI`, the schema FastAPI would have generated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any

import orjson
from fastapi import Depends, Request
from pydantic import TypeAdapter, ValidationError

from server.db.pilots import NewPilot
from server.logic.pilots import BulkRegistered, new_pilots
from server.models import (
    STAMP_PATTERN,
    BulkPilot,
    BulkRegistration,
    PilotStatus,
    SecretConstraints,
)
from server.routers.fastapi_body import max_length, read_body


def _default(name: str) -> Any:
    return BulkPilot.model_fields[name].default


#: The stamp pattern without its anchors, for `fullmatch` (a `$` in Python's `re` would let a
#: trailing newline through, which pydantic's regex does not).
_STAMP = re.compile(STAMP_PATTERN.removeprefix("^").removesuffix("$"))
_VO_MAX = max_length(BulkRegistration, "vo")
_PILOTS_MAX = max_length(BulkRegistration, "pilots")
_GRID_TYPE_MAX = max_length(BulkPilot, "grid_type")
_GRID_SITE_MAX = max_length(BulkPilot, "grid_site")
_DESTINATION_MAX = max_length(BulkPilot, "destination_site")
_QUEUE_MAX = max_length(BulkPilot, "queue")
_REFERENCE_MAX = max_length(BulkPilot, "pilot_reference")
_GRID_TYPE: str = _default("grid_type")
_GRID_SITE: str = _default("grid_site")
_DESTINATION: str = _default("destination_site")
_QUEUE: str = _default("queue")
_STATUS: str = _default("pilot_status").value
_STATUSES = frozenset(s.value for s in PilotStatus)
_BODY_KEYS = frozenset(BulkRegistration.model_fields)
_PILOT_KEYS = frozenset(BulkPilot.model_fields)
_REGISTRATION = TypeAdapter(BulkRegistration)


def _inlined(node: Any, defs: dict[str, Any]) -> Any:
    """`node` with each `$ref` to `defs` replaced by the definition, the keys beside the
    reference (a default) kept; no model here refers to itself. A route's `openapi_extra`
    cannot add components, and no other route declares `BulkPilot` or `SecretConstraints`."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            rest = {k: _inlined(v, defs) for k, v in node.items() if k != "$ref"}
            return {**_inlined(defs[ref.removeprefix("#/$defs/")], defs), **rest}
        return {k: _inlined(v, defs) for k, v in node.items() if k != "$defs"}
    if isinstance(node, list):
        return [_inlined(v, defs) for v in node]
    return node


_SCHEMA = BulkRegistration.model_json_schema()
#: The request body and the 422 answer as FastAPI documents `body: BulkRegistration`, the
#: nested models inline (a test compares them with FastAPI's and checks every $ref resolves).
OPENAPI: dict[str, Any] = {
    "requestBody": {
        "content": {"application/json": {"schema": _inlined(_SCHEMA, _SCHEMA.get("$defs", {}))}},
        "required": True,
    },
    # FastAPI documents its 422 only for routes with parameters it validates itself
    "responses": {
        "422": {
            "description": "Validation Error",
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/HTTPValidationError"}}
            },
        }
    },
}


@dataclass(frozen=True, slots=True)
class Bulk:
    """A valid `BulkRegistration`, its pilots as `register_bulk` takes them."""

    vo: str
    pilots: list[NewPilot]
    mint_secrets: bool
    constraints: SecretConstraints


def _pilot(item: Any) -> NewPilot | None:
    """One pilot of the body, or None if it is not plainly a valid BulkPilot."""
    if type(item) is not dict or not item.keys() <= _PILOT_KEYS:
        return None
    stamp = item.get("pilot_stamp")
    grid_type = item.get("grid_type", _GRID_TYPE)
    grid_site = item.get("grid_site", _GRID_SITE)
    destination = item.get("destination_site", _DESTINATION)
    queue = item.get("queue", _QUEUE)
    reference = item.get("pilot_reference")
    status = item.get("pilot_status", _STATUS)
    if (
        type(stamp) is not str
        or type(grid_type) is not str
        or type(grid_site) is not str
        or type(destination) is not str
        or type(queue) is not str
        or type(status) is not str
        or _STAMP.fullmatch(stamp) is None
        or len(grid_type) > _GRID_TYPE_MAX
        or len(grid_site) > _GRID_SITE_MAX
        or len(destination) > _DESTINATION_MAX
        or len(queue) > _QUEUE_MAX
        or status not in _STATUSES
        or (reference is not None and type(reference) is not str)
        or (reference is not None and len(reference) > _REFERENCE_MAX)
    ):
        return None
    return (stamp, grid_type, grid_site, destination, queue, reference, status)


def _from_model(body: BulkRegistration) -> Bulk:
    """A registration pydantic validated, as a `Bulk`."""
    return Bulk(body.vo, new_pilots(body), body.mint_secrets, body.secret_constraints)


def fast_bulk(data: Any) -> Bulk | None:
    """A parsed body as a `Bulk`, or None when it is not plainly a valid BulkRegistration
    (then pydantic decides, and explains)."""
    if type(data) is not dict or not data.keys() <= _BODY_KEYS:
        return None
    vo = data.get("vo")
    items = data.get("pilots")
    mint = data.get("mint_secrets", False)
    if (
        type(vo) is not str
        or not 1 <= len(vo) <= _VO_MAX
        or type(items) is not list
        or not 1 <= len(items) <= _PILOTS_MAX
        or type(mint) is not bool
    ):
        return None
    constraints = SecretConstraints()
    if "secret_constraints" in data:
        try:  # one small object: pydantic's own check
            constraints = SecretConstraints.model_validate(data["secret_constraints"])
        except ValidationError:
            return None
    pilots: list[NewPilot] = []
    append = pilots.append
    for item in items:
        pilot = _pilot(item)
        if pilot is None:
            return None
        append(pilot)
    return Bulk(vo, pilots, mint, constraints)


async def read_bulk(request: Request) -> Bulk:
    """The registration, or the 422/400 FastAPI would answer for this body."""
    return await read_body(request, fast_bulk, _REGISTRATION, _from_model)


#: The route's body parameter: a dependency reading it, after the route's policy.
BulkBody = Annotated[Bulk, Depends(read_bulk)]


def answer(result: BulkRegistered) -> bytes:
    """The `BulkRegistrationResult` of `result` as FastAPI would write it (the same keys in the
    same order), by orjson from plain dicts."""
    pilots = [
        {"pilot_stamp": s, "pilot_id": i} for s, i in zip(result.stamps, result.ids, strict=True)
    ]
    expires = result.expires_in
    secrets = (
        [
            {"pilot_secret": x, "pilot_secret_expires_in": expires, "pilot_stamp": s}
            for x, s in zip(result.secrets, result.stamps, strict=True)
        ]
        if result.secrets
        else []
    )
    return orjson.dumps({"pilots": pilots, "secrets": secrets})
