"""`/api/auth`: the pilot's secret exchange, refresh and revocation (all public: the credential
is in the body, and every refusal is the same 401)."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Request, Response
from pydantic import TypeAdapter

from server.context import ServerContext
from server.errors import InvalidRequest, Unauthorized
from server.http.dependencies import Context
from server.http.hotpath import HotRoute
from server.http.policies import PUBLIC, Public
from server.identity import Identity
from server.logic import auth as logic
from server.models import PilotTokenRefresh, SecretExchange, TokenResponse
from server.routers.responses import DATABASE, raises

router = APIRouter(prefix="/api/auth", tags=["auth"], responses=DATABASE)

_MAX_FORM_BYTES = 16 * 1024
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}  # RFC 6749 section 5.1


@router.post("/secret-exchange", responses=raises(Unauthorized))
async def secret_exchange(
    ctx: Context, _: Public, body: SecretExchange, response: Response
) -> TokenResponse:
    """A pilot secret for an access token and a refresh token. 401 on any bad credential."""
    response.headers.update(_NO_STORE)
    return await logic.exchange(ctx, body)


@router.post("/pilot-token", responses=raises(Unauthorized))
async def pilot_token(
    ctx: Context, _: Public, body: PilotTokenRefresh, response: Response
) -> TokenResponse:
    """Rotate a refresh token; reusing a dead one revokes its whole family. 401 otherwise."""
    response.headers.update(_NO_STORE)
    return await logic.refresh(ctx, body.refresh_token, body.pilot_stamp)


@router.post("/revoke", status_code=HTTPStatus.OK, responses=raises(InvalidRequest))
async def revoke(ctx: Context, _: Public, request: Request) -> None:
    """RFC 7009 (form fields `token`, `token_type_hint`), or the older DiracX form
    `?refresh_token=...&client_id=...` with an empty body. 200 for any well-formed request,
    whether or not the token was known (RFC 7009 section 2.2)."""
    raw = await request.body()
    if len(raw) > _MAX_FORM_BYTES:
        raise InvalidRequest("Request too large")
    fields: dict[str, list[str]] = {}
    if raw:
        content_type = request.headers.get("content-type", "")
        if not content_type.startswith("application/x-www-form-urlencoded"):
            raise InvalidRequest("Expected application/x-www-form-urlencoded")
        try:
            fields = parse_qs(raw.decode(), strict_parsing=False)
        except (UnicodeDecodeError, ValueError) as exc:
            raise InvalidRequest("Malformed form body") from exc
    token = fields.get("token", [""])[0] or request.query_params.get("refresh_token")
    if not token:
        raise InvalidRequest("invalid_request: the token parameter is missing")
    await logic.revoke(ctx, token)


_TOKENS = TypeAdapter(TokenResponse)


async def _hot_exchange(
    ctx: ServerContext, _: Identity | None, body: SecretExchange, __: dict[str, Any]
) -> Response:
    """The fast lane's secret exchange (`server.http.hotpath`): FastAPI's answer, the same bytes
    (the model dumped by pydantic to JSON, then the no-store headers)."""
    tokens = await logic.exchange(ctx, body)
    response = Response(_TOKENS.dump_json(tokens, by_alias=True), media_type="application/json")
    response.headers.update(_NO_STORE)
    return response


HOT = (
    HotRoute(
        "POST", "/api/auth/secret-exchange", PUBLIC, TypeAdapter(SecretExchange), _hot_exchange
    ),
)
