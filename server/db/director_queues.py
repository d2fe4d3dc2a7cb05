"""Director queue reports: each director's last word on the queues it serves.

A report replaces the director's rows (within the VOs given) by delete-then-insert in the
caller's transaction: portable across SQLite, MariaDB and PostgreSQL, and a queue the director
no longer serves disappears with no bookkeeping.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from sqlalchemy import delete, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from server.db.batch import chunks
from server.db.schema import DIRECTOR_QUEUES as T
from server.errors import AlreadyExists


async def replace(
    conn: AsyncConnection,
    *,
    director: str,
    vos: Collection[str] | None,
    rows: Sequence[dict[str, Any]],
) -> None:
    """Drop `director`'s rows of these VOs (None: of every VO), then insert `rows`.

    Two reports of one director racing each other can clash on the key after both deleted;
    that is a 409 (the next cycle reports again), not a database failure.
    """
    statement = delete(T).where(T.c.Director == director)
    if vos is not None:
        statement = statement.where(T.c.VO.in_(sorted(vos)))
    await conn.execute(statement)
    try:
        for chunk in chunks(rows):
            await conn.execute(insert(T), chunk)
    except IntegrityError as exc:
        raise AlreadyExists("Another report of this director was stored at the same time") from exc


async def read(conn: AsyncConnection, vos: Collection[str] | None) -> list[dict[str, Any]]:
    """Every reported queue of these VOs (None: all), in a stable display order."""
    query = select(T).order_by(T.c.VO, T.c.Site, T.c.CE, T.c.Queue, T.c.Director, T.c.QueueKey)
    if vos is not None:
        if not vos:
            return []
        query = query.where(T.c.VO.in_(sorted(vos)))
    result = await conn.execute(query)
    return [dict(row) for row in result.mappings()]
