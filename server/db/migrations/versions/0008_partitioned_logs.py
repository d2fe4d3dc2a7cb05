"""PilotLogs partitioned by day of ReceivedTime on PostgreSQL (see server/db/log_partitions.py)

SQLite has no partitioning. MariaDB has, and it could be done there too (the key would become
(LogID, ReceivedTime), allowed for an AUTO_INCREMENT column; RANGE COLUMNS on ReceivedTime), but
with its own management: a day is added by REORGANIZE of a catch-all MAXVALUE partition (RANGE
partitions only grow at the end), each change an ALTER TABLE under the table's metadata lock,
so a second implementation with its own tests. It is left a plain table with retention by
DELETE on the ReceivedTime index: the installations that need partitions are the large ones,
and docs/performance.md points them to PostgreSQL.

The existing rows are copied into the new table: one partition for every day that holds some,
plus today and the 7 days after it (the maintenance keeps making them ahead from then on).
LogID keeps its sequence, so new lines continue the numbering.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from alembic import op
from sqlalchemy import text

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_DAYS_AHEAD = 7
_COLUMNS = (
    '"LogID", "PilotID", "PilotStamp", "VO", "TimeStamp", "Severity", "Scope", "Message", '
    '"ReceivedTime"'
)
_INDEXES = {
    "idx_logs_stamp_time": '"PilotStamp", "TimeStamp"',
    "idx_logs_vo_time": '"VO", "TimeStamp"',
    "idx_logs_received": '"ReceivedTime"',
}


def _create_logs(partitioned: bool) -> None:
    key = '"LogID", "ReceivedTime"' if partitioned else '"LogID"'
    tail = ' PARTITION BY RANGE ("ReceivedTime")' if partitioned else ""
    op.execute(
        'CREATE TABLE "PilotLogs" ('
        '"LogID" BIGINT NOT NULL DEFAULT nextval(\'"PilotLogs_LogID_seq"\'), '
        '"PilotID" BIGINT NOT NULL, '
        '"PilotStamp" VARCHAR(32) NOT NULL, '
        '"VO" VARCHAR(128) NOT NULL, '
        '"TimeStamp" TIMESTAMP WITHOUT TIME ZONE NOT NULL, '
        '"Severity" VARCHAR(16) NOT NULL, '
        '"Scope" VARCHAR(64) NOT NULL, '
        '"Message" TEXT NOT NULL, '
        '"ReceivedTime" TIMESTAMP WITHOUT TIME ZONE NOT NULL, '
        f'CONSTRAINT "PilotLogs_pkey" PRIMARY KEY ({key})){tail}'
    )
    for name, columns in _INDEXES.items():
        op.execute(f'CREATE INDEX "{name}" ON "PilotLogs" ({columns})')


def _set_aside_old_table() -> None:
    """Rename the current table and free its names (indexes and key are schema-wide); its
    sequence is kept for the new table."""
    op.execute('ALTER SEQUENCE "PilotLogs_LogID_seq" OWNED BY NONE')
    op.execute('ALTER TABLE "PilotLogs" RENAME TO "PilotLogs_old"')
    op.execute(
        'ALTER TABLE "PilotLogs_old" RENAME CONSTRAINT "PilotLogs_pkey" TO "PilotLogs_old_pkey"'
    )
    for name in _INDEXES:
        op.execute(f'DROP INDEX "{name}"')


def _copy_and_drop_old_table() -> None:
    copy = f'INSERT INTO "PilotLogs" ({_COLUMNS}) SELECT {_COLUMNS} FROM "PilotLogs_old"'  # noqa: S608
    op.execute(copy)
    op.execute('DROP TABLE "PilotLogs_old"')
    op.execute('ALTER SEQUENCE "PilotLogs_LogID_seq" OWNED BY "PilotLogs"."LogID"')


def _partition(day: date) -> None:
    high = day + timedelta(days=1)
    op.execute(
        f'CREATE TABLE "PilotLogs_p{day:%Y%m%d}" PARTITION OF "PilotLogs" '
        f"FOR VALUES FROM ('{day:%Y-%m-%d} 00:00:00') TO ('{high:%Y-%m-%d} 00:00:00')"
    )


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return  # SQLite: no partitioning; MariaDB: see the docstring
    days = {
        row[0]
        for row in op.get_bind().execute(
            text('SELECT DISTINCT CAST("ReceivedTime" AS DATE) FROM "PilotLogs"')
        )
    }
    today = datetime.now(UTC).date()
    days.update(today + timedelta(days=n) for n in range(_DAYS_AHEAD + 1))
    _set_aside_old_table()
    _create_logs(partitioned=True)
    op.execute('CREATE TABLE "PilotLogs_default" PARTITION OF "PilotLogs" DEFAULT')
    for day in sorted(days):
        _partition(day)
    _copy_and_drop_old_table()


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    _set_aside_old_table()  # the partitions go with it: they are dropped with their parent
    _create_logs(partitioned=False)
    _copy_and_drop_old_table()
