"""Kills and output fetches: operators ask, the director that follows the pilot carries out.

Who may do what:

    ask (kill, fetch output)   PilotOperator: Operator for the token's VOs, admin for all
    read the requests          Reader, the caller's VOs (a director reads the due ones)
    record what came of one    Director, the caller's VOs

A pilot of another VO is as unknown as a stamp never registered (404 naming the stamps). A
kill of a pilot that already ended is stored as `already_ended`, not refused; asking again
while a request of the same kind is open returns the open one. A director reports each
attempt; a temporary failure brings the next attempt time (`backoff`) until MAX_ATTEMPTS, then
the request fails with the last error. A kill done ends the pilot Aborted with
"killed by <who>: <why>" in the same transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from server.access import vo_scope
from server.clock import utcnow
from server.context import ServerContext
from server.db import pilot_requests as db
from server.db import pilots as db_pilots
from server.errors import Forbidden, InvalidRequest, NotFound
from server.identity import OPERATOR, Identity
from server.models import (
    FINAL_STATUSES,
    OPEN_REQUEST_STATES,
    KillRequest,
    OutputFetchRequest,
    PilotRequest,
    RequestOutcomes,
    RequestState,
)

Kind = Literal["kill", "output"]
KILL: Kind = "kill"
OUTPUT: Kind = "output"

#: The RequestedBy column's size: a longer token `sub` cannot be recorded.
MAX_SUB = 255
#: Attempts a director may report as temporary failures before the request fails.
MAX_ATTEMPTS = 8
FIRST_RETRY = timedelta(minutes=1)
LONGEST_RETRY = timedelta(hours=1)
_FINAL = frozenset(s.value for s in FINAL_STATUSES)


def backoff(attempts: int) -> timedelta:
    """How long after its `attempts`-th failure a request is tried again: one minute,
    doubling, at most an hour."""
    factor: int = 2 ** min(max(attempts - 1, 0), 16)
    return min(FIRST_RETRY * factor, LONGEST_RETRY)


def kill_reason(by: str, why: str | None) -> str:
    """The pilot's StatusReason after a kill (the column holds 255 characters)."""
    return f"killed by {by}: {why or 'no reason given'}"[:255]


def _aware(value: datetime | None) -> datetime | None:
    return None if value is None else value.replace(tzinfo=UTC)


def to_request(row: dict[str, Any]) -> PilotRequest:
    return PilotRequest(
        request_id=row["RequestID"],
        kind=row["Kind"],
        pilot_stamp=row["PilotStamp"],
        vo=row["VO"],
        reason=row["Reason"],
        requested_by=row["RequestedBy"],
        requested_at=row["RequestedAt"].replace(tzinfo=UTC),
        state=RequestState(row["State"]),
        attempts=row["Attempts"],
        last_error=row["LastError"],
        next_attempt_at=_aware(row["NextAttemptAt"]),
        updated_at=row["UpdatedAt"].replace(tzinfo=UTC),
        pilot_status=row.get("PilotStatus"),
        pilot_reference=row.get("PilotJobReference"),
        grid_type=row.get("GridType"),
        site=row.get("GridSite"),
        ce=row.get("DestinationSite"),
        queue=row.get("Queue"),
    )


def may_ask(identity: Identity) -> bool:
    """Whether the caller may ask for kills and output fetches (the PilotOperator policy)."""
    return not identity.is_pilot and (identity.is_admin or OPERATOR in identity.properties)


async def requests_of(ctx: ServerContext, identity: Identity, stamp: str) -> list[PilotRequest]:
    """Every kill and output request of one pilot the caller sees, newest first."""
    found: list[PilotRequest] = []
    for kind in (KILL, OUTPUT):
        found += await list_requests(ctx, identity, kind, pilot_stamp=stamp, limit=50)
    return sorted(found, key=lambda r: r.request_id, reverse=True)


def _check_sub(identity: Identity) -> None:
    if len(identity.sub) > MAX_SUB:
        raise InvalidRequest(f"Token subject longer than {MAX_SUB} characters")


def _acts_for(ctx: ServerContext, identity: Identity, vo: str) -> None:
    if not identity.is_admin and vo not in identity.vos:
        raise Forbidden("Pilots can only be managed within your own VO.")
    ctx.require_known_vo(vo)


async def _visible_pilots(
    conn: Any, identity: Identity, stamps: Sequence[str]
) -> list[dict[str, Any]]:
    """The pilots behind `stamps`, in order, each once; NotFound naming the stamps unknown
    or of a VO the caller does not act for (the same answer for both)."""
    unique = list(dict.fromkeys(stamps))
    found = await db_pilots.pilots_by_stamp(conn, unique)
    scope = vo_scope(identity)
    missing = [
        s for s in unique if s not in found or (scope is not None and found[s]["VO"] not in scope)
    ]
    if missing:
        raise NotFound({"message": "Unknown pilot stamps", "pilot_stamps": missing})
    return [found[s] for s in unique]


async def _ask(
    ctx: ServerContext,
    identity: Identity,
    kind: Kind,
    pilots_of: Any,
    reason: str | None,
) -> list[PilotRequest]:
    _check_sub(identity)
    now = utcnow()
    async with ctx.db.transaction() as conn:
        pilots: list[dict[str, Any]] = await pilots_of(conn)
        stamps = [p["PilotStamp"] for p in pilots]
        existing = await db.open_requests(conn, kind, stamps)
        rows = []
        for p in pilots:
            if p["PilotStamp"] in existing:
                continue
            ended = kind == KILL and p["Status"] in _FINAL
            rows.append(
                {
                    "Kind": kind,
                    "PilotID": p["PilotID"],
                    "PilotStamp": p["PilotStamp"],
                    "VO": p["VO"],
                    "Reason": reason,
                    "RequestedBy": identity.sub,
                    "RequestedAt": now,
                    "State": (
                        RequestState.ALREADY_ENDED if ended else RequestState.REQUESTED
                    ).value,
                    "Attempts": 0,
                    "LastError": None,
                    "NextAttemptAt": None,
                    "UpdatedAt": now,
                    "OpenKey": None if ended else db.open_key(kind, p["PilotStamp"]),
                }
            )
        ids = await db.insert_requests(conn, rows)
        made = await db.by_ids(conn, kind, ids)
    by_stamp = {**existing, **{r["PilotStamp"]: r for r in made.values()}}
    return [to_request(by_stamp[s]) for s in stamps]


async def request_kills(
    ctx: ServerContext, identity: Identity, body: KillRequest
) -> list[PilotRequest]:
    """Ask for these pilots (or every live pilot of the queue) to be killed; one request per
    pilot, in the order given (a queue's: oldest pilot first)."""

    async def pilots_of(conn: Any) -> list[dict[str, Any]]:
        if body.pilot_stamps is not None:
            return await _visible_pilots(conn, identity, body.pilot_stamps)
        assert body.queue is not None
        q = body.queue
        vo = q.vo or identity.vo
        _acts_for(ctx, identity, vo)
        return await db.live_pilots_of_queue(conn, vo, q.site, q.ce, q.queue)

    return await _ask(ctx, identity, KILL, pilots_of, body.reason)


async def request_outputs(
    ctx: ServerContext, identity: Identity, body: OutputFetchRequest
) -> list[PilotRequest]:
    """Ask for these pilots' CE output to be fetched (whatever their status)."""

    async def pilots_of(conn: Any) -> list[dict[str, Any]]:
        return await _visible_pilots(conn, identity, body.pilot_stamps)

    return await _ask(ctx, identity, OUTPUT, pilots_of, body.reason)


async def list_requests(
    ctx: ServerContext,
    identity: Identity,
    kind: Kind,
    *,
    state: str | None = None,
    vo: str | None = None,
    pilot_stamp: str | None = None,
    limit: int = db.READ_LIMIT,
) -> list[PilotRequest]:
    """Requests of the caller's VOs (or of the one named, which it must act for). `state` is
    one state, `open` (requested or in progress) or `pending` (open and due now: what a
    director carries out, oldest first); otherwise the newest first."""
    scope = vo_scope(identity)
    if vo is not None:
        if scope is not None and vo not in scope:
            raise Forbidden("Requests can only be read within your own VO.")
        scope = frozenset({vo})
    states: frozenset[str] | None = None
    due = False
    if state == "pending":
        due = True
    elif state == "open":
        states = frozenset(s.value for s in OPEN_REQUEST_STATES)
    elif state is not None:
        try:
            states = frozenset({RequestState(state).value})
        except ValueError as exc:
            known = ", ".join(["pending", "open", *(s.value for s in RequestState)])
            raise InvalidRequest(f"Unknown state {state!r}: one of {known}") from exc
    async with ctx.db.read() as conn:
        rows = await db.read(
            conn,
            kind,
            scope,
            now=utcnow(),
            states=states,
            due=due,
            stamps=None if pilot_stamp is None else [pilot_stamp],
            limit=limit,
        )
    return [to_request(r) for r in rows]


def next_state(
    row: dict[str, Any], outcome: str, error: str | None, now: datetime
) -> dict[str, Any] | None:
    """The columns that change when a director reports `outcome` for an open request (None
    for a finished one: a re-sent report changes nothing)."""
    if row["OpenKey"] is None:
        return None
    values: dict[str, Any] = {"UpdatedAt": now}
    if outcome == "in_progress":
        return {**values, "State": RequestState.IN_PROGRESS.value}
    attempts = row["Attempts"] + 1
    values.update(Attempts=attempts, NextAttemptAt=None)
    if outcome == "retry" and attempts < MAX_ATTEMPTS:
        return {
            **values,
            "State": RequestState.IN_PROGRESS.value,
            "LastError": (error or "temporary failure")[:255],
            "NextAttemptAt": now + backoff(attempts),
        }
    values["OpenKey"] = None
    if outcome == "done":
        return {**values, "State": RequestState.DONE.value}
    if outcome == "already_ended":
        return {**values, "State": RequestState.ALREADY_ENDED.value}
    if outcome == "retry":
        reason = f"gave up after {attempts} attempts: {error or 'temporary failure'}"
        return {**values, "State": RequestState.FAILED.value, "LastError": reason[:255]}
    return {**values, "State": RequestState.FAILED.value, "LastError": (error or "failed")[:255]}


async def record_outcomes(
    ctx: ServerContext, identity: Identity, kind: Kind, body: RequestOutcomes
) -> list[PilotRequest]:
    """A director's report of what it did about requests of its VOs; the requests as they
    now stand. Unknown ids and other VOs' are refused together (404), nothing recorded."""
    ids = [o.request_id for o in body.outcomes]
    if len(set(ids)) != len(ids):
        raise InvalidRequest("A request is named twice")
    scope = vo_scope(identity)
    now = utcnow()
    async with ctx.db.transaction() as conn:
        rows = await db.by_ids(conn, kind, ids)
        missing = [
            i for i in ids if i not in rows or (scope is not None and rows[i]["VO"] not in scope)
        ]
        if missing:
            raise NotFound(f"Unknown {kind} requests: {', '.join(map(str, missing))}")
        for o in body.outcomes:
            row = rows[o.request_id]
            values = next_state(row, o.outcome, o.error, now)
            if values is None:
                continue
            await db.update_request(conn, o.request_id, values)
            row.update(values)
            if kind == KILL and values.get("State") == RequestState.DONE.value:
                reason = kill_reason(row["RequestedBy"], row["Reason"])
                if await db.abort_pilot(conn, row["PilotID"], reason, now):
                    row.update(PilotStatus="Aborted")
    return [to_request(rows[i]) for i in ids]
