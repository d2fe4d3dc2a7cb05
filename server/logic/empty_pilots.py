"""Empty pilots per queue, for the director's submission factor and for operators.

A pilot that ended Done without running a job is an empty pilot. The server learns that a
pilot ran a job from `PATCH /api/pilots/jobs` and from the JobAgent's log line that says it
received one (`server.logic.job_lines`, at log ingestion). This answers, per queue of the
caller's VOs (all for an administrator), how many Done pilots ended since a time with and
without a job: one query for all queues, read by the director once per cycle.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from server.access import vo_scope
from server.clock import utcnow
from server.context import ServerContext
from server.db import empty_pilots as db
from server.errors import InvalidRequest
from server.identity import Identity
from server.models import QueueEmptyPilots

#: The window when the caller names none: the director's default (`empty_pilots.window_s`).
DEFAULT_WINDOW = timedelta(hours=1)
#: The longest window asked for: the range read stays a slice of the (Status, time) index.
MAX_WINDOW = timedelta(days=7)


def window_start(since: datetime | None, now: datetime) -> datetime:
    """`since` as naive UTC (a naive time is UTC), or `now` - DEFAULT_WINDOW; InvalidRequest
    when it is more than MAX_WINDOW before `now` (naive UTC)."""
    if since is None:
        return now - DEFAULT_WINDOW
    start = since if since.tzinfo is None else since.astimezone(UTC).replace(tzinfo=None)
    if start < now - MAX_WINDOW:
        raise InvalidRequest(f"'since' is too far back: at most {MAX_WINDOW.days} days before now")
    return start


async def empty_pilots(
    ctx: ServerContext, identity: Identity, since: datetime | None = None
) -> list[QueueEmptyPilots]:
    """Done pilots that ended at or after `since` (default: the last hour), per queue of the
    caller's VOs: `empty` ran no job, `with_jobs` ran at least one. Queues with no Done pilot
    in the window are absent."""
    start = window_start(since, utcnow())
    async with ctx.db.read() as conn:
        rows = await db.done_counts(conn, vos=vo_scope(identity), since=start)
    return [
        QueueEmptyPilots(
            vo=r["VO"],
            site=r["GridSite"],
            ce=r["DestinationSite"],
            queue=r["Queue"],
            empty=r["Ended"] - r["WithJobs"],
            with_jobs=r["WithJobs"],
        )
        for r in rows
    ]
