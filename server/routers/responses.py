"""What each route answers besides its success, for the OpenAPI document (generated clients,
DiracX's own among them, only know the statuses it lists).

Every error status comes from the one table, `server.errors.STATUS_OF`, with the one error body,
`HTTPError`. A route lists the domain errors its logic raises (`raises(NotFound, ...)`); a
router whose routes read the database says so once (`APIRouter(responses=DATABASE)`); and
`document(router)`, which `create_app` applies to every router, adds what each route owes to
its shape, so that no route can forget them:

    a policy other than Public      401 Unauthorized, 403 Forbidden
    a method with a body            413 TooLarge (the body limit, before any parsing)
    a body model                    400 InvalidRequest (a body FastAPI cannot decode)
    DATABASE                        400 InvalidRequest (a value the database refuses),
                                    503 with Retry-After (the database does not answer),
                                    507 with Retry-After (no space left for the database)

FastAPI adds 422 itself to every route that takes parameters or a body.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from fastapi import APIRouter
from fastapi.routing import APIRoute

from server.errors import (
    STATUS_OF,
    DatabaseUnavailable,
    Forbidden,
    InvalidRequest,
    ServerDomainError,
    StorageFull,
    TooLarge,
    Unauthorized,
)
from server.http.policies import PUBLIC, Policy
from server.models import HTTPError

Responses = dict[int | str, dict[str, Any]]

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before trying again",
        "schema": {"type": "integer"},
        "required": True,
    }
}

_EITHER_422 = {
    "application/json": {
        "schema": {
            "anyOf": [
                {"$ref": "#/components/schemas/HTTPValidationError"},
                {"$ref": "#/components/schemas/HTTPError"},
            ]
        }
    }
}


def raises(*errors: type[ServerDomainError]) -> Responses:
    """`responses=` for the domain errors a route's logic raises: status from the table,
    description from the error's docstring, body `HTTPError`."""
    answers: Responses = {}
    for error in errors:
        answer: dict[str, Any] = {"model": HTTPError, "description": _description(error)}
        if STATUS_OF[error] == HTTPStatus.UNPROCESSABLE_ENTITY:
            # shared with FastAPI's validation errors: either body
            answer = {"description": answer["description"], "content": _EITHER_422}
        if error.retry_after is not None:
            answer["headers"] = _RETRY_AFTER
        answers[int(STATUS_OF[error])] = answer
    return answers


def paged(kind: str) -> Responses:
    """The partial answers of a DiracX search (`server.routers.pilots.paged`)."""
    content_range = {
        "Content-Range": {
            "description": f"`{kind} first-last/total` (206) or `{kind} */total` (416)",
            "schema": {"type": "string"},
            "required": True,
        }
    }
    return {
        int(HTTPStatus.PARTIAL_CONTENT): {
            "model": list[dict[str, Any]],
            "description": "One page of several",
            "headers": content_range,
        },
        int(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE): {
            "model": list[dict[str, Any]],
            "description": "The page is past the end: an empty list",
            "headers": content_range,
        },
    }


def document(router: APIRouter) -> APIRouter:
    """Add to each route of `router` the answers its policy and its method give it (see the
    module docstring); what a route declares itself wins. Idempotent, so building several
    apps from the same routers is harmless."""
    for route in router.routes:
        if not isinstance(route, APIRoute) or not route.include_in_schema:
            continue
        derived: list[type[ServerDomainError]] = []
        if any(p is not PUBLIC for p in _policies(route)):
            derived += [Unauthorized, Forbidden]
        if route.body_field is not None:
            derived.append(InvalidRequest)  # FastAPI: "There was an error parsing the body"
        if (route.methods or set()) & _BODY_METHODS:
            derived.append(TooLarge)
        route.responses = {**raises(*derived), **route.responses}
    return router


def _policies(route: APIRoute) -> list[Policy]:
    return [d.call for d in route.dependant.dependencies if isinstance(d.call, Policy)]


def _description(error: type[ServerDomainError]) -> str:
    for cls in error.__mro__:
        if cls in STATUS_OF and cls.__doc__:
            return cls.__doc__.strip()
    return HTTPStatus(STATUS_OF[error]).phrase


#: For `APIRouter(responses=...)` of the routers whose routes read the database.
DATABASE: Responses = raises(InvalidRequest, DatabaseUnavailable, StorageFull)
