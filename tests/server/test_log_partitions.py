"""PilotLogs partitioned by day on PostgreSQL: migration 0008, partitions made ahead, inserts
that find no partition, retention by dropping partitions, searches across partitions.

SQLite and MariaDB keep a plain table (migration 0008 says why): these tests skip there."""

from __future__ import annotations

import asyncio
import uuid
from datetime import date, datetime, timedelta
from http import HTTPStatus
from typing import Any

import pytest
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncConnection

from server.clock import utcnow
from server.db import log_partitions as parts
from server.db import logs as db
from server.db.engine import Database
from server.db.migrate import alembic_config, upgrade
from server.logic import logs as logic
from server.maintenance import run_maintenance
from tests.conftest import BACKENDS, RUN_DB, Roles, missing
from tests.server.test_logs import LOGS, line, pilot, search

DAY = timedelta(days=1)


def postgres_only(api: Roles) -> None:
    if api.sut.backend != "postgres":
        pytest.skip("the log table is partitioned on PostgreSQL only (see migration 0008)")


async def where_rows_are(conn: AsyncConnection) -> dict[str, list[str]]:
    """Each line's message by the partition that holds it."""
    rows = await conn.execute(
        text('SELECT tableoid::regclass::text, "Message" FROM "PilotLogs" ORDER BY "LogID"')
    )
    found: dict[str, list[str]] = {}
    for table, message in rows:
        found.setdefault(table.strip('"'), []).append(message)
    return found


async def a_pilots_line(api: Roles, message: str = "today") -> tuple[str, int]:
    """A registered pilot that sent one line through the API: its stamp and PilotID."""
    stamp, client = await pilot(api)
    r = await client.post(LOGS, json={"lines": [line(message)]})
    assert r.status_code == HTTPStatus.NO_CONTENT, r.text
    [row] = [x for x in (await search(api.admin)).json() if x["PilotStamp"] == stamp]
    return stamp, row["PilotID"]


async def insert_received(
    api: Roles, stamp: str, pilot_id: int, received: datetime, message: str
) -> None:
    """A line as if received at `received` (the API stamps lines with the server's clock)."""
    async with api.sut.app.state.ctx.db.transaction() as conn:
        await db.insert_lines(
            conn,
            pilot_id=pilot_id,
            stamp=stamp,
            vo="lhcb",
            received=received,
            lines=[(received, "INFO", "Pilot", message)],
        )


# --- with the server's database (migrated to head) ---------------------------------------------


async def test_todays_line_lands_in_todays_partition_and_a_day_without_one_in_the_default(
    api: Roles,
) -> None:
    postgres_only(api)
    ctx = api.sut.app.state.ctx
    await logic.make_partitions(ctx)  # an earlier test may have dropped today's
    stamp, pilot_id = await a_pilots_line(api, "today")
    later = utcnow() + 400 * DAY  # far beyond the partitions made ahead
    await insert_received(api, stamp, pilot_id, later, "next year")

    async with ctx.db.read() as conn:
        assert await where_rows_are(conn) == {
            parts.partition_name(utcnow().date()): ["today"],
            parts.DEFAULT: ["next year"],
        }
    # making that day's partition moves its lines out of the default partition
    async with ctx.db.transaction() as conn:
        assert await parts.ensure_partitions(conn, later.date(), 0) == [later.date()]
    async with ctx.db.read() as conn:
        placed = await where_rows_are(conn)
    assert placed[parts.partition_name(later.date())] == ["next year"]
    assert parts.DEFAULT not in placed
    # and searches read across the partitions, in time order
    rows = (await search(api.admin, {"search": [], "sort": []})).json()
    assert [x["Message"] for x in rows] == ["today", "next year"]
    async with ctx.db.transaction() as conn:  # leave no far-future partition to later tests
        await conn.execute(text(f'DROP TABLE "{parts.partition_name(later.date())}"'))


async def test_the_maintenance_makes_partitions_ahead(api: Roles) -> None:
    postgres_only(api)
    ctx = api.sut.app.state.ctx
    ahead = ctx.settings.log_partition_days_ahead
    today = utcnow().date()
    async with ctx.db.transaction() as conn:  # as if the maintenance had not run for a while
        for day, name in (await parts.partitions(conn)).items():
            if day >= today + DAY:
                await conn.execute(text(f'DROP TABLE "{name}"'))

    await run_maintenance(ctx)

    async with ctx.db.read() as conn:
        have = set(await parts.partitions(conn))
    assert {today + n * DAY for n in range(ahead + 1)} <= have
    assert await logic.make_partitions(ctx) == []  # a second run has nothing to make


async def test_two_runs_at_once_make_each_partition_once(api: Roles) -> None:
    """The server's scheduled run and a `site-director maintenance` from cron may overlap."""
    postgres_only(api)
    ctx = api.sut.app.state.ctx
    day = utcnow().date() + 500 * DAY

    async def make() -> list[date]:
        async with ctx.db.transaction() as conn:
            return await parts.ensure_partitions(conn, day, 2)

    first, second = await asyncio.gather(make(), make())
    assert sorted(first + second) == [day, day + DAY, day + 2 * DAY]
    async with ctx.db.transaction() as conn:  # leave no far-future partition to later tests
        for n in range(3):
            await conn.execute(text(f'DROP TABLE "{parts.partition_name(day + n * DAY)}"'))


async def test_retention_drops_whole_old_partitions_and_keeps_recent_lines(api: Roles) -> None:
    postgres_only(api)
    ctx = api.sut.app.state.ctx
    await logic.make_partitions(ctx)
    stamp, pilot_id = await a_pilots_line(api, "recent")
    now = utcnow()
    old = now - 40 * DAY
    async with ctx.db.transaction() as conn:
        await parts.ensure_partitions(conn, old.date(), 0)
    await insert_received(api, stamp, pilot_id, old, "forty days old")
    await insert_received(api, stamp, pilot_id, now - 35 * DAY, "in the default partition")
    # the boundary day: older than the cutoff by the clock, but its day is not wholly older
    boundary = now - 30 * DAY - timedelta(seconds=1)
    async with ctx.db.transaction() as conn:
        await parts.ensure_partitions(conn, boundary.date(), 0)
    await insert_received(api, stamp, pilot_id, boundary, "boundary day")

    assert await logic.purge(ctx, older_than_days=30, now=now) == 2

    async with ctx.db.read() as conn:
        have = await parts.partitions(conn)
        placed = await where_rows_are(conn)
    assert old.date() not in have
    assert boundary.date() in have  # dropped by a later run, once all of its day is too old
    assert sorted(m for messages in placed.values() for m in messages) == [
        "boundary day",
        "recent",
    ]
    rows = (
        await search(
            api.admin, {"search": [{"parameter": "PilotStamp", "operator": "eq", "value": stamp}]}
        )
    ).json()
    assert [x["Message"] for x in rows] == ["recent", "boundary day"]  # by TimeStamp
    later = now + 31 * DAY
    assert await logic.purge(ctx, older_than_days=30, now=later) == 2
    assert (await search(api.admin)).json() == []


async def test_sqlite_and_mariadb_purge_lines_one_by_one(api: Roles) -> None:
    if api.sut.backend == "postgres":
        pytest.skip("PostgreSQL drops partitions (the tests above)")
    ctx = api.sut.app.state.ctx
    stamp, pilot_id = await a_pilots_line(api, "recent")
    await insert_received(api, stamp, pilot_id, utcnow() - 30 * DAY - timedelta(minutes=1), "old")
    assert await logic.make_partitions(ctx) == []
    assert await logic.purge(ctx, older_than_days=30) == 1  # exact: no whole days there
    assert [x["Message"] for x in (await search(api.admin)).json()] == ["recent"]


# --- the migration, on a database of its own ---------------------------------------------------


def _downgrade(connection: Connection, revision: str) -> None:
    from alembic import command

    command.downgrade(alembic_config(connection), revision)


async def _partitioned(conn: AsyncConnection) -> bool:
    return await parts.is_partitioned(conn)


@pytest.fixture
async def fresh_postgres() -> Any:
    if "postgres" not in BACKENDS:
        pytest.skip("PostgreSQL is not among SITE_DIRECTOR_TEST_DATABASES")
    import asyncpg

    name = f"{RUN_DB}_parts"
    try:
        admin = await asyncpg.connect(host="127.0.0.1", port=5432, user="postgres", database="test")
    except (OSError, ConnectionError) as exc:
        missing(f"postgres is not reachable on 127.0.0.1: {exc}")
    await admin.execute(f"DROP DATABASE IF EXISTS {name}")
    await admin.execute(f"CREATE DATABASE {name}")
    database = Database(f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}")
    try:
        yield database
    finally:
        await database.close()
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()


async def test_the_migration_partitions_the_table_keeps_its_rows_and_downgrades(
    fresh_postgres: Database,
) -> None:
    database = fresh_postgres
    await upgrade(database, "0007")
    today = utcnow().replace(microsecond=0)
    received = [today - 40 * DAY, today - 2 * DAY, today]
    insert = text(
        'INSERT INTO "PilotLogs" ("PilotID", "PilotStamp", "VO", "TimeStamp", "Severity", '
        '"Scope", "Message", "ReceivedTime") VALUES (1, :stamp, \'lhcb\', :at, \'INFO\', '
        "'Pilot', :message, :at)"
    )
    stamp = uuid.uuid4().hex
    async with database.engine.begin() as conn:
        for n, at in enumerate(received):
            await conn.execute(insert, {"stamp": stamp, "at": at, "message": f"line {n}"})
        assert not await _partitioned(conn)

    await upgrade(database)  # to head: 0008

    async with database.engine.begin() as conn:
        assert await _partitioned(conn)
        have = await parts.partitions(conn)
        days: set[date] = {at.date() for at in received}
        days |= {today.date() + n * DAY for n in range(8)}
        assert set(have) == days
        placed = await where_rows_are(conn)
        assert placed == {
            parts.partition_name(at.date()): [f"line {n}"] for n, at in enumerate(received)
        }
        # the LogID sequence continues, and the primary key holds the partition key
        await conn.execute(insert, {"stamp": stamp, "at": today, "message": "after"})
        ids = [
            r[0]
            for r in await conn.execute(text('SELECT "LogID" FROM "PilotLogs" ORDER BY "LogID"'))
        ]
        assert ids == [1, 2, 3, 4]
        key = await conn.execute(
            text(
                "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid"
                " AND a.attnum = ANY(i.indkey) WHERE i.indrelid = '\"PilotLogs\"'::regclass"
                " AND i.indisprimary"
            )
        )
        assert {r[0] for r in key} == {"LogID", "ReceivedTime"}

    async with database.engine.begin() as conn:
        await conn.run_sync(_downgrade, "0007")
    async with database.engine.begin() as conn:
        assert not await _partitioned(conn)
        left = await conn.execute(text('SELECT "Message" FROM "PilotLogs" ORDER BY "LogID"'))
        assert [r[0] for r in left] == ["line 0", "line 1", "line 2", "after"]
        tables = await conn.execute(
            text(
                "SELECT count(*) FROM pg_class WHERE relname LIKE 'PilotLogs\\_%' AND relkind = 'r'"
            )
        )
        assert tables.scalar_one() == 0  # no partition left behind
        await conn.execute(insert, {"stamp": stamp, "at": today, "message": "after downgrade"})
    await upgrade(database)  # and up again
    async with database.engine.begin() as conn:
        assert await _partitioned(conn)
        count = await conn.execute(text('SELECT count(*) FROM "PilotLogs"'))
        assert count.scalar_one() == 5
