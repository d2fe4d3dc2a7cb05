"""`/api/pilots/secrets`: mint (directors, admins), list and change (admins), revoke."""

from __future__ import annotations

from http import HTTPStatus
from typing import Annotated

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel

from server.errors import InvalidRequest, NotFound
from server.http.dependencies import Context
from server.http.policies import AdminOnly, PilotManager
from server.logic import secrets as logic
from server.models import (
    STAMP_PATTERN,
    MintedSecret,
    SecretInfo,
    SecretMintRequest,
    SecretRevocation,
    SecretUpdate,
)
from server.routers.responses import DATABASE, raises

router = APIRouter(prefix="/api/pilots/secrets", tags=["secrets"], responses=DATABASE)


class RevocationResult(BaseModel):
    revoked: int


@router.post("", status_code=HTTPStatus.CREATED, responses=raises(InvalidRequest))
async def mint_secrets(
    ctx: Context, identity: PilotManager, body: SecretMintRequest
) -> list[MintedSecret]:
    """Mint N secrets with constraints; the plain secrets are returned this once only."""
    return await logic.mint(ctx, identity, body)


@router.get("")
async def list_secrets(
    ctx: Context,
    identity: AdminOnly,
    pilot_stamp: Annotated[str | None, Query(pattern=STAMP_PATTERN)] = None,
    page: Annotated[int, Query(ge=1, le=10**9)] = 1,
    per_page: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> list[SecretInfo]:
    """Secrets and their constraints, by id; never the secret."""
    return await logic.list_secrets(ctx, pilot_stamp, page, per_page)


@router.patch("/{secret_id}", responses=raises(NotFound))
async def update_secret(
    ctx: Context,
    identity: AdminOnly,
    secret_id: Annotated[int, Path(ge=1, le=2**63 - 1)],
    body: SecretUpdate,
) -> SecretInfo:
    """Change a secret's constraints; an explicit null makes expiry or uses unlimited."""
    return await logic.update_secret(ctx, secret_id, body)


@router.post("/revoke", responses=raises(InvalidRequest))
async def revoke_secrets(
    ctx: Context, identity: PilotManager, body: SecretRevocation
) -> RevocationResult:
    """Revoke secrets by id or by bound stamp (the director revokes its unused pilots')."""
    return RevocationResult(revoked=await logic.revoke(ctx, identity, body))
