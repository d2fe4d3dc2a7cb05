"""Operators' requests about one pilot (kill, fetch its output) and the pilots' CE output.

A request is open while it has an `OpenKey` ("<kind>:<stamp>"); the key's unique index keeps
one open request per pilot and kind. Requests are read with the pilot as it is now recorded
(an outer join: a purged pilot leaves its requests readable until they are purged with it).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from server.db.batch import chunks
from server.db.pilots import UPDATE_PILOTS
from server.db.schema import OUTPUTS
from server.db.schema import PILOTS as P
from server.db.schema import REQUESTS as T
from server.errors import AlreadyExists
from server.models import FINAL_STATUSES, OPEN_REQUEST_STATES, PilotStatus

_FINAL = sorted(s.value for s in FINAL_STATUSES)
_OPEN = sorted(s.value for s in OPEN_REQUEST_STATES)
#: At most this many requests per read.
READ_LIMIT = 1000

_PILOT_COLUMNS = (
    P.c.Status.label("PilotStatus"),
    P.c.PilotJobReference,
    P.c.GridType,
    P.c.GridSite,
    P.c.DestinationSite,
    P.c.Queue,
)


def open_key(kind: str, stamp: str) -> str:
    return f"{kind}:{stamp}"


async def live_pilots_of_queue(
    conn: AsyncConnection, vo: str, site: str, ce: str, queue: str
) -> list[dict[str, Any]]:
    """The pilots of one queue of a VO not in a final status, oldest first."""
    rows = await conn.execute(
        select(P.c.PilotID, P.c.PilotStamp, P.c.VO, P.c.Status)
        .where(
            P.c.VO.in_([vo]),
            P.c.GridSite == site,
            P.c.DestinationSite == ce,
            P.c.Queue == queue,
            P.c.Status.not_in(_FINAL),
        )
        .order_by(P.c.PilotID)
    )
    return [dict(r) for r in rows.mappings()]


async def open_requests(
    conn: AsyncConnection, kind: str, stamps: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """The open request of this kind of each of these stamps that has one."""
    found: dict[str, dict[str, Any]] = {}
    for chunk in chunks([open_key(kind, s) for s in stamps]):
        rows = await conn.execute(_with_pilot().where(T.c.OpenKey.in_(chunk)))
        for row in rows.mappings():
            found[row["PilotStamp"]] = dict(row)
    return found


async def insert_requests(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> list[int]:
    """Store requests (one statement per chunk); their ids, in the order of `rows`.
    AlreadyExists when a concurrent call opened one of them first."""
    if not rows:
        return []
    try:
        for chunk in chunks(list(rows)):
            await conn.execute(insert(T), chunk)
    except IntegrityError as exc:
        raise AlreadyExists("A request for one of these pilots was made at the same time") from exc
    first = rows[0]
    ids: dict[int, int] = {}
    for chunk in chunks([r["PilotID"] for r in rows]):
        found = await conn.execute(
            select(T.c.PilotID, T.c.RequestID).where(
                T.c.Kind == first["Kind"],
                T.c.RequestedBy == first["RequestedBy"],
                T.c.RequestedAt == first["RequestedAt"],
                T.c.PilotID.in_(chunk),
            )
        )
        ids.update({r[0]: r[1] for r in found})
    return [ids[r["PilotID"]] for r in rows]


def _with_pilot() -> Any:
    return select(T, *_PILOT_COLUMNS).select_from(T.outerjoin(P, P.c.PilotID == T.c.PilotID))


def pending(now: datetime) -> ColumnElement[bool]:
    """Open, and due: no next attempt time, or one that has come."""
    return and_(
        T.c.OpenKey.is_not(None), or_(T.c.NextAttemptAt.is_(None), T.c.NextAttemptAt <= now)
    )


async def read(
    conn: AsyncConnection,
    kind: str,
    vos: Collection[str] | None,
    *,
    now: datetime,
    states: Collection[str] | None = None,
    due: bool = False,
    stamps: Sequence[str] | None = None,
    limit: int = READ_LIMIT,
) -> list[dict[str, Any]]:
    """Requests of this kind in these VOs (None: all), oldest first; only `states`, only the
    `due` ones (open, next attempt time come), only of `stamps` when given."""
    if vos is not None and not vos:
        return []
    query = _with_pilot().where(T.c.Kind == kind)
    if vos is not None:
        query = query.where(T.c.VO.in_(sorted(vos)))
    if states is not None:
        query = query.where(T.c.State.in_(sorted(states)))
    if due:
        query = query.where(pending(now))
    if stamps is not None:
        query = query.where(T.c.PilotStamp.in_(list(stamps)))
    if stamps is not None or not due:
        query = query.order_by(T.c.RequestID.desc())  # the newest first for people
    else:
        query = query.order_by(T.c.RequestID)  # the oldest first for directors
    result = await conn.execute(query.limit(limit))
    return [dict(r) for r in result.mappings()]


async def by_ids(conn: AsyncConnection, kind: str, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    found: dict[int, dict[str, Any]] = {}
    for chunk in chunks(list(ids)):
        rows = await conn.execute(_with_pilot().where(T.c.Kind == kind, T.c.RequestID.in_(chunk)))
        for row in rows.mappings():
            found[row["RequestID"]] = dict(row)
    return found


async def update_request(conn: AsyncConnection, request_id: int, values: dict[str, Any]) -> None:
    await conn.execute(update(T).where(T.c.RequestID == request_id).values(**values))


async def close_open(
    conn: AsyncConnection, kind: str, stamp: str, values: dict[str, Any]
) -> list[int]:
    """Close the open request of this kind of this pilot, if any, with `values`; its id."""
    key = open_key(kind, stamp)
    found = [r[0] for r in await conn.execute(select(T.c.RequestID).where(T.c.OpenKey == key))]
    if found:
        await conn.execute(update(T).where(T.c.OpenKey == key).values(OpenKey=None, **values))
    return found


async def abort_pilot(conn: AsyncConnection, pilot_id: int, reason: str, now: datetime) -> bool:
    """The pilot ends Aborted with `reason`, unless it already ended; whether it changed."""
    result = await conn.execute(
        UPDATE_PILOTS.where(P.c.PilotID == pilot_id, P.c.Status.not_in(_FINAL)).values(
            Status=PilotStatus.ABORTED.value, StatusReason=reason, LastUpdateTime=now
        )
    )
    return bool(result.rowcount)


# --- outputs ----------------------------------------------------------------------------------


async def read_output(conn: AsyncConnection, pilot_id: int) -> dict[str, Any] | None:
    rows = await conn.execute(select(OUTPUTS).where(OUTPUTS.c.PilotID == pilot_id))
    row = rows.mappings().first()
    return None if row is None else dict(row)


async def store_output(conn: AsyncConnection, row: dict[str, Any], *, replace: bool) -> None:
    """Insert the pilot's output, or (`replace`) overwrite the stored one. AlreadyExists when
    a concurrent upload stored it first."""
    try:
        if replace:
            await conn.execute(
                update(OUTPUTS).where(OUTPUTS.c.PilotID == row["PilotID"]).values(**row)
            )
        else:
            await conn.execute(insert(OUTPUTS).values(**row))
    except IntegrityError as exc:
        raise AlreadyExists("This pilot's output was uploaded at the same time") from exc
