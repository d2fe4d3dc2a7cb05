"""Pilot secrets, kept only as SHA-256 hashes, with their constraints."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    Table,
    Update,
    bindparam,
    delete,
    func,
    insert,
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql import Insert

from server.db.batch import chunks
from server.db.driver_sql import marks, quoted, sqlite_time
from server.db.schema import PILOTS, SECRETS
from server.db.schema import SECRET_REGISTRATIONS as REGISTRATIONS
from server.db.schema import SECRET_STAMPS as STAMPS
from server.models import SecretInfo


def dump_list(values: Sequence[str]) -> str:
    return json.dumps(sorted(set(values)))


async def insert_secrets(
    conn: AsyncConnection,
    *,
    hashes: Sequence[str],
    vos: Sequence[str],
    bound_stamps: Sequence[str | None],
    sites: Sequence[str],
    ces: Sequence[str],
    queues: Sequence[str],
    expires_at: datetime | None,
    uses: int | None,
    now: datetime,
) -> list[int]:
    """Insert one secret per hash (secret i bound to `bound_stamps[i]` unless None); returns ids.

    On SQLite the rows go to the driver as tuples with fixed SQL, and the ids are read back as
    the rows past the table's largest id before the insert (a range of the primary key, not a
    probe of the hash index per secret): SQLAlchemy's per-row parameter handling was most of
    minting's cost for the director's 10,000 secrets a call."""
    if conn.dialect.name == "sqlite":
        return await _sqlite_insert_secrets(
            conn,
            hashes,
            bound_stamps,
            (
                dump_list(vos),
                dump_list(sites),
                dump_list(ces),
                dump_list(queues),
                sqlite_time(expires_at) if expires_at is not None else None,
                uses,
                sqlite_time(now),
                None,
                0,
            ),
        )
    common = {
        "VOs": dump_list(vos),
        "Sites": dump_list(sites),
        "CEs": dump_list(ces),
        "Queues": dump_list(queues),
        "ExpiresAt": expires_at,
        "RemainingUses": uses,
        "CreatedAt": now,
        "LastUsedAt": None,
        "Revoked": False,
    }
    await conn.execute(insert(SECRETS), [{"SecretHash": h, **common} for h in hashes])
    ids: dict[str, int] = {}
    for chunk in chunks(hashes):
        rows = await conn.execute(
            select(SECRETS.c.SecretHash, SECRETS.c.SecretID).where(SECRETS.c.SecretHash.in_(chunk))
        )
        ids.update({r[0]: r[1] for r in rows})
    bindings = [
        {"SecretID": ids[h], "PilotStamp": stamp}
        for h, stamp in zip(hashes, bound_stamps, strict=True)
        if stamp is not None
    ]
    if bindings:
        await conn.execute(insert(STAMPS), bindings)
    return [ids[h] for h in hashes]


#: `_sqlite_insert_secrets`' statements; the common values in the order of `_COMMON`.
_COMMON = (
    "VOs",
    "Sites",
    "CEs",
    "Queues",
    "ExpiresAt",
    "RemainingUses",
    "CreatedAt",
    "LastUsedAt",
    "Revoked",
)
_SQLITE_INSERT = (
    f'INSERT INTO "PilotSecrets" ("SecretHash", {", ".join(map(quoted, _COMMON))}) '  # noqa: S608
    f"VALUES ({marks(1 + len(_COMMON))})"
)
_SQLITE_MAX_ID = 'SELECT max("SecretID") FROM "PilotSecrets"'
_SQLITE_IDS_AFTER = 'SELECT "SecretHash", "SecretID" FROM "PilotSecrets" WHERE "SecretID" > ?'
_SQLITE_BIND = 'INSERT INTO "PilotSecretStamps" ("SecretID", "PilotStamp") VALUES (?, ?)'


async def _sqlite_insert_secrets(
    conn: AsyncConnection,
    hashes: Sequence[str],
    bound_stamps: Sequence[str | None],
    common: tuple[Any, ...],
) -> list[int]:
    before = (await conn.exec_driver_sql(_SQLITE_MAX_ID)).scalar() or 0
    await conn.exec_driver_sql(_SQLITE_INSERT, [(h, *common) for h in hashes])
    # rows past `before` are this transaction's (and, at most, another process's that slipped
    # in before our insert took the write lock): keyed by hash, only ours are taken
    found: Any = await conn.exec_driver_sql(_SQLITE_IDS_AFTER, (before,))
    ids: dict[str, int] = dict(found.fetchall())
    ordered = [ids[h] for h in hashes]
    bindings = [
        (secret_id, stamp)
        for secret_id, stamp in zip(ordered, bound_stamps, strict=True)
        if stamp is not None
    ]
    if bindings:
        await conn.exec_driver_sql(_SQLITE_BIND, bindings)
    return ordered


def load_list(raw: str | None) -> list[str]:
    if not raw:
        return []
    values = json.loads(raw)
    return [str(v) for v in values] if isinstance(values, list) else []


def insert_ignoring_conflicts(table: Table, dialect: str) -> Insert:
    """An INSERT that skips rows clashing on a unique key (idempotent marks, racing writers)."""
    if dialect == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    if dialect == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing()
    return insert(table).prefix_with("IGNORE")


def _exchange_facts() -> list[Any]:
    """What the exchange needs to know of a secret besides its own columns (correlated on
    SECRETS, with the bound parameter `stamp`): how many stamps it is bound to, whether `stamp`
    is one, whether this secret registered `stamp` itself, and the pilot `stamp` if any."""
    stamp = bindparam("stamp", type_=STAMPS.c.PilotStamp.type)
    # spelt out with its table: in a RETURNING clause SQLAlchemy writes a correlated column
    # bare, and a bare "SecretID" inside these subqueries would be their own table's
    secret_id = literal_column(f'"{SECRETS.name}"."SecretID"', SECRETS.c.SecretID.type)
    bound_count = (
        select(func.count()).select_from(STAMPS).where(STAMPS.c.SecretID == secret_id)
    ).scalar_subquery()
    bound_here = (
        select(func.count())
        .select_from(STAMPS)
        .where(STAMPS.c.SecretID == secret_id, STAMPS.c.PilotStamp == stamp)
        .scalar_subquery()
    )
    registered_here = (
        select(func.count())
        .select_from(REGISTRATIONS)
        .where(REGISTRATIONS.c.PilotStamp == stamp, REGISTRATIONS.c.SecretID == secret_id)
        .scalar_subquery()
    )

    def pilot(column: Any, name: str) -> Any:
        return select(column).where(PILOTS.c.PilotStamp == stamp).scalar_subquery().label(name)

    return [
        SECRETS.c.SecretID,
        SECRETS.c.VOs,
        SECRETS.c.Sites,
        SECRETS.c.CEs,
        SECRETS.c.Queues,
        bound_count.label("bound_count"),
        bound_here.label("bound_here"),
        registered_here.label("registered_here"),
        pilot(PILOTS.c.VO, "PilotVO"),
        pilot(PILOTS.c.GridSite, "GridSite"),
        pilot(PILOTS.c.DestinationSite, "DestinationSite"),
        pilot(PILOTS.c.Queue, "Queue"),
    ]


def _consume_for_exchange() -> Update:
    """Spend one use of the secret with hash `secret_hash` unless revoked, used up or expired
    at `now`, and return what `_exchange_facts` says of it: one statement, where the backend
    has UPDATE ... RETURNING (built once)."""
    which = SECRETS.c.SecretHash == bindparam("secret_hash", type_=SECRETS.c.SecretHash.type)
    return _spend_one_use(which).returning(*_exchange_facts())


def _exchange_lookup() -> Select[Any]:
    """The exchange's read, built once with bound parameters `secret_hash` and `stamp`:
    constructing the expression was a third of the exchange's CPU when done per request."""
    stamp = bindparam("stamp", type_=STAMPS.c.PilotStamp.type)
    bound_count = (
        select(func.count())
        .select_from(STAMPS)
        .where(STAMPS.c.SecretID == SECRETS.c.SecretID)
        .scalar_subquery()
    )
    bound_here = (
        select(func.count())
        .select_from(STAMPS)
        .where(STAMPS.c.SecretID == SECRETS.c.SecretID, STAMPS.c.PilotStamp == stamp)
        .scalar_subquery()
    )
    registered_here = (
        select(func.count())
        .select_from(REGISTRATIONS)
        .where(REGISTRATIONS.c.PilotStamp == stamp, REGISTRATIONS.c.SecretID == SECRETS.c.SecretID)
        .scalar_subquery()
    )
    return (
        select(
            SECRETS.c.SecretID,
            SECRETS.c.VOs,
            SECRETS.c.Sites,
            SECRETS.c.CEs,
            SECRETS.c.Queues,
            SECRETS.c.ExpiresAt,
            SECRETS.c.RemainingUses,
            SECRETS.c.Revoked,
            bound_count.label("bound_count"),
            bound_here.label("bound_here"),
            registered_here.label("registered_here"),
            PILOTS.c.VO.label("PilotVO"),
            PILOTS.c.GridSite,
            PILOTS.c.DestinationSite,
            PILOTS.c.Queue,
        )
        .select_from(SECRETS.outerjoin(PILOTS, PILOTS.c.PilotStamp == stamp))
        .where(SECRETS.c.SecretHash == bindparam("secret_hash", type_=SECRETS.c.SecretHash.type))
    )


def _consume() -> Update:
    """Spend one use of `secret_id` unless revoked, used up or expired at `now` (built once)."""
    which = SECRETS.c.SecretID == bindparam("secret_id", type_=SECRETS.c.SecretID.type)
    return _spend_one_use(which)


def _spend_one_use(which: ColumnElement[bool]) -> Update:
    """The one definition of spending a use: the secret `which` selects, unless revoked, used
    up or expired at the bound `now` (both ways of spending, `_consume` and
    `_consume_for_exchange`, must refuse exactly the same secrets)."""
    now = bindparam("now", type_=SECRETS.c.LastUsedAt.type)
    return (
        update(SECRETS)
        .where(
            which,
            SECRETS.c.Revoked.is_(False),
            or_(SECRETS.c.RemainingUses.is_(None), SECRETS.c.RemainingUses > 0),
            or_(SECRETS.c.ExpiresAt.is_(None), SECRETS.c.ExpiresAt > now),
        )
        .values(RemainingUses=SECRETS.c.RemainingUses - 1, LastUsedAt=now)
    )


_EXCHANGE_LOOKUP = _exchange_lookup()
_CONSUME = _consume()
_CONSUME_FOR_EXCHANGE = _consume_for_exchange()


def consumes_in_one_statement(conn: AsyncConnection) -> bool:
    """Whether `consume_for_exchange` works here: SQLite (3.35+) and PostgreSQL have
    UPDATE ... RETURNING, MariaDB does not (it reads with `secret_for_exchange`, then spends
    with `consume_use`)."""
    return bool(conn.dialect.update_returning)


async def consume_for_exchange(
    conn: AsyncConnection, secret_hash: str, stamp: str, now: datetime
) -> dict[str, Any] | None:
    """Spend one use of the secret with this hash, atomically (the conditions sit in the
    UPDATE, so with K uses left exactly K concurrent callers get a row), and return its
    constraints and the facts `secret_for_exchange` returns; None if no such live secret.
    The caller checks the constraints and, if they refuse, rolls back: the use is not spent.
    The hot path of the secret exchange: one round trip for read and spend."""
    result = await conn.execute(
        _CONSUME_FOR_EXCHANGE, {"secret_hash": secret_hash, "stamp": stamp, "now": now}
    )
    row = result.mappings().first()
    return dict(row) if row is not None else None


async def secret_for_exchange(
    conn: AsyncConnection, secret_hash: str, stamp: str
) -> dict[str, Any] | None:
    """The secret with this hash in one statement: its constraints, how many stamps it is bound
    to, whether `stamp` is one of them, whether this secret registered `stamp` itself (the
    vacuum case), and the pilot `stamp` if registered (`PilotVO` None if not). The hot path of
    the secret exchange, so one round trip."""
    result = await conn.execute(_EXCHANGE_LOOKUP, {"secret_hash": secret_hash, "stamp": stamp})
    row = result.mappings().first()
    return dict(row) if row is not None else None


async def record_registration(conn: AsyncConnection, secret_id: int, stamp: str) -> None:
    """`stamp` was registered by the unbound secret `secret_id`: it may open it again."""
    await conn.execute(insert(REGISTRATIONS), {"PilotStamp": stamp, "SecretID": secret_id})


async def consume_use(conn: AsyncConnection, secret_id: int, now: datetime) -> bool:
    """Spend one use, atomically: the conditions sit in the UPDATE itself, so with K uses left
    exactly K concurrent callers see a row changed, whatever the backend's isolation level."""
    result = await conn.execute(_CONSUME, {"secret_id": secret_id, "now": now})
    return result.rowcount == 1


def _info(row: Mapping[str, Any], stamps: list[str]) -> SecretInfo:
    def unix(value: datetime | None) -> int | None:
        return int(value.replace(tzinfo=UTC).timestamp()) if value is not None else None

    return SecretInfo(
        secret_id=row["SecretID"],
        vos=load_list(row["VOs"]),
        pilot_stamps=stamps,
        sites=load_list(row["Sites"]),
        ces=load_list(row["CEs"]),
        queues=load_list(row["Queues"]),
        expires_at=unix(row["ExpiresAt"]),
        remaining_uses=row["RemainingUses"],
        created_at=unix(row["CreatedAt"]) or 0,
        last_used_at=unix(row["LastUsedAt"]),
        revoked=bool(row["Revoked"]),
    )


async def stamps_of(conn: AsyncConnection, ids: Sequence[int]) -> dict[int, list[str]]:
    bound: dict[int, list[str]] = {}
    for chunk in chunks(ids):
        rows = await conn.execute(
            select(STAMPS.c.SecretID, STAMPS.c.PilotStamp)
            .where(STAMPS.c.SecretID.in_(chunk))
            .order_by(STAMPS.c.PilotStamp)
        )
        for secret_id, stamp in rows:
            bound.setdefault(secret_id, []).append(stamp)
    return bound


async def list_secrets(
    conn: AsyncConnection,
    *,
    secret_ids: Sequence[int] | None = None,
    pilot_stamp: str | None = None,
    offset: int = 0,
    limit: int = 1000,
) -> list[SecretInfo]:
    """Secrets as admins see them (never the secret, nor its hash), by id."""
    stmt = select(SECRETS).order_by(SECRETS.c.SecretID)
    if secret_ids is not None:
        stmt = stmt.where(SECRETS.c.SecretID.in_(secret_ids))
    if pilot_stamp is not None:
        stmt = stmt.where(
            SECRETS.c.SecretID.in_(
                select(STAMPS.c.SecretID).where(STAMPS.c.PilotStamp == pilot_stamp)
            )
        )
    if offset >= 2**62:
        return []  # past any table's end (and a huge OFFSET is a MariaDB syntax error)
    rows = [dict(r) for r in (await conn.execute(stmt.offset(offset).limit(limit))).mappings()]
    bound = await stamps_of(conn, [r["SecretID"] for r in rows])
    return [_info(r, bound.get(r["SecretID"], [])) for r in rows]


async def secret_ids_for_stamps(conn: AsyncConnection, stamps: Sequence[str]) -> list[int]:
    ids: set[int] = set()
    for chunk in chunks(stamps):
        rows = await conn.execute(select(STAMPS.c.SecretID).where(STAMPS.c.PilotStamp.in_(chunk)))
        ids.update(r[0] for r in rows)
    return sorted(ids)


async def vos_of(conn: AsyncConnection, ids: Sequence[int]) -> dict[int, list[str]]:
    found: dict[int, list[str]] = {}
    for chunk in chunks(ids):
        rows = await conn.execute(
            select(SECRETS.c.SecretID, SECRETS.c.VOs).where(SECRETS.c.SecretID.in_(chunk))
        )
        found.update({r[0]: load_list(r[1]) for r in rows})
    return found


async def revoke(conn: AsyncConnection, ids: Sequence[int]) -> int:
    changed = 0
    for chunk in chunks(ids):
        result = await conn.execute(
            update(SECRETS)
            .where(SECRETS.c.SecretID.in_(chunk), SECRETS.c.Revoked.is_(False))
            .values(Revoked=True)
        )
        changed += result.rowcount
    return changed


async def update_secret(conn: AsyncConnection, secret_id: int, values: dict[str, Any]) -> bool:
    result = await conn.execute(
        update(SECRETS).where(SECRETS.c.SecretID == secret_id).values(values)
    )
    return result.rowcount == 1


async def purge(conn: AsyncConnection, now: datetime, *, revoked: bool = True) -> int:
    """Delete secrets that can never work again: expired, used up (and revoked)."""
    dead = or_(SECRETS.c.ExpiresAt <= now, SECRETS.c.RemainingUses <= 0)
    if revoked:
        dead = or_(dead, SECRETS.c.Revoked.is_(True))
    ids = [r[0] for r in await conn.execute(select(SECRETS.c.SecretID).where(dead))]
    for chunk in chunks(ids):
        await conn.execute(delete(STAMPS).where(STAMPS.c.SecretID.in_(chunk)))
        await conn.execute(delete(REGISTRATIONS).where(REGISTRATIONS.c.SecretID.in_(chunk)))
        await conn.execute(delete(SECRETS).where(SECRETS.c.SecretID.in_(chunk)))
    return len(ids)
