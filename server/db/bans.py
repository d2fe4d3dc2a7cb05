"""Site, CE and queue bans: insert one, allow (lift) those in force on a target, read.

A ban is in force while it has an `ActiveKey` (not yet allowed) and its `Until` is unset or
in the future. The key's unique index keeps at most one not-yet-allowed ban per target; an
expired ban gives its key up when a new ban of the same target is stored.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from server.db.schema import BANS as T
from server.errors import AlreadyExists

#: At most this many rows when the history (allowed and expired bans) is asked for.
HISTORY_LIMIT = 1000


def in_force(now: datetime) -> ColumnElement[bool]:
    return and_(T.c.ActiveKey.is_not(None), or_(T.c.Until.is_(None), T.c.Until > now))


async def insert_ban(conn: AsyncConnection, row: dict[str, Any], now: datetime) -> int:
    """Store a ban (its `ActiveKey` set); AlreadyExists if one is in force on the target."""
    key = row["ActiveKey"]
    # an expired ban of this target frees the key: it no longer applies
    await conn.execute(
        update(T)
        .where(T.c.ActiveKey == key, T.c.Until.is_not(None), T.c.Until <= now)
        .values(ActiveKey=None)
    )
    try:
        result = await conn.execute(insert(T).values(**row))
    except IntegrityError as exc:
        raise AlreadyExists(
            "This target is already banned; allow it first to change the ban"
        ) from exc
    ban_id = result.inserted_primary_key
    assert ban_id is not None
    return int(ban_id[0])


async def allow(conn: AsyncConnection, key: str, *, by: str, now: datetime) -> list[dict[str, Any]]:
    """Lift the ban in force on the target with this key; the rows lifted (none: nothing was
    in force, though an expired ban still gives its key up)."""
    rows = await conn.execute(select(T).where(T.c.ActiveKey == key, in_force(now)))
    lifted = [dict(r) for r in rows.mappings()]
    await conn.execute(
        update(T)
        .where(T.c.ActiveKey == key, in_force(now))
        .values(ActiveKey=None, AllowedBy=by, AllowedAt=now)
    )
    await conn.execute(update(T).where(T.c.ActiveKey == key).values(ActiveKey=None))
    for row in lifted:
        row.update(ActiveKey=None, AllowedBy=by, AllowedAt=now)
    return lifted


async def read(
    conn: AsyncConnection,
    vos: Collection[str] | None,
    now: datetime,
    *,
    history: bool = False,
) -> list[dict[str, Any]]:
    """The bans in force of these VOs (None: all), by VO and target; with `history`, also
    the allowed and expired ones, newest first (at most HISTORY_LIMIT)."""
    if vos is not None and not vos:
        return []
    query = select(T)
    if vos is not None:
        query = query.where(T.c.VO.in_(sorted(vos)))
    if history:
        query = query.order_by(T.c.BannedAt.desc(), T.c.BanID.desc()).limit(HISTORY_LIMIT)
    else:
        query = query.where(in_force(now))
    result = await conn.execute(query)
    rows = [dict(r) for r in result.mappings()]
    if not history:  # in Python: backends disagree on where NULL sorts (a site ban first)
        rows.sort(key=lambda r: (r["VO"], r["Site"], r["CE"] or "", r["Queue"] or "", r["BanID"]))
    return rows
