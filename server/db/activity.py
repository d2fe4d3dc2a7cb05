"""Pilot activity over time: how many pilots were submitted, and how many ended, per bucket.

One statement per series with one `SUM(CASE ...)` per bucket: portable to SQLite, MariaDB and
PostgreSQL alike (no dialect's date-truncation function), and a single range scan of the
time column instead of one query per bucket.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import and_, case, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from server.db.pilots import COLUMNS, T
from server.db.search import where_clause
from server.models import SearchSpec


async def counts_per_bucket(
    conn: AsyncConnection,
    *,
    time_column: str,
    specs: Sequence[SearchSpec],
    start: datetime,
    width: timedelta,
    buckets: int,
) -> list[int]:
    """Rows whose `time_column` falls in each of `buckets` consecutive buckets from `start`."""
    column = COLUMNS[time_column]
    edges = [start + i * width for i in range(buckets + 1)]
    sums = [
        func.sum(case((and_(column >= edges[i], column < edges[i + 1]), 1), else_=0))
        for i in range(buckets)
    ]
    stmt = select(*sums).select_from(T).where(column >= edges[0], column < edges[-1])
    where = where_clause(COLUMNS, specs)
    if where is not None:
        stmt = stmt.where(where)
    row = (await conn.execute(stmt)).one()
    return [int(value or 0) for value in row]
