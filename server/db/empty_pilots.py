"""Empty pilots per queue: Done pilots of a recent window, with and without a job.

One statement for all queues of the VOs asked: the Done pilots whose LastUpdateTime (when
they became Done; a final status is never left) is at or after `since`, a range of the
(Status, LastUpdateTime) index, grouped by queue as pilot records name it (VO, GridSite,
DestinationSite, Queue). A pilot ran a job when JobToPilotMapping holds a row for it (the
mapping's primary key starts with PilotID, so the correlated EXISTS is an index probe) or its
CurrentJobID or InitialJobID is set (DIRAC's Matcher sets CurrentJobID as it hands a job out).
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Any

from sqlalchemy import case, exists, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from server.db.schema import JOBS
from server.db.schema import PILOTS as T

DONE = "Done"


async def done_counts(
    conn: AsyncConnection, *, vos: Collection[str] | None, since: datetime
) -> list[dict[str, Any]]:
    """Per queue of these VOs (None: all) with a Done pilot since `since` (naive UTC): rows
    with VO, GridSite, DestinationSite, Queue, `Ended` (Done pilots) and `WithJobs` (those
    that ran a job), in a stable order."""
    if vos is not None and not vos:
        return []
    ran_a_job = or_(
        T.c.CurrentJobID > 0,
        T.c.InitialJobID > 0,
        exists().where(JOBS.c.PilotID == T.c.PilotID),
    )
    keys = (T.c.VO, T.c.GridSite, T.c.DestinationSite, T.c.Queue)
    stmt = (
        select(
            *keys,
            func.count().label("Ended"),
            func.sum(case((ran_a_job, 1), else_=0)).label("WithJobs"),
        )
        .where(T.c.Status == DONE, T.c.LastUpdateTime >= since)
        .group_by(*keys)
        .order_by(*keys)
    )
    if vos is not None:
        stmt = stmt.where(T.c.VO.in_(sorted(vos)))
    result = await conn.execute(stmt)
    # SUM is a Decimal on MariaDB and a bigint elsewhere: plain ints for the callers
    return [
        {**row, "Ended": int(row["Ended"]), "WithJobs": int(row["WithJobs"] or 0)}
        for row in result.mappings()
    ]
