"""Per-queue leases: which director instance works a queue, until when."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql import Insert

from server.db.batch import chunks
from server.db.schema import LEASES


def _insert_ignoring_conflicts(dialect: str) -> Insert:
    if dialect == "postgresql":
        return postgresql.insert(LEASES).on_conflict_do_nothing()
    if dialect == "sqlite":
        return sqlite.insert(LEASES).on_conflict_do_nothing()
    return insert(LEASES).prefix_with("IGNORE")


async def acquire(
    conn: AsyncConnection,
    dialect: str,
    *,
    holder: str,
    queues: Sequence[str],
    now: datetime,
    expires_at: datetime,
) -> set[str]:
    """Take free or expired leases and renew our own; returns the queues we now hold.

    Each step is a single statement, so two directors racing for one queue cannot both win:
    the conditional UPDATE and the conflict-ignoring INSERT leave exactly one holder.
    """
    held: set[str] = set()
    for chunk in chunks(queues):
        await conn.execute(
            update(LEASES)
            .where(
                LEASES.c.Queue.in_(chunk), (LEASES.c.Holder == holder) | (LEASES.c.ExpiresAt < now)
            )
            .values(Holder=holder, ExpiresAt=expires_at)
        )
        await conn.execute(
            _insert_ignoring_conflicts(dialect),
            [{"Queue": q, "Holder": holder, "ExpiresAt": expires_at} for q in chunk],
        )
        rows = await conn.execute(
            select(LEASES.c.Queue).where(LEASES.c.Queue.in_(chunk), LEASES.c.Holder == holder)
        )
        held.update(r[0] for r in rows)
    return held


async def release(conn: AsyncConnection, *, holder: str, queues: Sequence[str]) -> None:
    for chunk in chunks(queues):
        await conn.execute(
            delete(LEASES).where(LEASES.c.Queue.in_(chunk), LEASES.c.Holder == holder)
        )
