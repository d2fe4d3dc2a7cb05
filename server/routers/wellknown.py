"""Discovery and liveness: OpenID configuration, JWKS, health, Prometheus metrics."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any, Literal

from fastapi import APIRouter, Response
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from server.http.dependencies import Context
from server.http.policies import Public

router = APIRouter(tags=["well-known"])


class Health(BaseModel):
    status: Literal["ok", "unavailable"]


@router.get("/.well-known/openid-configuration")
async def openid_configuration(ctx: Context, _: Public) -> dict[str, Any]:
    """What the DiracX client reads before its first call, and what a CE reads to find our keys."""
    issuer = ctx.keys.issuer.rstrip("/")
    return {
        "issuer": issuer,
        "jwks_uri": f"{issuer}/.well-known/jwks.json",
        "token_endpoint": f"{issuer}/api/auth/token",
        "revocation_endpoint": f"{issuer}/api/auth/revoke",
        "grant_types_supported": ["refresh_token"],
        "response_types_supported": ["token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["EdDSA", "RS256"],
        "token_endpoint_auth_methods_supported": ["none"],
        "scopes_supported": ["vo:", "group:", "property:"],
    }


@router.get("/.well-known/jwks.json")
async def jwks(ctx: Context, _: Public) -> dict[str, Any]:
    return ctx.keys.public_jwks()


@router.get(
    "/api/health",
    responses={
        HTTPStatus.OK: {"model": Health},
        HTTPStatus.SERVICE_UNAVAILABLE: {
            "model": Health,
            "description": "The database does not answer",
        },
    },
)
async def health(ctx: Context, _: Public) -> Response:
    """200 when the database answers, 503 otherwise (for load balancers)."""
    try:
        await ctx.db.ping()
    except Exception:  # any database failure means "not healthy"
        return Response(
            '{"status":"unavailable"}',
            HTTPStatus.SERVICE_UNAVAILABLE,
            media_type="application/json",
        )
    return Response('{"status":"ok"}', media_type="application/json")


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(_: Public) -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
