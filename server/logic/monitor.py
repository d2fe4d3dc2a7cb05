"""What the pilot monitor shows: the site-by-status matrix, activity over time, recent failures,
one pilot with its jobs and logs.

Every read goes through the same logic as the API (`logic.pilots`, `logic.logs`) with the
caller's identity, so the page can never show more than the caller's token could fetch. The
arithmetic (filters, the matrix, buckets) is pure functions, tested without a database.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from server.clock import utcnow
from server.context import ServerContext
from server.db import activity as db_activity
from server.errors import InvalidRequest, NotFound
from server.identity import SITE_MANAGER, Identity
from server.logic import bans as bans_logic
from server.logic import director_queues
from server.logic import logs as logs_logic
from server.logic import pilots as pilots_logic
from server.models import (
    FINAL_STATUSES,
    Ban,
    PilotStatus,
    ScalarOperator,
    ScalarSearch,
    SearchParams,
    SearchSpec,
    SortSpec,
    SummaryParams,
    VectorOperator,
    VectorSearch,
)
from server.policies import vo_scope

#: Matrix columns, in the order a pilot lives through them.
STATUS_COLUMNS: tuple[str, ...] = (
    PilotStatus.SUBMITTED,
    PilotStatus.WAITING,
    PilotStatus.RUNNING,
    PilotStatus.DONE,
    PilotStatus.FAILED,
    PilotStatus.ABORTED,
    PilotStatus.DELETED,
    PilotStatus.UNKNOWN,
)
SINCE = {
    "1h": timedelta(hours=1),
    "24h": timedelta(days=1),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
}
#: range -> (bucket width, bucket count)
RANGES = {"24h": (timedelta(hours=1), 24), "7d": (timedelta(hours=6), 28)}
FILTER_COLUMNS = {"vo": "VO", "site": "GridSite", "ce": "DestinationSite", "queue": "Queue"}
MAX_FILTER_LENGTH = 128
RECENT_FAILURES = 20
LOG_PAGE = 100
MAX_OPTIONS = 500


@dataclass(frozen=True)
class Filters:
    """The overview's query string, validated: empty strings mean "any"."""

    vo: str = ""
    site: str = ""
    ce: str = ""
    queue: str = ""
    status: str = ""
    since: str = ""
    range: str = "24h"

    def query(self, **changes: str) -> str:
        """This selection as a query string, with `changes` applied; empty values left out."""
        values = {**self.__dict__, **changes}
        if values.get("range") == "24h":
            values.pop("range")
        return urlencode({k: v for k, v in values.items() if v})


def parse_filters(query: Mapping[str, str]) -> Filters:
    """Filters from a query string; a bad value is a 400 naming the parameter."""
    values: dict[str, str] = {}
    for name in ("vo", "site", "ce", "queue", "status", "since", "range"):
        value = query.get(name, "").strip()
        if len(value) > MAX_FILTER_LENGTH:
            raise InvalidRequest(f"Filter {name!r} is longer than {MAX_FILTER_LENGTH} characters")
        values[name] = value
    if values["status"] and values["status"] not in STATUS_COLUMNS:
        raise InvalidRequest(f"Unknown status {values['status']!r}")
    if values["since"] and values["since"] not in SINCE:
        raise InvalidRequest(f"'since' must be one of {', '.join(SINCE)}")
    values["range"] = values["range"] or "24h"
    if values["range"] not in RANGES:
        raise InvalidRequest(f"'range' must be one of {', '.join(RANGES)}")
    return Filters(**values)


def filter_specs(filters: Filters, now: datetime) -> list[SearchSpec]:
    """The filters as search conditions (the same DSL the API takes)."""
    specs: list[SearchSpec] = [
        ScalarSearch(parameter=column, operator=ScalarOperator.EQ, value=getattr(filters, name))
        for name, column in FILTER_COLUMNS.items()
        if getattr(filters, name)
    ]
    if filters.status:
        specs.append(
            ScalarSearch(parameter="Status", operator=ScalarOperator.EQ, value=filters.status)
        )
    if filters.since:
        after = (now - SINCE[filters.since]).isoformat()
        specs.append(
            ScalarSearch(parameter="SubmissionTime", operator=ScalarOperator.GT, value=after)
        )
    return specs


@dataclass
class MatrixRow:
    site: str
    counts: dict[str, int]
    total: int


@dataclass
class Matrix:
    statuses: tuple[str, ...]
    rows: list[MatrixRow]
    totals: dict[str, int]
    grand_total: int


def build_matrix(summary: list[dict[str, Any]]) -> Matrix:
    """Summary rows grouped by (GridSite, Status) as a site-by-status table with totals.

    A status outside the known columns (a DIRAC installation may add its own) gets a column
    of its own after the known ones rather than vanishing from the totals.
    """
    extra = sorted({str(r["Status"]) for r in summary} - set(STATUS_COLUMNS))
    statuses = (*STATUS_COLUMNS, *extra)
    by_site: dict[str, dict[str, int]] = {}
    for row in summary:
        counts = by_site.setdefault(str(row["GridSite"]), dict.fromkeys(statuses, 0))
        counts[str(row["Status"])] += int(row["count"])
    rows = [
        MatrixRow(site=site, counts=counts, total=sum(counts.values()))
        for site, counts in sorted(by_site.items())
    ]
    totals = {s: sum(r.counts[s] for r in rows) for s in statuses}
    return Matrix(statuses=statuses, rows=rows, totals=totals, grand_total=sum(totals.values()))


@dataclass(frozen=True)
class Bucket:
    start: datetime
    submitted: int
    ended: int


def bucket_start(range_: str, now: datetime) -> datetime:
    """The first bucket's start: whole hours (24 h) or whole 6-hour blocks (7 d), so bars stay
    put between refreshes and the current, partial bucket is the last one."""
    width, count = RANGES[range_]
    hours = int(width.total_seconds() // 3600)
    aligned = now.replace(minute=0, second=0, microsecond=0, hour=now.hour - now.hour % hours)
    return aligned - (count - 1) * width


def buckets(
    start: datetime, width: timedelta, submitted: list[int], ended: list[int]
) -> list[Bucket]:
    return [
        Bucket(start=start + i * width, submitted=s, ended=e)
        for i, (s, e) in enumerate(zip(submitted, ended, strict=True))
    ]


@dataclass
class Options:
    """Values the filter form offers, from what the caller can see."""

    vos: list[str]
    sites: list[str] = field(default_factory=list)
    ces: list[str] = field(default_factory=list)
    queues: list[str] = field(default_factory=list)


@dataclass
class Overview:
    filters: Filters
    matrix: Matrix
    activity: list[Bucket]
    failures: list[dict[str, Any]]
    queues: list[dict[str, Any]] | None
    generated: datetime
    bans: list[Ban] = field(default_factory=list)
    can_ban: bool = False
    """Whether the caller may ban and allow (SiteManager or administrator): the page then
    offers the controls; the routes check it again."""

    def site_bans(self, site: str) -> list[Ban]:
        """The whole-site bans in force on `site` (of any VO the caller sees)."""
        return [b for b in self.bans if b.site == site and b.ce is None]

    def ban_on(self, vo: str, site: str, ce: str, queue: str) -> Ban | None:
        """The ban in force covering this queue of this VO, the widest first."""
        found = [b for b in self.bans if b.vo == vo and b.covers(site, ce, queue)]
        found.sort(key=lambda b: (b.ce is not None, b.queue is not None))
        return found[0] if found else None


def may_ban(identity: Identity) -> bool:
    return not identity.is_pilot and (identity.is_admin or SITE_MANAGER in identity.properties)


def visible_vos(ctx: ServerContext, identity: Identity) -> list[str]:
    scope = vo_scope(identity)
    return sorted(ctx.settings.vos if scope is None else scope)


OPTIONS_TTL = 60.0


async def options(ctx: ServerContext, identity: Identity) -> Options:
    """Sites, CEs and queues that occur among the caller's pilots (one grouped query).

    Kept for a minute per VO scope: the query reads every pilot of the scope (1.5-1.8 s over
    1M pilots in SQLite), and the lists change when sites are added, not by the second.
    """
    key = ("monitor-options", vo_scope(identity))
    now = time.monotonic()
    cached = ctx.memo.get(key)
    if cached is not None and cached[0] > now:
        found: Options = cached[1]
        return found
    rows = await pilots_logic.summary(
        ctx, identity, SummaryParams(grouping=["GridSite", "DestinationSite", "Queue"])
    )
    found = Options(
        vos=visible_vos(ctx, identity),
        sites=sorted({str(r["GridSite"]) for r in rows})[:MAX_OPTIONS],
        ces=sorted({str(r["DestinationSite"]) for r in rows})[:MAX_OPTIONS],
        queues=sorted({str(r["Queue"]) for r in rows})[:MAX_OPTIONS],
    )
    if len(ctx.memo) > 1000:  # bounded: one entry per VO scope in practice
        ctx.memo.clear()
    ctx.memo[key] = (now + OPTIONS_TTL, found)
    return found


async def overview(ctx: ServerContext, identity: Identity, filters: Filters) -> Overview:
    now = utcnow()
    specs = filter_specs(filters, now)
    summary = await pilots_logic.summary(
        ctx, identity, SummaryParams(grouping=["GridSite", "Status"], search=specs)
    )
    width, count = RANGES[filters.range]
    start = bucket_start(filters.range, now)
    scoped = pilots_logic.scoped(specs, identity)
    ended_specs: list[SearchSpec] = [
        *scoped,
        VectorSearch(
            parameter="Status",
            operator=VectorOperator.IN,
            values=sorted(s.value for s in FINAL_STATUSES),
        ),
    ]
    async with ctx.db.read() as conn:
        submitted = await db_activity.counts_per_bucket(
            conn,
            time_column="SubmissionTime",
            specs=scoped,
            start=start,
            width=width,
            buckets=count,
        )
        ended = await db_activity.counts_per_bucket(
            conn,
            time_column="LastUpdateTime",
            specs=ended_specs,
            start=start,
            width=width,
            buckets=count,
        )
    failure_specs = [
        *[s for s in specs if s.parameter != "Status"],
        VectorSearch(
            parameter="Status",
            operator=VectorOperator.IN,
            values=[PilotStatus.FAILED.value, PilotStatus.ABORTED.value],
        ),
    ]
    _, failures = await pilots_logic.search(
        ctx,
        identity,
        SearchParams(
            parameters=[
                "PilotStamp",
                "VO",
                "Status",
                "StatusReason",
                "GridSite",
                "DestinationSite",
                "Queue",
                "LastUpdateTime",
            ],
            search=failure_specs,
            sort=[SortSpec(parameter="LastUpdateTime", direction="desc")],
        ),
        page=1,
        per_page=RECENT_FAILURES,
    )
    return Overview(
        filters=filters,
        matrix=build_matrix(summary),
        activity=buckets(start, width, submitted, ended),
        failures=failures,
        queues=await queue_states(ctx, identity),
        generated=now,
        bans=await bans_logic.list_bans(ctx, identity),
        can_ban=may_ban(identity),
    )


async def queue_states(ctx: ServerContext, identity: Identity) -> list[dict[str, Any]] | None:
    """What directors last reported of the caller's queues; None when none has reported."""
    return await director_queues.queue_states(ctx, identity) or None


@dataclass
class LogPage:
    lines: list[dict[str, Any]]
    total: int
    page: int
    per_page: int
    query: str

    @property
    def first(self) -> int:
        return (self.page - 1) * self.per_page + 1 if self.lines else 0

    @property
    def last(self) -> int:
        return self.first + len(self.lines) - 1 if self.lines else 0

    @property
    def has_previous(self) -> bool:
        return self.page > 1

    @property
    def has_next(self) -> bool:
        return self.page * self.per_page < self.total


@dataclass
class PilotView:
    pilot: dict[str, Any]
    jobs: list[int]
    logs: LogPage


async def pilot(ctx: ServerContext, identity: Identity, stamp: str) -> dict[str, Any]:
    """One pilot the caller may see; NotFound otherwise (another VO's pilot looks unknown)."""
    if not stamp or len(stamp) > 32:
        raise NotFound("Pilot not found")
    _, rows = await pilots_logic.search(
        ctx,
        identity,
        SearchParams(
            search=[ScalarSearch(parameter="PilotStamp", operator=ScalarOperator.EQ, value=stamp)]
        ),
        page=1,
        per_page=1,
    )
    if not rows:
        raise NotFound("Pilot not found")
    return rows[0]


async def log_page(
    ctx: ServerContext, identity: Identity, stamp: str, text: str, page: int
) -> LogPage:
    """One page of a pilot's log lines in time order, optionally only those containing `text`."""
    text = text.strip()[:MAX_FILTER_LENGTH]
    specs: list[SearchSpec] = [
        ScalarSearch(parameter="PilotStamp", operator=ScalarOperator.EQ, value=stamp)
    ]
    if text:
        specs.append(
            ScalarSearch(parameter="Message", operator=ScalarOperator.LIKE, value=f"%{text}%")
        )
    total, lines = await logs_logic.search(
        ctx, identity, SearchParams(search=specs), page=max(page, 1), per_page=LOG_PAGE
    )
    return LogPage(lines=lines, total=total, page=max(page, 1), per_page=LOG_PAGE, query=text)


async def pilot_view(
    ctx: ServerContext, identity: Identity, stamp: str, text: str, page: int
) -> PilotView:
    record = await pilot(ctx, identity, stamp)
    jobs = await pilots_logic.jobs_of(ctx, identity, stamp)
    return PilotView(
        pilot=record,
        jobs=list(jobs.job_ids),
        logs=await log_page(ctx, identity, stamp, text, page),
    )
