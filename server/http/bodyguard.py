"""Authenticate before the body is read: an anonymous client cannot make the server parse it.

FastAPI reads and parses a JSON body before it runs the route's policy, so without this a
request with no token still costs the parse: 14 MiB of `{},{},...` took the server from
108 to 455 MB before its 401. Here (called by `server.http.middleware.Front`), for the routes
that take a token, a missing or invalid one is refused from the headers alone; the three public
routes with a body (secret exchange, refresh, revoke) take small bodies only. The route's own
policy still decides what a valid token may do.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from server.errors import Unauthorized
from server.identity import identity_from_token

PUBLIC_BODY_PATHS = frozenset(
    {"/api/auth/secret-exchange", "/api/auth/pilot-token", "/api/auth/revoke"}
)
PUBLIC_BODY_LIMIT = 64 * 1024
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def anonymous_refusal(scope: MutableMapping[str, Any]) -> bytes | None:
    """The 401 body for a request to a token route without a valid bearer token, or None.
    (The last `Authorization` header counts here; the policy reads the first, so two headers
    are checked twice, not bypassed.)"""
    header = b""
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            header = value
    scheme, _, token = header.decode("latin-1").partition(" ")
    try:
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("Missing bearer token")
        identity_from_token(scope["app"].state.ctx.keys, token.strip())
    except Unauthorized as exc:
        return json.dumps({"detail": exc.detail}).encode()
    return None


async def send_json(
    send: Callable[[MutableMapping[str, Any]], Awaitable[None]], status: int, body: bytes
) -> None:
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
