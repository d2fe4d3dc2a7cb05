"""Pilot log lines and the per-pilot quota row that enforces the size and rate limits.

The quota row is locked (SELECT ... FOR UPDATE; SQLite's single writer does the same) for the
length of the ingesting transaction, so two batches of one pilot cannot both slip under a limit.
Lines go in with one executemany per batch. On SQLite, the embedded default where one core does
all the work, the ingesting statements go straight to the driver as fixed SQL text: the pilot,
its quota and whether the sending token's family is revoked in one SELECT, the quota written
back in one upsert, the lines in one executemany. Building, caching and compiling SQLAlchemy
statements cost more than SQLite's own work for these. On PostgreSQL the same three facts come
in one statement too, the quota row locked by it, once the pilot has a quota row (from its
second batch on): each statement there is a round trip to the database.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Column, delete, exists, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from server.db.driver_sql import sqlite_time
from server.db.schema import LOG_QUOTA as Q
from server.db.schema import LOGS, PILOTS
from server.db.search import check_bound_values, order_by, rows_as_dicts, where_clause
from server.db.secrets import insert_ignoring_conflicts
from server.db.tokens import family_is_revoked, family_revoked
from server.errors import InvalidRequest
from server.models import SearchSpec, SortSpec

#: What operators search on and see, with DiracX's names.
PUBLIC_COLUMNS = ("PilotStamp", "PilotID", "VO", "TimeStamp", "Severity", "Scope", "Message")
COLUMNS: dict[str, Column[Any]] = {name: LOGS.c[name] for name in PUBLIC_COLUMNS}


@dataclass(frozen=True)
class Quota:
    total_bytes: int
    window_start: datetime
    window_lines: int


@dataclass(frozen=True)
class Sender:
    """The pilot sending a batch, its quota row (locked until the transaction ends), and
    whether the family of the token it sends with is revoked."""

    pilot_id: int
    vo: str
    quota: Quota
    revoked: bool


async def sender(
    conn: AsyncConnection, stamp: str, now: datetime, family_id: str | None = None
) -> Sender | None:
    """The pilot `stamp`, its quota row (a fresh one if it has none yet) and whether the token
    family `family_id` is revoked (never, without one); None if there is no such pilot.

    SQLite: one statement by the driver, where the write lock is the `Database`'s and the quota
    row is written whole by `save_quota`. PostgreSQL: one statement that locks the quota row
    FOR UPDATE, when the pilot has one. Otherwise, and on MariaDB, which cannot lock one table
    of a join: the family, the pilot's row, then its quota row created if missing and locked
    (not possible across an outer join)."""
    if conn.dialect.name == "sqlite":
        row: Any = (await conn.exec_driver_sql(_SQLITE_SENDER, (family_id, stamp))).first()
        if row is None:
            return None
        if row[2] is None:
            return Sender(int(row[0]), row[1], Quota(0, now, 0), bool(row[5]))
        window = datetime.fromisoformat(row[3])
        quota = Quota(int(row[2]), window, int(row[4]))
        return Sender(int(row[0]), row[1], quota, bool(row[5]))
    if conn.dialect.name == "postgresql":
        locked = (await conn.execute(_locked_sender(stamp, family_id))).first()
        if locked is not None:
            quota = Quota(int(locked[2]), locked[3], int(locked[4]))
            return Sender(int(locked[0]), locked[1], quota, bool(locked[5]))
    revoked = family_id is not None and await family_revoked(conn, family_id)
    found = (
        await conn.execute(
            select(PILOTS.c.PilotID, PILOTS.c.VO).where(PILOTS.c.PilotStamp == stamp)
        )
    ).first()
    if found is None:
        return None
    return Sender(int(found[0]), found[1], await lock_quota(conn, stamp, now), revoked)


def _locked_sender(stamp: str, family_id: str | None) -> Any:
    """PostgreSQL: the pilot, its quota row locked FOR UPDATE (an inner join: no row when the
    pilot has no quota row yet) and whether the family is revoked, in one statement."""
    return (
        select(
            PILOTS.c.PilotID,
            PILOTS.c.VO,
            Q.c.TotalBytes,
            Q.c.WindowStart,
            Q.c.WindowLines,
            family_is_revoked(family_id),
        )
        .join(Q, Q.c.PilotStamp == PILOTS.c.PilotStamp)
        .where(PILOTS.c.PilotStamp == stamp)
        .with_for_update(of=Q)
    )


_SQLITE_SENDER = (
    'SELECT p."PilotID", p."VO", q."TotalBytes", q."WindowStart", q."WindowLines", '
    'EXISTS (SELECT 1 FROM "RevokedFamilies" f WHERE f."FamilyID" = ?) '
    'FROM "PilotAgents" p LEFT JOIN "PilotLogQuota" q ON q."PilotStamp" = p."PilotStamp" '
    'WHERE p."PilotStamp" = ?'
)
_SQLITE_SAVE_QUOTA = (
    'INSERT INTO "PilotLogQuota" ("PilotStamp", "TotalBytes", "WindowStart", "WindowLines") '
    'VALUES (?, ?, ?, ?) ON CONFLICT ("PilotStamp") DO UPDATE SET '
    '"TotalBytes" = excluded."TotalBytes", "WindowStart" = excluded."WindowStart", '
    '"WindowLines" = excluded."WindowLines"'
)


async def lock_quota(conn: AsyncConnection, stamp: str, now: datetime) -> Quota:
    """The pilot's quota row, created on first use, locked until the transaction ends
    (MariaDB, PostgreSQL; SQLite reads it in `sender`)."""
    stmt = (
        select(Q.c.TotalBytes, Q.c.WindowStart, Q.c.WindowLines)
        .where(Q.c.PilotStamp == stamp)
        .with_for_update()
    )
    row = (await conn.execute(stmt)).first()
    if row is None:
        await conn.execute(
            insert_ignoring_conflicts(Q, conn.dialect.name),
            {"PilotStamp": stamp, "TotalBytes": 0, "WindowStart": now, "WindowLines": 0},
        )
        row = (await conn.execute(stmt)).one()
    return Quota(int(row[0]), row[1], int(row[2]))


async def save_quota(conn: AsyncConnection, stamp: str, quota: Quota) -> None:
    """Write the quota row back (on SQLite created if `sender` found none)."""
    if conn.dialect.name == "sqlite":
        values = (stamp, quota.total_bytes, sqlite_time(quota.window_start), quota.window_lines)
        await conn.exec_driver_sql(_SQLITE_SAVE_QUOTA, values)
        return
    await conn.execute(
        update(Q)
        .where(Q.c.PilotStamp == stamp)
        .values(
            TotalBytes=quota.total_bytes,
            WindowStart=quota.window_start,
            WindowLines=quota.window_lines,
        )
    )


_SQLITE_INSERT = (
    'INSERT INTO "PilotLogs" ("PilotID", "PilotStamp", "VO", "TimeStamp", "Severity", "Scope", '
    '"Message", "ReceivedTime") VALUES (?, ?, ?, ?, ?, ?, ?, ?)'
)


_PG_INSERT = (
    'INSERT INTO "PilotLogs" ("PilotID", "PilotStamp", "VO", "TimeStamp", "Severity", "Scope", '
    '"Message", "ReceivedTime") VALUES ($1, $2, $3, $4, $5, $6, $7, $8)'
)
#: dialect -> the lines' INSERT as driver SQL, and how a datetime goes to that driver
_DRIVER_INSERTS: dict[str, tuple[str, Callable[[datetime], Any]]] = {
    "sqlite": (_SQLITE_INSERT, sqlite_time),
    "postgresql": (_PG_INSERT, lambda value: value),  # asyncpg takes naive UTC datetimes
}


async def insert_lines(
    conn: AsyncConnection,
    *,
    pilot_id: int,
    stamp: str,
    vo: str,
    received: datetime,
    lines: Sequence[tuple[datetime, str, str, str]],
) -> None:
    """One executemany per batch of one pilot's `(TimeStamp, Severity, Scope, Message)` lines.
    On SQLite and PostgreSQL straight to the driver with rows built as tuples: SQLAlchemy's
    per-value processing was half the cost on SQLite, and a tenth of a 20-line batch's on
    PostgreSQL (every value coerced, every row's parameters built)."""
    driver = _DRIVER_INSERTS.get(conn.dialect.name)
    if driver is not None:
        sql, as_time = driver
        at = as_time(received)
        await conn.exec_driver_sql(
            sql,
            [
                (pilot_id, stamp, vo, as_time(timestamp), severity, scope, message, at)
                for timestamp, severity, scope, message in lines
            ],
        )
        return
    rows = [
        {
            "PilotID": pilot_id,
            "PilotStamp": stamp,
            "VO": vo,
            "TimeStamp": timestamp,
            "Severity": severity,
            "Scope": scope,
            "Message": message,
            "ReceivedTime": received,
        }
        for timestamp, severity, scope, message in lines
    ]
    await conn.execute(insert(LOGS), rows)


async def search(
    conn: AsyncConnection,
    *,
    parameters: Sequence[str] | None,
    specs: Sequence[SearchSpec],
    sort: Sequence[SortSpec],
    page: int,
    per_page: int,
) -> tuple[int, list[dict[str, Any]]]:
    """One page of matching lines, in time order (then arrival order), and the total."""
    names = list(parameters) if parameters else list(PUBLIC_COLUMNS)
    for name in names:
        if name not in COLUMNS:
            raise InvalidRequest(f"Unknown parameter {name!r}")
    where = where_clause(COLUMNS, specs)
    check_bound_values(conn.dialect.name, specs)
    count = select(func.count()).select_from(LOGS)
    base = select(*(COLUMNS[n] for n in names))
    if where is not None:
        count = count.where(where)
        base = base.where(where)
    total = (await conn.execute(count)).scalar_one()
    offset = (page - 1) * per_page
    if total == 0 or offset >= total:
        return total, []  # past the end: no query (a huge OFFSET is a MariaDB syntax error)
    ordering = [*order_by(COLUMNS, sort), LOGS.c.TimeStamp.asc(), LOGS.c.LogID.asc()]
    stmt = base.order_by(*ordering).limit(per_page).offset(offset)
    rows = await conn.execute(stmt)
    return total, rows_as_dicts(rows)


async def purge_older_than(conn: AsyncConnection, cutoff: datetime) -> int:
    result = await conn.execute(delete(LOGS).where(LOGS.c.ReceivedTime < cutoff))
    return result.rowcount


async def purge_orphans(conn: AsyncConnection) -> int:
    """Logs (and quota rows) of pilots no longer in PilotAgents."""
    registered = exists().where(PILOTS.c.PilotStamp == LOGS.c.PilotStamp)
    result = await conn.execute(delete(LOGS).where(~registered))
    await conn.execute(delete(Q).where(~exists().where(PILOTS.c.PilotStamp == Q.c.PilotStamp)))
    return result.rowcount
