"""`/api/bans`: sites, CEs and queues banned for a VO; directors skip them."""

from __future__ import annotations

from http import HTTPStatus
from typing import Annotated

from fastapi import APIRouter, Query

from server.errors import AlreadyExists, NotFound
from server.http.dependencies import Context
from server.http.policies import Reader, SiteManager
from server.logic import bans as logic
from server.models import Ban, BanRequest, BanTarget
from server.routers.responses import DATABASE, raises

router = APIRouter(prefix="/api/bans", tags=["bans"], responses=DATABASE)


@router.get("")
async def list_bans(
    ctx: Context,
    identity: Reader,
    vo: Annotated[str | None, Query(min_length=1, max_length=128)] = None,
    history: bool = False,
) -> list[Ban]:
    """The bans in force in the caller's VOs (or the one named); `history=true` adds the
    allowed and expired ones, newest first."""
    return await logic.list_bans(ctx, identity, vo, history=history)


@router.post("", status_code=HTTPStatus.CREATED, responses=raises(AlreadyExists))
async def ban(ctx: Context, identity: SiteManager, body: BanRequest) -> Ban:
    """Ban a site, a CE or a queue for a VO (the caller's by default), with a reason and
    optionally an end; 409 when a ban is already in force there."""
    return await logic.ban(ctx, identity, body)


@router.post("/allow", responses=raises(NotFound))
async def allow(ctx: Context, identity: SiteManager, body: BanTarget) -> list[Ban]:
    """Lift the ban in force on exactly this target; the bans lifted. 404 when none is."""
    return await logic.allow(ctx, identity, body)
