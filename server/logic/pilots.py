"""Pilot management: registration, metadata, search, summary, deletion, job association.

Plain async functions over the data layer; they check what depends on the data (which VO a
stamp belongs to), while the route's policy already checked who the caller is.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from pydantic import TypeAdapter
from sqlalchemy.ext.asyncio import AsyncConnection

from server.access import require_vo, vo_scope
from server.clock import utcnow
from server.context import ServerContext
from server.db import pilots as db
from server.db import tokens as db_tokens
from server.db.search import may_start_inline
from server.errors import Forbidden, InvalidRequest, NotFound
from server.identity import ADMIN, GENERIC_PILOT, TRUSTED_HOST, Identity, refused
from server.keys import REASON_REVOKED
from server.logic import secrets_minting
from server.models import (
    FINAL_STATUSES,
    BulkRegistration,
    PilotDeletion,
    PilotJobs,
    PilotMetadata,
    PilotRegistration,
    PilotStatus,
    ScalarOperator,
    ScalarSearch,
    SearchParams,
    SearchSpec,
    SecretConstraints,
    SummaryParams,
    VectorOperator,
    VectorSearch,
)

MAX_PER_PAGE = 10_000
_METADATA: TypeAdapter[dict[str, PilotMetadata]] = TypeAdapter(dict[str, PilotMetadata])
JOB_ID = "JobID"
MAX_JOB_ID = 2**63 - 1  # BIGINT

#: What a pilot may change about itself with its own token.
PILOT_SELF_FIELDS = frozenset(
    {
        "Status",
        "StatusReason",
        "BenchMark",
        "CurrentJobID",
        "GridSite",
        "DestinationSite",
        "Queue",
        "GridType",
    }
)


def _legacy_only(identity: Identity) -> bool:
    """A GenericPilot user token without any managing property."""
    return GENERIC_PILOT in identity.properties and not identity.properties & {ADMIN, TRUSTED_HOST}


def _one_pilot_for_legacy(identity: Identity, stamps: list[str] | None) -> None:
    """A stolen legacy pilot credential may touch one pilot per call, not a fleet."""
    if _legacy_only(identity) and (stamps is None or len(set(stamps)) > 1):
        raise Forbidden("Insufficient permissions to modify more than one pilot.")


async def register_pilot(ctx: ServerContext, identity: Identity, reg: PilotRegistration) -> None:
    require_vo(identity, reg.vo)
    ctx.require_known_vo(reg.vo)
    now = utcnow()
    pilot = (
        reg.pilot_stamp,
        reg.grid_type,
        reg.grid_site,
        reg.destination_site,
        "Unknown",  # a single registration names no queue
        reg.pilot_reference,
        reg.pilot_status.value,
    )
    row = db.pilot_row(reg.vo, pilot, now)
    async with ctx.db.transaction() as conn:
        await db.insert_pilot(conn, row)


@dataclass(frozen=True, slots=True)
class BulkRegistered:
    """What a bulk registration made, in the order of the request's pilots: their ids and,
    with minted secrets, the secrets (the route writes the `BulkRegistrationResult` answer
    from these directly: 20,000 models for 10,000 pilots were a fifth of the call's cost)."""

    stamps: list[str]
    ids: list[int]
    secrets: list[str]
    expires_in: int | None


def new_pilots(body: BulkRegistration) -> list[db.NewPilot]:
    """The pilots of a validated `BulkRegistration` as `register_bulk` takes them."""
    return [
        (
            p.pilot_stamp,
            p.grid_type,
            p.grid_site,
            p.destination_site,
            p.queue,
            p.pilot_reference,
            p.pilot_status.value,
        )
        for p in body.pilots
    ]


async def register_bulk(
    ctx: ServerContext,
    identity: Identity,
    *,
    vo: str,
    pilots: Sequence[db.NewPilot],
    mint_secrets: bool,
    constraints: SecretConstraints,
) -> BulkRegistered:
    """All pilots or none; with `mint_secrets`, one secret bound to each, same transaction."""
    if _legacy_only(identity):
        raise Forbidden("Legacy pilots register one pilot at a time.")
    require_vo(identity, vo)
    ctx.require_known_vo(vo)
    stamps = [p[0] for p in pilots]
    if len(set(stamps)) != len(stamps):
        dupes = sorted(s for s, n in Counter(stamps).items() if n > 1)
        raise InvalidRequest({"message": "Duplicate stamps in the request", "pilot_stamps": dupes})
    now = utcnow()
    async with ctx.db.transaction() as conn:
        ids = await db.insert_new_pilots(conn, vo, pilots, now)
        minted: list[str] = []
        expires_in = None
        if mint_secrets:
            minted, expires_in = await secrets_minting.mint_plain(
                conn, vo=vo, constraints=constraints, bound_stamps=stamps, now=now
            )
    return BulkRegistered(stamps, ids, minted, expires_in)


async def update_metadata(
    ctx: ServerContext, identity: Identity, updates: dict[str, PilotMetadata]
) -> None:
    # one pass of pydantic-core for the whole mapping, not a model_dump call a pilot
    values: dict[str, dict[str, Any]] = _METADATA.dump_python(
        updates, by_alias=True, exclude_none=True
    )
    if identity.is_pilot:
        await _update_own(ctx, identity, values)
        return
    if not updates:
        return
    stamps = list(updates)
    _one_pilot_for_legacy(identity, stamps)
    values = {s: v for s, v in values.items() if v}
    scope = vo_scope(identity)
    async with ctx.db.transaction() as conn:
        # One stamp with something to set (the director's status report): the scoped update
        # itself finds the pilot; only a miss needs the look-up below to tell an unknown
        # stamp (404) from another VO's (403).
        if len(stamps) == 1 and values:
            stamp = stamps[0]
            if await db.update_pilot(conn, stamp, values[stamp], utcnow(), vos=scope):
                return
        # Every stamp with something to set (the director's references): where the backend
        # counts an executemany's matches, update first and look up only if some stamp missed,
        # to tell 404 from 403; raising then rolls the update back, all or nothing.
        elif len(values) == len(stamps):
            matched = await db.update_counted(conn, values, utcnow(), vos=scope)
            if matched == len(stamps):
                return
        found = await db.pilots_by_stamp(conn, stamps)
        missing = sorted(set(stamps) - set(found))
        if missing:
            raise NotFound({"message": "Unknown pilot stamps", "pilot_stamps": missing})
        if scope is not None and any(p["VO"] not in scope for p in found.values()):
            raise Forbidden("Insufficient permissions to access all of the provided pilots.")
        if values:
            await db.update_pilots(conn, values, utcnow())


async def _update_own(
    ctx: ServerContext, identity: Identity, values: dict[str, dict[str, Any]]
) -> None:
    """A pilot token's PATCH: its own record only, some fields only, and never once the pilot
    has ended. The token (and its family) is checked before anything of the body is looked at,
    so a revoked token learns nothing, not even that an empty body would have been fine."""
    async with ctx.db.transaction() as conn:
        await _pilot_token_alive(conn, identity)
        if not values:
            return
        stamp = identity.pilot_stamp
        if list(values) != [stamp]:
            raise Forbidden("A pilot may only update its own record.")
        assert stamp is not None  # is_pilot
        forbidden = set(values[stamp]) - PILOT_SELF_FIELDS
        if forbidden:
            raise Forbidden(f"A pilot may not change {sorted(forbidden)}.")
        own = values[stamp]
        scope = vo_scope(identity)
        if own and await db.update_pilot(conn, stamp, own, utcnow(), vos=scope, live_only=True):
            return
        pilot = (await db.pilots_by_stamp(conn, [stamp])).get(stamp)
        if pilot is None or (scope is not None and pilot["VO"] not in scope):
            raise NotFound({"message": "Unknown pilot stamps", "pilot_stamps": [stamp]})
        if own and PilotStatus(pilot["Status"]) in FINAL_STATUSES:
            if own.get("Status") == pilot["Status"]:
                return  # its own final report again (a retry after a lost answer): done
            raise Forbidden(f"Pilot {stamp!r} has ended ({pilot['Status']}): it cannot change.")


async def _pilot_token_alive(conn: AsyncConnection, identity: Identity) -> None:
    """A pilot token dies with its family (logout, refresh reuse, its secret revoked: RFC 7009
    section 2.1)."""
    if identity.family_id is not None and await db_tokens.family_revoked(conn, identity.family_id):
        raise refused(REASON_REVOKED)


def scoped(specs: list[SearchSpec], identity: Identity) -> list[SearchSpec]:
    scope = vo_scope(identity)
    if scope is None:
        return specs
    return [*specs, VectorSearch(parameter="VO", operator=VectorOperator.IN, values=sorted(scope))]


def job_id(value: object) -> int:
    """A JobID from a search value: an integer, or a string of decimal digits, within the
    column's range. `1.5` is refused, not truncated to job 1."""
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.isascii() and value.isdigit():
        number = int(value)
    else:
        raise InvalidRequest("'JobID' pseudo-parameter values must be integers.")
    if not 0 <= number <= MAX_JOB_ID:
        raise InvalidRequest("'JobID' pseudo-parameter values must be integers.")
    return number


async def _resolve_job_ids(conn: Any, specs: list[SearchSpec]) -> list[SearchSpec] | None:
    """Rewrite the `JobID` pseudo-parameter into a PilotID filter; None = nothing can match."""
    job_specs = [s for s in specs if s.parameter == JOB_ID]
    if not job_specs:
        return specs
    if any(s.parameter == "PilotID" for s in specs):
        raise InvalidRequest(
            "Cannot combine 'JobID' pseudo-parameter with a real 'PilotID' "
            "filter in the same request."
        )
    job_ids: list[int] = []
    for spec in job_specs:
        if isinstance(spec, ScalarSearch) and spec.operator is ScalarOperator.EQ:
            job_ids.append(job_id(spec.value))
        elif isinstance(spec, VectorSearch) and spec.operator is VectorOperator.IN:
            job_ids.extend(job_id(v) for v in spec.values)
        else:
            raise InvalidRequest("Only 'eq' and 'in' are supported on 'JobID'.")
    pilot_ids = await db.pilot_ids_for_jobs(conn, job_ids)
    if not pilot_ids:
        return None
    rest = [s for s in specs if s.parameter != JOB_ID]
    return [
        *rest,
        VectorSearch(parameter="PilotID", operator=VectorOperator.IN, values=list(pilot_ids)),
    ]


async def search(
    ctx: ServerContext, identity: Identity, body: SearchParams | None, page: int, per_page: int
) -> tuple[int, list[dict[str, Any]]]:
    body = body or SearchParams()
    inline_first = may_start_inline(body.search)
    async with ctx.db.bounded_read(ctx.settings.search_timeout, inline_first=inline_first) as conn:
        specs = await _resolve_job_ids(conn, list(body.search))
        if specs is None:
            return 0, []
        return await db.search(
            conn,
            parameters=body.parameters,
            specs=scoped(specs, identity),
            sort=body.sort,
            distinct=body.distinct,
            page=page,
            per_page=min(per_page, MAX_PER_PAGE),
        )


async def summary(
    ctx: ServerContext, identity: Identity, body: SummaryParams
) -> list[dict[str, Any]]:
    inline_first = may_start_inline(body.search)
    async with ctx.db.bounded_read(ctx.settings.search_timeout, inline_first=inline_first) as conn:
        specs = await _resolve_job_ids(conn, list(body.search))
        if specs is None:
            return []
        return await db.summary(conn, grouping=body.grouping, specs=scoped(specs, identity))


async def delete_pilots(ctx: ServerContext, identity: Identity, body: PilotDeletion) -> int:
    if body.pilot_stamps is None and body.older_than_days is None:
        raise InvalidRequest("Give pilot_stamps, or older_than_days (with optional statuses).")
    if body.pilot_stamps is not None and body.older_than_days is not None:
        raise InvalidRequest("Give either pilot_stamps or older_than_days, not both.")
    _one_pilot_for_legacy(identity, body.pilot_stamps)
    if body.vo is not None:
        require_vo(identity, body.vo)
    scope = vo_scope(identity)
    vos = {body.vo} if body.vo else scope
    older = (
        utcnow() - timedelta(days=body.older_than_days)
        if body.older_than_days is not None
        else None
    )
    async with ctx.db.transaction() as conn:
        if body.pilot_stamps is not None and scope is not None:
            found = await db.pilots_by_stamp(conn, body.pilot_stamps)
            if any(p["VO"] not in scope for p in found.values()):
                raise Forbidden("Insufficient permissions to access all of the provided pilots.")
        return await db.delete_pilots(
            conn,
            stamps=body.pilot_stamps,
            older_than=older,
            statuses=[s.value for s in body.statuses] if body.statuses else None,
            vos=vos,
        )


async def _pilot_for(conn: Any, identity: Identity, stamp: str) -> dict[str, Any]:
    """The pilot behind `stamp` as the caller may see it. Another VO's pilot is as unknown as
    a stamp never registered: a 403 there would tell a caller which stamps exist elsewhere."""
    if identity.is_pilot and identity.pilot_stamp != stamp:
        raise Forbidden("A pilot may only act on its own record.")
    found = await db.pilots_by_stamp(conn, [stamp])
    pilot = found.get(stamp)
    scope = vo_scope(identity)
    if pilot is None or (scope is not None and pilot["VO"] not in scope):
        raise NotFound({"message": "Unknown pilot stamps", "pilot_stamps": [stamp]})
    return pilot


async def add_jobs(ctx: ServerContext, identity: Identity, stamp: str, job_ids: list[int]) -> None:
    async with ctx.db.transaction() as conn:
        await _pilot_token_alive(conn, identity)
        pilot = await _pilot_for(conn, identity, stamp)
        await db.add_jobs(conn, pilot["PilotID"], job_ids, utcnow())


async def jobs_of(ctx: ServerContext, identity: Identity, stamp: str) -> PilotJobs:
    async with ctx.db.read() as conn:
        pilot = await _pilot_for(conn, identity, stamp)
        return PilotJobs(pilot_stamp=stamp, job_ids=await db.jobs_of(conn, pilot["PilotID"]))
