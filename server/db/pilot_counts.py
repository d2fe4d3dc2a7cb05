"""Pilot counts per (VO, GridSite, DestinationSite, Queue, Status), kept by triggers on SQLite,
so that a summary over those columns reads one row per queue and status instead of every pilot.

A summary grouped by site and status (the dashboards', the monitor's matrix) is otherwise a scan
of an index entry per pilot: ~80 ns a pilot here, 1 ms at 12,000 pilots and 74 ms at 1,000,000
on SQLite, the largest part of the request. Triggers on `PilotAgents` keep `PilotCounts` in the
writer's own transaction, so the counts are exactly the table's at every commit, whichever
statement wrote (registration, bulk, PATCH, deletion, maintenance, an operator's sqlite3 shell),
and a crash loses or doubles nothing.

SQLite only. There writers are serialised anyway, so a count row costs a write a few
microseconds and nothing else. On PostgreSQL and MariaDB every writer of one queue's pilots
would queue on that queue's count rows until it commits, and two bulk PATCHes touching keys in
different orders could deadlock: there a summary scans the index as before (`answers` says when
the counts serve). Rows that fall to 0 stay (a handful per queue and status ever seen); the
summary leaves them out.

**No statement journal.** SQLite gives a statement a journal of its own (to undo it alone) when
it writes more than one table and may stop halfway with ABORT, the default for a constraint. A
write to `PilotAgents` touches ~13 pages (the row, 11 indexes, a count); their journal passes
SQLite's 64 KiB in-memory limit and goes to a temporary file, created and unlinked per
statement: +50-75 us a registration here, which sank the first try of these counts (b53dd64,
reverted). So nothing here can ABORT:

- the triggers' statements say OR FAIL, and the insert of a new count row asks NOT EXISTS
  first, so that it cannot conflict (an UPSERT's DO UPDATE always aborts on error);
- the server's writes to `PilotAgents` say OR FAIL too (`WRITE_PREFIX`; a DELETE has no
  constraint to fail). FAIL keeps what a statement wrote before it failed, but every
  transaction here is rolled back whole on an error, so nothing partial is ever committed.

With OR FAIL the triggers cost a registration ~12 us and a status change ~15 us here (plain
sqlite3 on the server's schema). A write without it (an operator's shell) keeps the counts as
exact, only at the old cost.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from sqlalchemy import BigInteger, Column, Connection, MetaData, Select, String, Table, func, select
from sqlalchemy import text as sql

from server.db.search import SpecShape, bound_where

KEYS = ("VO", "GridSite", "DestinationSite", "Queue", "Status")
"""The pilot columns the counts are kept by: a summary grouped and filtered by these only is
answered from the counts."""

WRITE_PREFIX = "OR FAIL"
"""The conflict clause of the server's INSERT and UPDATE on `PilotAgents` on SQLite: with it,
they need no statement journal (see above)."""

counts_metadata = MetaData()
"""Not the schema's `metadata`: the table exists on SQLite only (created by migration 0009)."""

PILOT_COUNTS = Table(
    "PilotCounts",
    counts_metadata,
    Column("VO", String(128), primary_key=True),
    Column("GridSite", String(128), primary_key=True),
    Column("DestinationSite", String(128), primary_key=True),
    Column("Queue", String(128), primary_key=True),
    Column("Status", String(32), primary_key=True),
    Column("N", BigInteger, nullable=False),
)
COUNT_COLUMNS = {name: PILOT_COUNTS.c[name] for name in KEYS}

_KEY = ", ".join(f'"{k}"' for k in KEYS)
_OLD_KEY = " AND ".join(f'"{k}" = OLD."{k}"' for k in KEYS)
_NEW_KEY = " AND ".join(f'"{k}" = NEW."{k}"' for k in KEYS)
_NEW_VALUES = ", ".join(f'NEW."{k}"' for k in KEYS)
_CHANGED = " OR ".join(f'OLD."{k}" IS NOT NEW."{k}"' for k in KEYS)
# the statements are made of the constant column names above only; none can ABORT (see above)
_ADD_NEW = (
    f'INSERT OR FAIL INTO "PilotCounts" ({_KEY}, "N") SELECT {_NEW_VALUES}, 0 '  # noqa: S608
    f'WHERE NOT EXISTS (SELECT 1 FROM "PilotCounts" WHERE {_NEW_KEY}); '
    f'UPDATE OR FAIL "PilotCounts" SET "N" = "N" + 1 WHERE {_NEW_KEY};'
)
_REMOVE_OLD = f'UPDATE OR FAIL "PilotCounts" SET "N" = "N" - 1 WHERE {_OLD_KEY};'  # noqa: S608

CREATE = (
    'CREATE TABLE "PilotCounts" ("VO" VARCHAR(128) NOT NULL, "GridSite" VARCHAR(128) NOT NULL, '
    '"DestinationSite" VARCHAR(128) NOT NULL, "Queue" VARCHAR(128) NOT NULL, '
    f'"Status" VARCHAR(32) NOT NULL, "N" BIGINT NOT NULL, PRIMARY KEY ({_KEY})) WITHOUT ROWID',
    f'INSERT INTO "PilotCounts" ({_KEY}, "N") '  # noqa: S608
    f'SELECT {_KEY}, count(*) FROM "PilotAgents" GROUP BY {_KEY}',
    f'CREATE TRIGGER "pilot_counts_insert" AFTER INSERT ON "PilotAgents" BEGIN {_ADD_NEW} END',
    f'CREATE TRIGGER "pilot_counts_delete" AFTER DELETE ON "PilotAgents" BEGIN {_REMOVE_OLD} END',
    f'CREATE TRIGGER "pilot_counts_update" AFTER UPDATE OF {_KEY} ON "PilotAgents" '
    f"WHEN {_CHANGED} BEGIN {_REMOVE_OLD} {_ADD_NEW} END",
)
"""The table, filled from the pilots there are, and its triggers (migration 0009)."""

DROP = (
    'DROP TRIGGER IF EXISTS "pilot_counts_update"',
    'DROP TRIGGER IF EXISTS "pilot_counts_delete"',
    'DROP TRIGGER IF EXISTS "pilot_counts_insert"',
    'DROP TABLE IF EXISTS "PilotCounts"',
)


def create(conn: Connection) -> None:
    """Migration 0009's upgrade on SQLite, in the migration's transaction."""
    for statement in CREATE:
        conn.execute(sql(statement))


def drop(conn: Connection) -> None:
    for statement in DROP:
        conn.execute(sql(statement))


def answers(dialect: str, grouping: Sequence[str], shapes: Sequence[SpecShape]) -> bool:
    """Whether the counts answer a summary: on SQLite, grouped by some of `KEYS` and filtered
    by them only (a condition on one of them holds or fails for all pilots of a count row
    alike, whatever its operator). Grouped by nothing means by every column: not answered."""
    return (
        dialect == "sqlite"
        and bool(grouping)
        and all(g in COUNT_COLUMNS for g in grouping)
        and all(parameter in COUNT_COLUMNS for parameter, _, _ in shapes)
    )


@lru_cache(maxsize=64)
def summary_statement(grouping: tuple[str, ...], shapes: tuple[SpecShape, ...]) -> Select[Any]:
    """The summary from the counts, the same rows in the same order as the scan of the pilots
    (`server.db.pilots._summary_statement`): the bound values are the same (`bound_values`)."""
    cols = [COUNT_COLUMNS[g] for g in grouping]
    total = func.sum(PILOT_COUNTS.c.N)
    stmt = select(*cols, total.label("count")).group_by(*cols).having(total > 0).order_by(*cols)
    where = bound_where(COUNT_COLUMNS, shapes)
    return stmt if where is None else stmt.where(where)
