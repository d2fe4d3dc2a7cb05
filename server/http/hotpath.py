"""The fast lane: the hottest routes answered without FastAPI's routing and dependency solving.

The director and the pilots call a handful of routes (register, status patch, search, summary,
secret exchange) thousands of times a second; for them FastAPI's request machinery (route
matching over every route, the dependency graph solved per request, the body parsed twice over,
the response model validated again) cost more CPU than the pilot code and its SQL. Each
`HotRoute` here does the same steps directly, with the route's own policy, body model and
logic function, and answers with the same bytes.

The FastAPI route stays the reference and the fallback: it is in the route table (so the
OpenAPI schema, the policies walk and every test see it), and any request the fast lane does
not take on the happy path goes to it with its body replayed: a body that is not JSON, not
UTF-8 or not in the model (FastAPI's 422, byte for byte), a query string that is not plain, a
content type other than JSON. A refusal by the policy (401/403) and the logic's domain errors
are answered here through the same handlers as FastAPI's (`server.http.handlers`); anything
else propagates as it would from a route (a 500). `tests/server/test_hotpath.py` sends the
same requests to an app with and without the fast lane and compares status, headers and body.

Order, as FastAPI's: the body is read and parsed (not JSON: the fallback's 422), then the
policy decides (401/403 before any validation error), then the body is validated.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import TypeAdapter, ValidationError
from starlette.responses import Response

from server.context import ServerContext
from server.errors import ServerDomainError
from server.http import handlers
from server.http.policies import Policy
from server.identity import Identity

#: query string -> the handler's query values, or None: not plain, let FastAPI parse it
QueryParser = Callable[[bytes], dict[str, Any] | None]
Handler = Callable[[ServerContext, Identity | None, Any, dict[str, Any]], Awaitable[Response]]


@dataclass(frozen=True)
class HotRoute:
    """One route's fast lane: its policy, how its body and query are read, its handler."""

    method: str
    path: str
    policy: Policy
    #: validates the parsed JSON body exactly as FastAPI validates the route's body parameter
    body: TypeAdapter[Any]
    handler: Handler
    #: an empty body is None (an optional body parameter); otherwise FastAPI answers it
    optional_body: bool = False
    query: QueryParser | None = None

    async def answer(
        self, ctx: ServerContext, scope: Mapping[str, Any], raw: bytes
    ) -> Response | None:
        """The response, or None: the FastAPI route answers this request instead. None only
        before the handler runs: a request is never carried out twice."""
        headers: dict[bytes, bytes] = {}
        for name, value in scope["headers"]:
            headers.setdefault(name, value)  # the first, as Starlette's `Headers.get`
        if raw and headers.get(b"content-type") != b"application/json":
            return None  # FastAPI reads a body as JSON by its content type only
        if raw:
            try:
                parsed = orjson.loads(raw)
            except orjson.JSONDecodeError:
                return None  # FastAPI's json_invalid 422 (or its UTF-16 reading)
        else:
            parsed = None
        if parsed is None and not self.optional_body:
            return None  # FastAPI's "Field required" 422 (no body, or `null`)
        query: dict[str, Any] = {}
        if self.query is not None:
            found = self.query(scope.get("query_string", b""))
            if found is None:
                return None
            query = found
        try:
            identity = self.policy.authorize(
                ctx, headers.get(b"authorization", b"").decode("latin-1")
            )
        except ServerDomainError as exc:
            return handlers.domain_error_response(exc)
        try:
            body = None if parsed is None else self.body.validate_python(parsed)
        except ValidationError:
            return None  # FastAPI's 422, with its error list
        try:
            return await self.handler(ctx, identity, body, query)
        except ServerDomainError as exc:
            return handlers.domain_error_response(exc)
        except (UnicodeEncodeError, OverflowError) as exc:
            return handlers.bad_value_response(exc)


def plain_ints(
    names: Mapping[str, tuple[int, int, int]],
) -> QueryParser:
    """A parser of query strings made only of `name=<digits>` for the given names (each at
    most once, within [low, high], else the default); anything else goes to FastAPI."""

    def parse(query: bytes) -> dict[str, Any] | None:
        values = {name: default for name, (default, _, _) in names.items()}
        if not query:
            return values
        seen: set[str] = set()
        for part in query.split(b"&"):
            key, sep, value = part.partition(b"=")
            name = key.decode("latin-1")
            if not sep or name not in names or name in seen:
                return None
            if not value.isdigit() or len(value) > 9 or value.startswith(b"0"):
                return None
            number = int(value)
            _, low, high = names[name]
            if not low <= number <= high:
                return None
            values[name] = number
            seen.add(name)
        return values

    return parse
