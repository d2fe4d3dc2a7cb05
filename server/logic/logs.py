"""Pilot log ingestion and search.

A batch is checked whole before anything is written: line count and line size first (413),
then, under the pilot's locked quota row, its total bytes (413) and its rate (429 with
Retry-After). So a refused batch leaves nothing behind, and the pilot may simply resend it.
The pilot secret is redacted from every line before it is stored, in each form the DIRAC pilot
or a wrapper prints it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from server.access import vo_scope
from server.clock import utcnow
from server.context import ServerContext
from server.db import log_partitions as partitions
from server.db import logs as db
from server.db import pilots as db_pilots
from server.db import tokens as db_tokens
from server.db.search import parse_datetime
from server.errors import (
    Forbidden,
    InvalidRequest,
    NotFound,
    RateLimited,
    TooLarge,
)
from server.identity import Identity, refused
from server.keys import REASON_REVOKED
from server.logic.job_lines import received_job_ids
from server.models import LogLine, SearchParams, VectorOperator, VectorSearch

SEVERITIES = frozenset({"DEBUG", "INFO", "WARNING", "ERROR", "COMMAND"})
RATE_WINDOW = timedelta(minutes=1)
MAX_PER_PAGE = 10_000
REDACTED = "<redacted>"

_MENTION = re.compile(r"pilot[_-]?secret", re.IGNORECASE)
# the key, then quotes/backslashes, a separator (`,` `=` `:` or blanks), quotes, the value
_KEY_VALUE = re.compile(
    r"""(?P<key>pilot[_-]?secret)(?P<sep>['"\\]*(?:\s*[,=:]\s*|\s+)['"\\]*)"""
    r"""(?P<value>[^\s'",)\]}\\]+)""",
    re.IGNORECASE,
)
_HEX64 = re.compile(r"(?<![0-9a-fA-F])[0-9a-fA-F]{64}(?![0-9a-fA-F])")


def redact(message: str) -> str:
    """Hide the pilot secret: `('--pilotSecret', 'v')`, `--pilotSecret=v`, `--pilotSecret v`,
    `"pilot_secret": "v"`, and any 64-hex value after a mention of it."""
    if "ecret" not in message:  # cheap filter: nearly every line skips the regexes
        return message
    mention = _MENTION.search(message)
    if mention is None:
        return message
    start = mention.start()
    tail = _KEY_VALUE.sub(lambda m: m["key"] + m["sep"] + REDACTED, message[start:])
    return message[:start] + _HEX64.sub(REDACTED, tail)


def storable(text: str) -> str:
    """Text every database accepts: NUL (refused by PostgreSQL) and unpaired surrogates
    (valid JSON, but not UTF-8) become U+FFFD, so one odd byte does not lose a whole batch."""
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    try:
        text.encode()
    except UnicodeEncodeError:
        text = text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return text


@dataclass(frozen=True)
class Limits:
    max_lines: int
    max_line_bytes: int
    max_bytes_per_pilot: int
    lines_per_minute: int


def limits_of(ctx: ServerContext) -> Limits:
    s = ctx.settings
    return Limits(
        s.log_max_lines_per_request,
        s.log_max_line_bytes,
        s.log_max_bytes_per_pilot,
        s.log_rate_lines_per_minute,
    )


def admit(quota: db.Quota, *, lines: int, nbytes: int, now: datetime, limits: Limits) -> db.Quota:
    """The quota after accepting a batch, or TooLarge / RateLimited (a fixed one-minute window
    per pilot). Pure, so the arithmetic is tested without a database or a clock."""
    if quota.total_bytes + nbytes > limits.max_bytes_per_pilot:
        raise TooLarge(
            f"Log quota exceeded: this pilot may store {limits.max_bytes_per_pilot} bytes in total"
        )
    start, used = quota.window_start, quota.window_lines
    # A batch reads the clock before it waits for the quota row's lock, so it may see a window
    # opened after its `now` by a batch that took the lock first: that window is its window.
    # Only a clock a whole window behind (a clock set back) starts a new one.
    if now - start >= RATE_WINDOW or start - now >= RATE_WINDOW:
        start, used = now, 0
    if used + lines > limits.lines_per_minute:
        wait = (start + RATE_WINDOW - now).total_seconds()
        raise RateLimited(
            f"Log rate exceeded: at most {limits.lines_per_minute} lines per minute per pilot",
            retry_after=max(1, math.ceil(wait)),
        )
    return db.Quota(quota.total_bytes + nbytes, start, used + lines)


#: One line as the pilot sent it: (timestamp, severity, message, scope).
WireLine = tuple[str, str, str, str]

#: One stored line as `prepare` hands it to the database layer: (TimeStamp, Severity, Scope,
#: Message); the pilot's columns and the arrival time are the same for a whole batch.
Line = tuple[datetime, str, str, str]


def line_time(text: str) -> datetime:
    """`parse_datetime` with a fast path for what pilots send (`...T03:04:05.123456Z`): one C
    call instead of a string replace, a time-zone conversion and a copy (a third of the
    per-line cost of ingestion was datetime handling). Same result and same errors."""
    if text.endswith("Z"):
        try:
            parsed = datetime.fromisoformat(text[:-1])
        except ValueError:
            parsed = None
        if parsed is not None and parsed.tzinfo is None:
            return parsed
    return parse_datetime(text)


def wire_lines(lines: Iterable[LogLine]) -> list[WireLine]:
    """Validated line models (the legacy route's body) as `prepare` takes them."""
    return [(x.timestamp, x.severity, x.message, x.scope) for x in lines]


def prepare(lines: Sequence[WireLine], *, limits: Limits) -> tuple[list[Line], int]:
    """Validated, redacted lines and their total message bytes (as stored, in UTF-8).

    Written for the hot path: one pass, tuples rather than dicts, and the byte size of an
    ASCII message (nearly all of them) taken without encoding it."""
    if len(lines) > limits.max_lines:
        raise TooLarge(f"Too many lines: at most {limits.max_lines} per request")
    rows: list[Line] = []
    total = 0
    max_bytes = limits.max_line_bytes
    for number, (text, level, message, scope) in enumerate(lines):
        if message.isascii():  # no surrogate can hide in it; its length is its size
            if "\x00" in message:
                message = message.replace("\x00", "\ufffd")
            size = len(message)
        else:
            message = storable(message)
            size = len(message.encode())
        if size > max_bytes:
            raise TooLarge(f"Line {number} is too long: at most {max_bytes} bytes")
        severity = level.upper()
        if severity not in SEVERITIES:
            raise InvalidRequest(f"Line {number}: unknown severity {level!r}")
        try:
            timestamp = line_time(text)
        except ValueError as exc:
            raise InvalidRequest(f"Line {number}: invalid timestamp") from exc
        total += size
        if not scope.isascii() or "\x00" in scope:
            scope = storable(scope)
        rows.append((timestamp, severity, scope, redact(message)))
    return rows, total


async def ingest(
    ctx: ServerContext,
    *,
    stamp: str,
    vos: frozenset[str],
    lines: Sequence[WireLine],
    family_id: str | None = None,
) -> None:
    """Store a batch for the pilot `stamp`, which must belong to one of `vos`. With
    `family_id` (a pilot token's), the family must not be revoked: checked in the same
    transaction, by the statement that finds the pilot (`db.sender`), so the hot path opens
    one connection and on PostgreSQL makes one round trip for the three."""
    now = utcnow()
    limits = limits_of(ctx)
    rows, nbytes = prepare(lines, limits=limits)
    if not rows:
        if family_id is not None:
            async with ctx.db.read() as conn:
                if await db_tokens.family_revoked(conn, family_id):
                    raise refused(REASON_REVOKED)
        return
    async with ctx.db.transaction() as conn:
        pilot = await db.sender(conn, stamp, now, family_id)
        if pilot is None:
            if family_id is not None and await db_tokens.family_revoked(conn, family_id):
                raise refused(REASON_REVOKED)
            raise NotFound({"message": "Unknown pilot stamps", "pilot_stamps": [stamp]})
        if pilot.revoked:
            raise refused(REASON_REVOKED)
        if pilot.vo not in vos:
            raise Forbidden("This pilot belongs to another VO.")
        quota = admit(pilot.quota, lines=len(rows), nbytes=nbytes, now=now, limits=limits)
        await db.save_quota(conn, stamp, quota)
        await db.insert_lines(
            conn, pilot_id=pilot.pilot_id, stamp=stamp, vo=pilot.vo, received=now, lines=rows
        )
        # the JobAgent saying it received a job: the pilot is not empty (JobToPilotMapping)
        job_ids = received_job_ids(row[3] for row in rows)
        if job_ids:
            await db_pilots.add_jobs(conn, pilot.pilot_id, job_ids, now)


async def search(
    ctx: ServerContext, identity: Identity, body: SearchParams | None, page: int, per_page: int
) -> tuple[int, list[dict[str, Any]]]:
    body = body or SearchParams()
    specs = list(body.search)
    scope = vo_scope(identity)
    if scope is not None:
        specs.append(VectorSearch(parameter="VO", operator=VectorOperator.IN, values=sorted(scope)))
    async with ctx.db.bounded_read(ctx.settings.search_timeout) as conn:
        return await db.search(
            conn,
            parameters=body.parameters,
            specs=specs,
            sort=body.sort,
            page=page,
            per_page=min(per_page, MAX_PER_PAGE),
        )


async def purge(
    ctx: ServerContext, older_than_days: int | None, now: datetime | None = None
) -> int:
    """Retention: lines received more than N days ago, and lines of deleted pilots. On
    PostgreSQL old lines go by whole days, their partitions dropped (db.log_partitions)."""
    removed = 0
    async with ctx.db.transaction() as conn:
        if older_than_days is not None:
            cutoff = (now or utcnow()) - timedelta(days=older_than_days)
            if await partitions.is_partitioned(conn):
                removed += await partitions.drop_partitions_before(conn, cutoff)
            else:
                removed += await db.purge_older_than(conn, cutoff)
        removed += await db.purge_orphans(conn)
    return removed


async def make_partitions(ctx: ServerContext, now: datetime | None = None) -> list[date]:
    """PostgreSQL: the log table's missing daily partitions from today to
    `log_partition_days_ahead` days ahead, made; the days made (none on other databases)."""
    async with ctx.db.transaction() as conn:
        if not await partitions.is_partitioned(conn):
            return []
        today = (now or utcnow()).date()
        return await partitions.ensure_partitions(
            conn, today, ctx.settings.log_partition_days_ahead
        )
