"""Authenticate before the body is read: an anonymous client cannot make the server parse it.

FastAPI reads and parses a JSON body before it runs the route's policy, so without this a
request with no token still costs the parse: 14 MiB of `{},{},...` took the server from
108 to 455 MB before its 401. Here, for the routes that take a token, a missing or invalid
one is refused from the headers alone; the three public routes with a body (secret exchange,
refresh, revoke) take small bodies only. The route's own policy still decides what a valid
token may do.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from server.errors import Unauthorized
from server.http.middleware import BodyLimit, send_json
from server.identity import identity_from_token

PUBLIC_BODY_PATHS = frozenset(
    {"/api/auth/secret-exchange", "/api/auth/pilot-token", "/api/auth/revoke"}
)
PUBLIC_BODY_LIMIT = 64 * 1024
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class AuthBeforeBody:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] not in _BODY_METHODS
            or not scope["path"].startswith("/api/")
        ):
            await self.app(scope, receive, send)
            return
        if scope["path"].rstrip("/") in PUBLIC_BODY_PATHS:
            await BodyLimit(self.app, PUBLIC_BODY_LIMIT)(scope, receive, send)
            return
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
            body = json.dumps({"detail": exc.detail}).encode()
            await send_json(send, HTTPStatus.UNAUTHORIZED, body)
            return
        await self.app(scope, receive, send)
