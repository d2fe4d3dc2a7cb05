"""PilotLogs on PostgreSQL: one partition a day of ReceivedTime, made ahead, dropped whole.

A large VO stores hundreds of millions of log lines a day. Deleting a day of them row by row
(the retention on SQLite and MariaDB) writes as much WAL as inserting them did and leaves the
table and its indexes bloated for VACUUM to clean; dropping the day's partition is one catalog
change. So on PostgreSQL migration 0008 makes `PilotLogs` a table partitioned by RANGE on
`ReceivedTime` (the server's own clock, so every batch lands in today's partition, and the
retention, counted from the arrival time, is exactly a set of whole partitions), with:

- daily partitions `PilotLogs_pYYYYMMDD` covering [day 00:00, next day 00:00) UTC, which the
  maintenance makes `log_partition_days_ahead` days ahead (`ensure_partitions`);
- a DEFAULT partition `PilotLogs_default`, so an insert never fails for want of a partition
  (a server left without maintenance for longer than that); `ensure_partitions` moves any rows
  of a day it makes out of it, and the retention deletes its old rows one by one;
- a primary key (LogID, ReceivedTime): PostgreSQL requires the partition key in it.

Retention (`drop_partitions_before`) drops the partitions whose whole day is older than the
cutoff: a line is kept up to one day longer than `log_retention_days`, rather than deleted row
by row from the partition of the boundary day.

DDL takes an ACCESS EXCLUSIVE lock on `PilotLogs` for a moment; behind a long search it would
wait, and every insert would queue behind it. So these statements run with a lock timeout: if
the lock does not come, the maintenance run fails with that error and the next run tries again
(partitions are made days ahead, so nothing is lost meanwhile).
"""

from __future__ import annotations

import logging
import re
from datetime import date, datetime, time, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

# Every statement here is built from this module's constants and dates it formats itself (no
# caller's text): DDL takes no bound parameters, hence the f-strings and the S608 exemptions.

log = logging.getLogger(__name__)

TABLE = "PilotLogs"
DEFAULT = "PilotLogs_default"
#: A partition's name: the table's, `_p` and the day it holds.
_NAME = re.compile(r"^PilotLogs_p(\d{8})$")
#: How long DDL may wait for its lock before the run gives up (and the next run retries).
LOCK_TIMEOUT = "5s"
#: Below this many rows (by the planner's estimate) a dropped partition's rows are counted
#: exactly for the maintenance report; above it the estimate is reported, as counting would read
#: the whole day's partition only to print a number.
EXACT_COUNT_BELOW = 1_000_000


def partition_name(day: date) -> str:
    return f"{TABLE}_p{day:%Y%m%d}"


def partition_day(name: str) -> date | None:
    """The day a partition holds, from its name; None for a table that is not one of ours."""
    found = _NAME.match(name)
    if found is None:
        return None
    digits = found[1]
    return date(int(digits[:4]), int(digits[4:6]), int(digits[6:]))


def is_log_partition(name: str) -> bool:
    """A partition of PilotLogs (a table the schema does not declare: it mirrors its parent)."""
    return name == DEFAULT or partition_day(name) is not None


def _bounds(day: date) -> tuple[str, str]:
    return f"{day:%Y-%m-%d} 00:00:00", f"{day + timedelta(days=1):%Y-%m-%d} 00:00:00"


def make_partition_sql(day: date) -> list[str]:
    """Statements adding the partition of `day`, whether or not the default partition holds
    rows of that day: a table like the parent, the day's rows moved into it from the default
    partition, then attached (which checks the bounds and builds the partitioned indexes).
    `CREATE TABLE ... PARTITION OF` would fail instead, as soon as the default had such a row."""
    name = partition_name(day)
    low, high = _bounds(day)
    return [
        f'CREATE TABLE "{name}" (LIKE "{TABLE}" INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
        f'WITH moved AS (DELETE FROM "{DEFAULT}" WHERE "ReceivedTime" >= \'{low}\' '  # noqa: S608
        f"AND \"ReceivedTime\" < '{high}' RETURNING *) "
        f'INSERT INTO "{name}" SELECT * FROM moved',
        f'ALTER TABLE "{TABLE}" ATTACH PARTITION "{name}" '
        f"FOR VALUES FROM ('{low}') TO ('{high}')",
    ]


async def is_partitioned(conn: AsyncConnection) -> bool:
    """PilotLogs is partitioned here (PostgreSQL after migration 0008)."""
    if conn.dialect.name != "postgresql":
        return False
    found = await conn.execute(
        text(
            "SELECT 1 FROM pg_partitioned_table p JOIN pg_class c ON c.oid = p.partrelid "
            "WHERE c.relname = :table AND pg_table_is_visible(c.oid)"
        ),
        {"table": TABLE},
    )
    return found.first() is not None


async def partitions(conn: AsyncConnection) -> dict[date, str]:
    """The daily partitions attached to PilotLogs, by day."""
    rows = await conn.execute(
        text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_class p ON p.oid = i.inhparent "
            "WHERE p.relname = :table AND pg_table_is_visible(p.oid)"
        ),
        {"table": TABLE},
    )
    found: dict[date, str] = {}
    for (name,) in rows:
        day = partition_day(name)
        if day is not None:
            found[day] = name
    return found


async def _serialised(conn: AsyncConnection) -> None:
    """Bound this transaction's lock waits, and take the partition work's own lock: a
    `site-director maintenance` run by cron beside the server's would otherwise race it to
    make the same partition (the loser failing on a duplicate table)."""
    await conn.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
    await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('PilotLogs partitions'))"))


async def ensure_partitions(conn: AsyncConnection, today: date, days_ahead: int) -> list[date]:
    """Make the partitions of `today` and the `days_ahead` days after it that are missing;
    the days made, in order."""
    wanted = [today + timedelta(days=n) for n in range(days_ahead + 1)]
    have = await partitions(conn)
    if all(day in have for day in wanted):
        return []  # the usual case: no lock taken
    await _serialised(conn)
    have = await partitions(conn)  # again, under the lock
    made = [day for day in wanted if day not in have]
    for day in made:
        for statement in make_partition_sql(day):
            await conn.execute(text(statement))
    if made:
        log.info("log partitions made for %s", ", ".join(map(str, made)))
    return made


async def _rows_in(conn: AsyncConnection, name: str) -> int:
    estimate = (
        await conn.execute(
            text("SELECT reltuples FROM pg_class WHERE oid = to_regclass(:name)"),
            {"name": f'"{name}"'},
        )
    ).scalar_one()
    if estimate >= EXACT_COUNT_BELOW:  # -1 when never analysed
        return int(estimate)
    count = text(f'SELECT count(*) FROM "{name}"')  # noqa: S608 (our partition's name)
    return int((await conn.execute(count)).scalar_one())


async def drop_partitions_before(conn: AsyncConnection, cutoff: datetime) -> int:
    """Drop the partitions whose whole day is before `cutoff`, and delete the default
    partition's rows received before it; the number of rows removed (see EXACT_COUNT_BELOW)."""
    removed = 0
    old = [name for day, name in sorted((await partitions(conn)).items()) if _ends(day) <= cutoff]
    if old:
        await _serialised(conn)
        have = set((await partitions(conn)).values())  # again, under the lock
        old = [name for name in old if name in have]
    for name in old:
        removed += await _rows_in(conn, name)
        await conn.execute(text(f'DROP TABLE "{name}"'))
    if old:
        log.info("log partitions dropped: %s", ", ".join(old))
    result = await conn.execute(
        text(f'DELETE FROM "{DEFAULT}" WHERE "ReceivedTime" < :cutoff'),  # noqa: S608
        {"cutoff": cutoff},
    )
    return removed + result.rowcount


def _ends(day: date) -> datetime:
    return datetime.combine(day + timedelta(days=1), time())
