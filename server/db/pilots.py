"""Pilot records: bulk operations on PilotAgents and JobToPilotMapping.

Every function takes an open connection, so the logic decides what shares a transaction
(registration + secrets, for instance). Functions work in bulk and raise domain errors.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import (
    Column,
    ColumnElement,
    Integer,
    Select,
    Update,
    bindparam,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from server.db import pilot_counts
from server.db.batch import chunks
from server.db.driver_sql import marks, quoted, sqlite_time
from server.db.schema import JOBS, OUTPUTS, PILOTS, REQUESTS
from server.db.schema import SECRET_REGISTRATIONS as REGISTRATIONS
from server.db.search import (
    SpecShape,
    bound_value_limit,
    bound_values,
    bound_where,
    check_bound_values,
    column_for,
    rows_as_dicts,
    shape,
)
from server.errors import AlreadyExists
from server.models import FINAL_STATUSES, SearchSpec, SortSpec

T = PILOTS
#: INSERT and UPDATE of pilots, for every module that writes them: on SQLite with OR FAIL
#: (`pilot_counts.WRITE_PREFIX` says why)
_INSERT = insert(T).prefix_with(pilot_counts.WRITE_PREFIX, dialect="sqlite")
UPDATE_PILOTS = update(T).prefix_with(pilot_counts.WRITE_PREFIX, dialect="sqlite")
COLUMNS: dict[str, Column[Any]] = {c.name: c for c in T.columns}

#: Statements built once per shape (see `server.db.search`): how many shapes are kept.
STATEMENT_CACHE = 256
#: The largest page offset sent to the database (INTEGER, 32 bits, on PostgreSQL); a search
#: asking for a page further than that is answered by its count alone.
_INTEGER_MAX = 2**31 - 1


#: A pilot to register in bulk: (stamp, grid type, grid site, destination site, queue,
#: reference or None for the stamp, status value).
NewPilot = tuple[str, str, str, str, str, str | None, str]

#: The columns of a new pilot, in the order `_SQLITE_INSERT` takes them.
_NEW_COLUMNS = (
    "PilotStamp",
    "VO",
    "PilotJobReference",
    "Status",
    "StatusReason",
    "GridType",
    "GridSite",
    "DestinationSite",
    "Queue",
    "SubmissionTime",
    "LastUpdateTime",
    "InitialJobID",
    "CurrentJobID",
    "BenchMark",
    "AccountingSent",
)
# OR FAIL: no statement journal for the counts' trigger (`pilot_counts` says why)
_SQLITE_INSERT = (
    f'INSERT {pilot_counts.WRITE_PREFIX} INTO "PilotAgents" '  # noqa: S608 (names)
    f"({', '.join(map(quoted, _NEW_COLUMNS))}) VALUES ({marks(len(_NEW_COLUMNS))})"
)
_SQLITE_MAX_ID = 'SELECT max("PilotID") FROM "PilotAgents"'
_SQLITE_EXISTING = 'SELECT "PilotStamp" FROM "PilotAgents" WHERE "PilotStamp" IN '
_SQLITE_IDS_AFTER = 'SELECT "PilotStamp", "PilotID" FROM "PilotAgents" WHERE "PilotID" > ?'


async def existing_stamps(conn: AsyncConnection, stamps: Sequence[str]) -> list[str]:
    found: list[str] = []
    sqlite = conn.dialect.name == "sqlite"
    for chunk in chunks(stamps):
        if sqlite:  # the clash check of every bulk registration: no statement to compile
            sql = _SQLITE_EXISTING + f"({marks(len(chunk))})"
            rows: Any = await conn.exec_driver_sql(sql, tuple(chunk))
        else:
            rows = await conn.execute(select(T.c.PilotStamp).where(T.c.PilotStamp.in_(chunk)))
        found.extend(r[0] for r in rows)
    return found


async def insert_new_pilots(
    conn: AsyncConnection, vo: str, pilots: Sequence[NewPilot], now: datetime
) -> list[int]:
    """Register `pilots` of `vo` (status reason Unknown, no jobs yet, submitted and updated
    `now`); returns their PilotIDs, in order.

    Raises AlreadyExists naming every clashing stamp; nothing is inserted then. On SQLite the
    rows go to the driver as tuples with fixed SQL, and the new ids are read back as the rows
    past the table's largest id before the insert (a range of the primary key, where a look-up
    by stamp would probe the stamp index once a pilot): SQLAlchemy's per-row parameter handling
    was a third of a bulk registration's cost.
    """
    if conn.dialect.name != "sqlite":
        ids = await insert_pilots(conn, [pilot_row(vo, p, now) for p in pilots])
        return [ids[p[0]] for p in pilots]
    stamps = [p[0] for p in pilots]
    clash = await existing_stamps(conn, stamps)
    if clash:
        raise AlreadyExists(
            {"message": "Pilot stamps already registered", "pilot_stamps": sorted(clash)}
        )
    before = (await conn.exec_driver_sql(_SQLITE_MAX_ID)).scalar() or 0
    at = sqlite_time(now)
    rows = [
        (stamp, vo, ref or stamp, status, "Unknown", gtype, site, dest, queue, at, at, 0, 0, 0.0, 0)
        for stamp, gtype, site, dest, queue, ref, status in pilots
    ]
    try:
        await conn.exec_driver_sql(_SQLITE_INSERT, rows)
    except IntegrityError as exc:  # a concurrent registration (another process) won the race
        clash = await existing_stamps(conn, stamps)
        raise AlreadyExists(
            {"message": "Pilot stamps already registered", "pilot_stamps": sorted(clash)}
        ) from exc
    # rows past `before` are this transaction's (and, at most, another process's that slipped
    # in before our first insert took the write lock): keyed by stamp, only ours are taken
    found: Any = await conn.exec_driver_sql(_SQLITE_IDS_AFTER, (before,))
    new_ids: dict[str, int] = dict(found.fetchall())
    return [new_ids[stamp] for stamp in stamps]


def pilot_row(vo: str, pilot: NewPilot, now: datetime, reason: str = "Unknown") -> dict[str, Any]:
    """The row of a new pilot, the one place its defaults are set (every registration path:
    single, bulk, secret exchange); its reference is its stamp when it has none."""
    stamp, grid_type, grid_site, destination_site, queue, reference, status = pilot
    return {
        "PilotStamp": stamp,
        "VO": vo,
        "PilotJobReference": reference or stamp,
        "Status": status,
        "StatusReason": reason,
        "GridType": grid_type,
        "GridSite": grid_site,
        "DestinationSite": destination_site,
        "Queue": queue,
        "SubmissionTime": now,
        "LastUpdateTime": now,
        "InitialJobID": 0,
        "CurrentJobID": 0,
        "BenchMark": 0.0,
        "AccountingSent": False,
    }


async def insert_pilots(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> dict[str, int]:
    """Insert pilot rows (DiracX column names); returns stamp -> PilotID.

    Raises AlreadyExists naming every clashing stamp; nothing is inserted then.
    """
    stamps = [r["PilotStamp"] for r in rows]
    clash = await existing_stamps(conn, stamps)
    if clash:
        raise AlreadyExists(
            {"message": "Pilot stamps already registered", "pilot_stamps": sorted(clash)}
        )
    try:
        await conn.execute(_INSERT, list(rows))
    except IntegrityError as exc:  # a concurrent registration won the race
        clash = await existing_stamps(conn, stamps)
        raise AlreadyExists(
            {"message": "Pilot stamps already registered", "pilot_stamps": sorted(clash)}
        ) from exc
    return await ids_for_stamps(conn, stamps)


async def insert_pilot(conn: AsyncConnection, row: dict[str, Any]) -> None:
    """Insert one pilot: one statement, the unique index decides clashes (the hot path of
    DiracX-style registration, one pilot per request)."""
    try:
        await conn.execute(_INSERT, row)
    except IntegrityError as exc:
        raise AlreadyExists(f"Pilot {row['PilotStamp']!r} already exists") from exc


async def ids_for_stamps(conn: AsyncConnection, stamps: Sequence[str]) -> dict[str, int]:
    ids: dict[str, int] = {}
    for chunk in chunks(stamps):
        rows = await conn.execute(
            select(T.c.PilotStamp, T.c.PilotID).where(T.c.PilotStamp.in_(chunk))
        )
        ids.update({r[0]: r[1] for r in rows})
    return ids


@lru_cache(maxsize=16)
def _by_stamps(columns: tuple[str, ...]) -> Select[Any]:
    return select(*(COLUMNS[c] for c in columns)).where(
        T.c.PilotStamp.in_(bindparam("stamps", expanding=True))
    )


async def pilots_by_stamp(
    conn: AsyncConnection,
    stamps: Sequence[str],
    columns: Sequence[str] = ("PilotStamp", "PilotID", "VO", "Status"),
) -> dict[str, dict[str, Any]]:
    stmt = _by_stamps(tuple(columns))
    found: dict[str, dict[str, Any]] = {}
    for chunk in chunks(stamps):
        rows = await conn.execute(stmt, {"stamps": list(chunk)})
        for row in rows.mappings():
            found[row["PilotStamp"]] = dict(row)
    return found


#: The final statuses' values, sorted (one cached statement for them).
_FINAL = sorted(s.value for s in FINAL_STATUSES)


@lru_cache(maxsize=STATEMENT_CACHE)
def _update_statement(columns: tuple[str, ...], scoped: bool = False, live: bool = False) -> Update:
    """UPDATE of `columns` (and LastUpdateTime) by stamp, optionally only within VOs `b_vos`,
    optionally (`live`) only while the pilot is not in a final status."""
    stmt = UPDATE_PILOTS.where(T.c.PilotStamp == bindparam("b_stamp")).values(
        {COLUMNS[c]: bindparam(f"v_{c}") for c in (*columns, "LastUpdateTime")}
    )
    if scoped:
        stmt = stmt.where(T.c.VO.in_(bindparam("b_vos", expanding=True)))
    if live:
        stmt = stmt.where(T.c.Status.not_in(_FINAL))
    return stmt


def _update_row(stamp: str, values: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    row = {f"v_{col}": val for col, val in values.items()}
    row["b_stamp"] = stamp
    row["v_LastUpdateTime"] = now
    return row


async def update_pilots(
    conn: AsyncConnection, updates: Mapping[str, dict[str, Any]], now: datetime
) -> None:
    """Apply per-stamp column updates; one executemany per distinct set of columns.

    The caller has checked that every stamp exists (in the same transaction): a second look-up
    here would be one more statement on the hottest write path. On SQLite the rows go to the
    driver as tuples with fixed SQL: SQLAlchemy's per-row parameter handling cost more than
    SQLite's update.
    """
    by_columns = _by_columns(updates)
    if conn.dialect.name == "sqlite":
        await _sqlite_update(conn, updates, by_columns, now, None)
        return
    for key, stamps in by_columns.items():
        stmt = _update_statement(key)
        rows = [_update_row(stamp, updates[stamp], now) for stamp in stamps]
        for chunk in chunks(rows):
            await conn.execute(stmt, list(chunk))


async def update_counted(
    conn: AsyncConnection,
    updates: Mapping[str, dict[str, Any]],
    now: datetime,
    *,
    vos: Iterable[str] | None,
) -> int | None:
    """`update_pilots` without a look-up first, only for pilots whose VO is in `vos` (None:
    any): how many pilots matched, so the caller knows whether every stamp was there (and
    otherwise raises, rolling the transaction back). Only on SQLite, whose driver adds up an
    executemany's changes (an UPDATE counts the rows it matched, changed or not); elsewhere
    None and nothing is updated (their drivers do not all count an executemany's rows)."""
    if conn.dialect.name != "sqlite":
        return None
    return await _sqlite_update(conn, updates, _by_columns(updates), now, vos)


def _by_columns(updates: Mapping[str, dict[str, Any]]) -> dict[tuple[str, ...], list[str]]:
    """The stamps of `updates` by the (sorted) columns they set."""
    by_columns: dict[tuple[str, ...], list[str]] = {}
    for stamp, values in updates.items():
        by_columns.setdefault(tuple(sorted(values)), []).append(stamp)
    return by_columns


async def _sqlite_update(
    conn: AsyncConnection,
    updates: Mapping[str, dict[str, Any]],
    by_columns: Mapping[tuple[str, ...], list[str]],
    now: datetime,
    vos: Iterable[str] | None,
) -> int:
    at = sqlite_time(now)
    scope = tuple(sorted(vos)) if vos is not None else ()
    matched = 0
    for columns, stamps in by_columns.items():
        sql = _sqlite_update_sql(columns, len(scope) if vos is not None else None)
        if any(COLUMNS[c].type.python_type is datetime for c in columns):
            rows = [
                (*(_sqlite_value(updates[s][c]) for c in columns), at, s, *scope) for s in stamps
            ]
        else:
            rows = [(*(updates[s][c] for c in columns), at, s, *scope) for s in stamps]
        result = await conn.exec_driver_sql(sql, rows)
        matched += result.rowcount
    return matched


def _sqlite_value(value: Any) -> Any:
    return sqlite_time(value) if isinstance(value, datetime) else value


@lru_cache(maxsize=STATEMENT_CACHE)
def _sqlite_update_sql(columns: tuple[str, ...], scope: int | None) -> str:
    """UPDATE of `columns` and LastUpdateTime by stamp, optionally within `scope` VOs."""
    # the names are our columns', from COLUMNS, never the client's text
    assignments = ", ".join(f"{quoted(COLUMNS[c].name)} = ?" for c in (*columns, "LastUpdateTime"))
    sql = (
        f'UPDATE {pilot_counts.WRITE_PREFIX} "PilotAgents" SET {assignments} WHERE "PilotStamp" = ?'  # noqa: S608
    )
    if scope is not None:
        sql += f' AND "VO" IN ({marks(scope)})' if scope else " AND 0"
    return sql


async def update_pilot(
    conn: AsyncConnection,
    stamp: str,
    values: Mapping[str, Any],
    now: datetime,
    *,
    vos: Iterable[str] | None = None,
    live_only: bool = False,
) -> bool:
    """Update one pilot, only if its VO is in `vos` (None: any) and, with `live_only`, only
    while it is not in a final status (in the same statement, so a concurrent Aborted is never
    overwritten); True if the row was found.

    One statement instead of a look-up and an update: the common PATCH (a pilot or the
    director reporting one status) needs no more. False leaves telling an unknown stamp from
    another VO's to the caller. The MySQL dialects count matched rows (FOUND_ROWS), not changed
    ones, so an update that changes nothing still says True.
    """
    stmt = _update_statement(tuple(sorted(values)), vos is not None, live_only)
    params = _update_row(stamp, values, now)
    if vos is not None:
        params["b_vos"] = sorted(vos)
    result = await conn.execute(stmt, params)
    return result.rowcount == 1


async def search(
    conn: AsyncConnection,
    *,
    parameters: Sequence[str] | None,
    specs: Sequence[SearchSpec],
    sort: Sequence[SortSpec],
    distinct: bool,
    page: int,
    per_page: int,
) -> tuple[int, list[dict[str, Any]]]:
    """One page of matching pilots and the total count of matches.

    A page is found in two steps (a "deferred join"): first the ids of the page, sorting only
    narrow index tuples, then the full rows of those ids. Sorting whole rows to keep 100 of
    them costs several times more on every backend. Both statements are built once per shape
    of query (columns, conditions, sort) and reused with this request's values.

    The total comes with the page, as one more column (an uncorrelated scalar subquery, which
    every backend runs once per statement): one statement per search, not two, unless its
    conditions' values would not fit twice in one statement (then the count runs alone first)
    or the page is empty (then the count runs alone after, to tell "no match" from "past the
    end"). Not for `distinct`, whose count is over a subquery of its own.
    """
    # checked in the order the statements would meet them: columns, conditions, sort
    if parameters:
        for p in parameters:
            column_for(COLUMNS, p)
    params = bound_values(COLUMNS, specs)
    needed = check_bound_values(conn.dialect.name, specs)
    for s in sort:
        column_for(COLUMNS, s.parameter)
    count, page_stmt, with_total = _search_statements(
        tuple(parameters) if parameters else None,
        shape(specs),
        tuple((s.parameter, s.direction) for s in sort),
        distinct,
    )
    offset = (page - 1) * per_page
    # the conditions' values twice (count and page) and the page's two; an offset past the
    # INTEGER range (a client's page 2**70) fails in the drivers and is past any table's end
    if (
        with_total is not None
        and offset <= _INTEGER_MAX
        and 2 * needed - 2 <= bound_value_limit(conn.dialect.name)
    ):
        result = await conn.execute(with_total, {**params, "p_limit": per_page, "p_offset": offset})
        keys = [str(k) for k in result.keys()][:-1]  # noqa: SIM118 - plain str keys for orjson
        found = result.all()
        if found:
            # zip stops at the last key: the total column is left out
            return found[0][-1], [dict(zip(keys, row)) for row in found]  # noqa: B905
        return (await conn.execute(count, params)).scalar_one(), []
    total = (await conn.execute(count, params)).scalar_one()
    if total == 0 or offset >= total:
        return total, []
    rows = await conn.execute(page_stmt, {**params, "p_limit": per_page, "p_offset": offset})
    return total, rows_as_dicts(rows)


@lru_cache(maxsize=STATEMENT_CACHE)
def _search_statements(
    parameters: tuple[str, ...] | None,
    shapes: tuple[SpecShape, ...],
    sort: tuple[tuple[str, str], ...],
    distinct: bool,
) -> tuple[Select[Any], Select[Any], Select[Any] | None]:
    """(count, page, page with the total as its last column) for one shape of search; the
    pages take `p_limit` and `p_offset`. No third statement for `distinct`."""
    cols = [COLUMNS[p] for p in parameters] if parameters else list(T.columns)
    where = bound_where(COLUMNS, shapes)
    ordering = [COLUMNS[p].desc() if d == "desc" else COLUMNS[p].asc() for p, d in sort]
    limit = bindparam("p_limit", type_=Integer)
    offset = bindparam("p_offset", type_=Integer)
    if distinct:
        base = select(*cols).distinct()
        if where is not None:
            base = base.where(where)
        count = select(func.count()).select_from(base.subquery())
        return count, base.order_by(*ordering).limit(limit).offset(offset), None
    count = select(func.count()).select_from(T)
    if where is not None:
        count = count.where(where)
    # Stable pages: ties broken by PilotID, in the direction of the last sort key. An index on
    # (filter, sort key) ends with the row id ascending, so a descending sort ("newest first")
    # reads it backwards and needs no sort step for the tie-breaker (DiracX sets no order
    # among ties at all).
    last_desc = bool(sort) and sort[-1][1] == "desc"
    ordering.append(T.c.PilotID.desc() if last_desc else T.c.PilotID.asc())
    ids = select(T.c.PilotID)
    if where is not None:
        ids = ids.where(where)
    page_ids = ids.order_by(*ordering).limit(limit).offset(offset).subquery("page")
    page = (
        select(*cols).join_from(T, page_ids, T.c.PilotID == page_ids.c.PilotID).order_by(*ordering)
    )
    with_total = (
        select(*cols, count.scalar_subquery().label("total_matches"))
        .join_from(T, page_ids, T.c.PilotID == page_ids.c.PilotID)
        .order_by(*ordering)
    )
    return count, page, with_total


async def summary(
    conn: AsyncConnection, *, grouping: Sequence[str], specs: Sequence[SearchSpec]
) -> list[dict[str, Any]]:
    for g in grouping:
        column_for(COLUMNS, g)
    params = bound_values(COLUMNS, specs)
    check_bound_values(conn.dialect.name, specs)
    shapes = shape(specs)
    if pilot_counts.answers(conn.dialect.name, grouping, shapes):
        statement = pilot_counts.summary_statement(tuple(grouping), shapes)
    else:
        statement = _summary_statement(tuple(grouping), shapes)
    return rows_as_dicts(await conn.execute(statement, params))


@lru_cache(maxsize=STATEMENT_CACHE)
def _summary_statement(grouping: tuple[str, ...], shapes: tuple[SpecShape, ...]) -> Select[Any]:
    where = bound_where(COLUMNS, shapes)
    if grouping:
        cols = [COLUMNS[g] for g in grouping]
        stmt = select(*cols, func.count().label("count")).group_by(*cols).order_by(*cols)
    else:
        stmt = select(*T.columns, func.count().label("count")).group_by(*T.columns)
    if where is not None:
        stmt = stmt.where(where)
    return stmt


async def delete_pilots(
    conn: AsyncConnection,
    *,
    stamps: Sequence[str] | None = None,
    older_than: datetime | None = None,
    statuses: Sequence[str] | None = None,
    vos: Iterable[str] | None = None,
) -> int:
    """Delete pilots (their job mappings, kill and output requests, outputs, and which
    secret registered them); returns how many pilots went. A stamp registered again later
    starts with no secret's claim on it."""
    conditions: list[ColumnElement[bool]] = []
    if stamps is not None:
        conditions.append(T.c.PilotStamp.in_(stamps))
    if older_than is not None:
        conditions.append(T.c.SubmissionTime < older_than)
    if statuses:
        conditions.append(T.c.Status.in_(statuses))
    if vos is not None:
        conditions.append(T.c.VO.in_(list(vos)))
    found = list(await conn.execute(select(T.c.PilotID, T.c.PilotStamp).where(*conditions)))
    ids = [r[0] for r in found]
    for chunk in chunks(ids):
        await conn.execute(delete(JOBS).where(JOBS.c.PilotID.in_(chunk)))
        await conn.execute(delete(REQUESTS).where(REQUESTS.c.PilotID.in_(chunk)))
        await conn.execute(delete(OUTPUTS).where(OUTPUTS.c.PilotID.in_(chunk)))
        await conn.execute(delete(T).where(T.c.PilotID.in_(chunk)))
    for stamps in chunks([r[1] for r in found]):
        await conn.execute(delete(REGISTRATIONS).where(REGISTRATIONS.c.PilotStamp.in_(stamps)))
    return len(ids)


async def add_jobs(
    conn: AsyncConnection, pilot_id: int, job_ids: Sequence[int], now: datetime
) -> None:
    """Record jobs run by a pilot; a job already recorded for it is not an error."""
    known = {
        r[0]
        for r in await conn.execute(
            select(JOBS.c.JobID).where(JOBS.c.PilotID == pilot_id, JOBS.c.JobID.in_(job_ids))
        )
    }
    new = sorted(set(job_ids) - known)
    if not new:  # a re-sent association (or log batch) changes nothing
        return
    await conn.execute(
        insert(JOBS), [{"PilotID": pilot_id, "JobID": j, "StartTime": now} for j in new]
    )
    row = (await conn.execute(select(T.c.InitialJobID).where(T.c.PilotID == pilot_id))).one()
    values: dict[str, Any] = {"CurrentJobID": max(job_ids), "LastUpdateTime": now}
    if not row[0]:
        values["InitialJobID"] = min(job_ids)
    await conn.execute(UPDATE_PILOTS.where(T.c.PilotID == pilot_id).values(values))


async def jobs_of(conn: AsyncConnection, pilot_id: int) -> list[int]:
    rows = await conn.execute(
        select(JOBS.c.JobID).where(JOBS.c.PilotID == pilot_id).order_by(JOBS.c.JobID)
    )
    return [r[0] for r in rows]


async def pilot_ids_for_jobs(conn: AsyncConnection, job_ids: Sequence[int]) -> list[int]:
    ids: set[int] = set()
    for chunk in chunks(list(job_ids)):
        rows = await conn.execute(select(JOBS.c.PilotID).where(JOBS.c.JobID.in_(chunk)).distinct())
        ids.update(r[0] for r in rows)
    return sorted(ids)
