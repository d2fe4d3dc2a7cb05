"""Pilot activity over time: how many pilots were submitted, and how many ended, per bucket.

One statement per series, grouped by the bucket each row falls in. The bucket number is the
time since the first bucket's start divided by the bucket width, which every backend spells
differently (`BucketOf` below); grouping by it is a single range scan of the time column,
several times cheaper per row than one `SUM(CASE ...)` per bucket.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Integer, bindparam, func, select
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from server.db.pilots import COLUMNS, T
from server.db.search import where_clause
from server.models import SearchSpec


class BucketOf(FunctionElement[int]):
    """`BucketOf(column, start, width_seconds)`: which bucket of `width_seconds` from `start`
    a time falls in, for times at or after `start`."""

    type = Integer()
    inherit_cache = True
    name = "bucket_of"


def _parts(element: BucketOf, compiler: Any, **kw: Any) -> tuple[str, str, str]:
    column, start, width = (compiler.process(c, **kw) for c in element.clauses)
    return column, start, width


@compiles(BucketOf, "sqlite")
def _bucket_sqlite(element: BucketOf, compiler: Any, **kw: Any) -> str:
    column, start, width = _parts(element, compiler, **kw)
    # Times are ISO text ("YYYY-MM-DD HH:MM:SS.ffffff"). Whole seconds since the epoch, then
    # integer division: exact at the edges, where julianday()'s floating point put a pilot of
    # 15:00:00 in the 14:00 bucket. substr() first, as strftime() rounds 14:59:59.999999 up.
    return (
        f"(CAST(strftime('%s', substr({column}, 1, 19)) AS INTEGER)"
        f" - CAST(strftime('%s', substr({start}, 1, 19)) AS INTEGER)) / {width}"
    )


@compiles(BucketOf, "mysql")
@compiles(BucketOf, "mariadb")
def _bucket_mysql(element: BucketOf, compiler: Any, **kw: Any) -> str:
    column, start, width = _parts(element, compiler, **kw)
    return f"FLOOR(TIMESTAMPDIFF(SECOND, {start}, {column}) / {width})"


@compiles(BucketOf, "postgresql")
def _bucket_postgresql(element: BucketOf, compiler: Any, **kw: Any) -> str:
    column, start, width = _parts(element, compiler, **kw)
    return f"FLOOR(EXTRACT(EPOCH FROM ({column} - {start})) / {width})"


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
    end = start + buckets * width
    seconds = int(width.total_seconds())
    bucket = BucketOf(
        column,
        bindparam("bucket_start", start, type_=column.type),
        bindparam("bucket_width", seconds, type_=Integer()),
    ).label("bucket")
    stmt = (
        select(bucket, func.count())
        .select_from(T)
        .where(column >= start, column < end)
        .group_by(bucket)
    )
    where = where_clause(COLUMNS, specs)
    if where is not None:
        stmt = stmt.where(where)
    counts = [0] * buckets
    for index, count in (await conn.execute(stmt)).all():
        # clamped: a time a rounding error away from an edge still lands in a bucket
        counts[min(max(int(index), 0), buckets - 1)] += int(count)
    return counts
