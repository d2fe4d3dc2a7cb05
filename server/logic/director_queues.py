"""Directors report the state of their queues; operators (and the monitor page) read it.

A report names, per queue, its VO: the caller must act for every VO it names, and the report
replaces the caller's earlier rows of those VOs only, so a director never touches another
VO's rows even when two VOs' director tokens share a `sub`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from server.access import require_vo, vo_scope
from server.clock import utcnow
from server.context import ServerContext
from server.db import director_queues as db
from server.errors import InvalidRequest
from server.identity import Identity
from server.models import QueueReport, QueuesReport

#: The Director column's size: a longer token `sub` cannot be stored, so it is refused.
MAX_DIRECTOR = 255


def _naive(value: datetime | None) -> datetime | None:
    """Naive UTC, as every datetime column stores (the wire model made it aware UTC)."""
    return None if value is None else value.astimezone(UTC).replace(tzinfo=None)


def _row(director: str, q: QueueReport, now: datetime) -> dict[str, Any]:
    return {
        "Director": director,
        "VO": q.vo,
        "QueueKey": q.queue_key,
        "Site": q.site,
        "CE": q.ce,
        "Queue": q.queue,
        "CEKind": q.ce_kind,
        "MaxTotalPilots": q.max_total_pilots,
        "MaxWaitingPilots": q.max_waiting_pilots,
        "PilotsPerCycle": q.pilots_per_cycle,
        "Enabled": q.enabled,
        "Failures": q.failures,
        "BackoffUntil": _naive(q.backoff_until),
        "LastError": q.last_error,
        "LastCycleAt": _naive(q.last_cycle_at),
        "LastSubmitted": q.last_submitted,
        "LastWaiting": q.last_waiting,
        "LastRunning": q.last_running,
        "EndedPilots": q.ended_pilots,
        "EmptyRatio": q.empty_ratio,
        "SubmissionFactor": q.submission_factor,
        "ReportedAt": now,
    }


async def report(ctx: ServerContext, identity: Identity, body: QueuesReport) -> None:
    """Store the caller's report; its earlier rows in the caller's VOs are replaced."""
    for vo in sorted({q.vo for q in body.queues}):
        require_vo(identity, vo)
        ctx.require_known_vo(vo)
    if len(identity.sub) > MAX_DIRECTOR:
        raise InvalidRequest(f"Token subject longer than {MAX_DIRECTOR} characters")
    now = utcnow()
    rows = [_row(identity.sub, q, now) for q in body.queues]
    async with ctx.db.transaction() as conn:
        await db.replace(conn, director=identity.sub, vos=vo_scope(identity), rows=rows)


async def queue_states(ctx: ServerContext, identity: Identity) -> list[dict[str, Any]]:
    """The reported queues the caller may see (its VOs; all for an administrator), as rows
    keyed by column name (datetimes naive UTC); empty when no director has reported."""
    async with ctx.db.read() as conn:
        return await db.read(conn, vo_scope(identity))
