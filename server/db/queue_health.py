"""The last pilots each queue ended: what the monitor reads to say a queue fails every pilot.

One statement: the ended pilots of a recent window, numbered newest first within each
(VO, CE, queue) by a window function (`ROW_NUMBER() OVER (PARTITION BY ...)`, which SQLite
3.25+, MariaDB 10.2+, MySQL 8 and PostgreSQL all have), keeping the first `per_queue` of each.
The window bounds the rows read to the pilots that ended in it (the (Status, LastUpdateTime)
index), not the whole history of a queue.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from server.db.pilots import COLUMNS, T
from server.db.search import where_clause
from server.models import SearchSpec

#: Rows fetched from the database at a time: the rows stream through, never all at once.
PARTITION = 500


async def last_ended(
    conn: AsyncConnection,
    *,
    specs: Sequence[SearchSpec],
    statuses: Sequence[str],
    since: datetime,
    per_queue: int,
) -> AsyncIterator[Mapping[str, Any]]:
    """Up to `per_queue` pilots per (VO, DestinationSite, Queue) whose status is one of
    `statuses` and whose LastUpdateTime is at or after `since`, newest first within a queue.

    Rows carry VO, GridSite, DestinationSite, Queue, Status, StatusReason, LastUpdateTime
    and `Rank` (1 = the newest of its queue).

    The rows are yielded as they are fetched (a server-side cursor, `PARTITION` at a time):
    with 1M pilots a day's ended pilots of 2,400 queues are 24,000 rows, and holding them as
    one list of dicts cost the server ~13 MB at its peak for a figure the caller folds into
    one small record per queue.
    """
    rank = (
        func.row_number()
        .over(
            partition_by=(T.c.VO, T.c.DestinationSite, T.c.Queue),
            order_by=(T.c.LastUpdateTime.desc(), T.c.PilotID.desc()),
        )
        .label("Rank")
    )
    inner = select(
        T.c.VO,
        T.c.GridSite,
        T.c.DestinationSite,
        T.c.Queue,
        T.c.Status,
        T.c.StatusReason,
        T.c.LastUpdateTime,
        rank,
    ).where(T.c.Status.in_(list(statuses)), T.c.LastUpdateTime >= since)
    where = where_clause(COLUMNS, specs)
    if where is not None:
        inner = inner.where(where)
    ranked = inner.subquery("ranked")
    stmt = (
        select(ranked)
        .where(ranked.c.Rank <= per_queue)
        .order_by(ranked.c.VO, ranked.c.DestinationSite, ranked.c.Queue, ranked.c.Rank)
    )
    result = await conn.stream(stmt)
    async for partition in result.mappings().partitions(PARTITION):
        for row in partition:
            yield cast(Mapping[str, Any], row)  # keys are the column labels above
