"""Director leases, so two director instances never work the same queue at once.

Lease names are scoped by the caller's VO: directors of different VOs may well submit to the
same CE queue, each its own pilots.
"""

from __future__ import annotations

from datetime import timedelta

from server.clock import utcnow
from server.context import ServerContext
from server.db import leases as db
from server.identity import Identity
from server.models import LeaseGrant, LeaseRelease, LeaseRequest


def _key(identity: Identity, queue: str) -> str:
    return f"{identity.vo}/{queue}"[:255]


async def acquire(ctx: ServerContext, identity: Identity, body: LeaseRequest) -> LeaseGrant:
    now = utcnow()
    keys = {_key(identity, q): q for q in dict.fromkeys(body.queues)}
    async with ctx.db.transaction() as conn:
        held = await db.acquire(
            conn,
            ctx.db.dialect,
            holder=body.holder,
            queues=list(keys),
            now=now,
            expires_at=now + timedelta(seconds=body.ttl_seconds),
        )
    return LeaseGrant(
        granted=[q for k, q in keys.items() if k in held],
        refused=[q for k, q in keys.items() if k not in held],
    )


async def release(ctx: ServerContext, identity: Identity, body: LeaseRelease) -> None:
    async with ctx.db.transaction() as conn:
        await db.release(conn, holder=body.holder, queues=[_key(identity, q) for q in body.queues])
