"""`/api/director/leases`: per-queue leases for directors running side by side."""

from __future__ import annotations

from http import HTTPStatus

from fastapi import APIRouter

from server.http.dependencies import Context
from server.http.policies import Director
from server.logic import leases as logic
from server.models import LeaseGrant, LeaseRelease, LeaseRequest
from server.routers.responses import DATABASE

router = APIRouter(prefix="/api/director", tags=["director"], responses=DATABASE)


@router.post("/leases")
async def acquire_leases(ctx: Context, identity: Director, body: LeaseRequest) -> LeaseGrant:
    """Take or renew the leases on these queues; the answer says which are ours."""
    return await logic.acquire(ctx, identity, body)


@router.delete("/leases", status_code=HTTPStatus.NO_CONTENT)
async def release_leases(ctx: Context, identity: Director, body: LeaseRelease) -> None:
    """Give up leases we hold (a director stopping cleanly), so another takes over at once."""
    await logic.release(ctx, identity, body)
