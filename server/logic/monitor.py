"""What the pilot monitor shows: the site-by-status matrix, activity over time, recent failures,
efficiency and quality per site and CE, queues that fail every pilot, a paged and sortable list
of pilots for any selection, one pilot with its jobs and logs.

Every read goes through the same logic as the API (`logic.pilots`, `logic.logs`) with the
caller's identity, so the page can never show more than the caller's token could fetch. The
arithmetic (filters, the matrix, buckets) is pure functions, tested without a database.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from server.access import vo_scope
from server.clock import utcnow
from server.context import ServerContext
from server.db import activity as db_activity
from server.db import queue_health as db_queue_health
from server.errors import InvalidRequest, NotFound
from server.identity import SITE_MANAGER, Identity
from server.logic import bans as bans_logic
from server.logic import director_queues
from server.logic import logs as logs_logic
from server.logic import pilots as pilots_logic
from server.models import (
    FINAL_STATUSES,
    STAMP_PATTERN,
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

    def pilots(self, **changes: str) -> str:
        """The pilot list of this selection (with `changes`): where a count links to."""
        values = {**self.__dict__, **changes}
        values.pop("range")
        query = urlencode({k: v for k, v in values.items() if v})
        return "/monitor/pilots" + (f"?{query}" if query else "")


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


def filter_specs(filters: Filters, now: datetime, *, status: bool = True) -> list[SearchSpec]:
    """The filters as search conditions (the same DSL the API takes); without the status
    filter when `status` is false (efficiency is about every status of the selection)."""
    specs: list[SearchSpec] = [
        ScalarSearch(parameter=column, operator=ScalarOperator.EQ, value=getattr(filters, name))
        for name, column in FILTER_COLUMNS.items()
        if getattr(filters, name)
    ]
    if status and filters.status:
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


# --- efficiency and quality per site and CE ---------------------------------------------------

#: The quality flags of DIRAC's pilot summary (`PilotAgentsDB._getElementStatus`, used by
#: `getPilotSummaryWeb` and `getGroupedPilotSummary`): an efficiency (per cent) below the first
#: bound of a pair gets its flag; at or above the last bound, "Good".
QUALITY_BOUNDS: tuple[tuple[float, str], ...] = ((25.0, "Bad"), (60.0, "Poor"), (85.0, "Fair"))
#: DIRAC flags "Idle" unless a site or CE has more than 10 pilots (more than 100 for the
#: installation's total line); here it counts the ended pilots the efficiency is made of.
QUALITY_MIN_ENDED = 10
QUALITY_MIN_ENDED_ALL = 100
#: The statuses an efficiency is made of: Done against Done + Failed + Aborted (Deleted is an
#: operator's clean-up, not an outcome).
OUTCOMES = (PilotStatus.DONE.value, PilotStatus.FAILED.value, PilotStatus.ABORTED.value)


def efficiency(done: int, failed: int, aborted: int) -> float | None:
    """Done against Done + Failed + Aborted, in per cent; None when no pilot ended."""
    ended = done + failed + aborted
    return None if ended == 0 else 100.0 * done / ended


def quality(percent: float | None, ended: int, minimum: int = QUALITY_MIN_ENDED) -> str:
    """DIRAC's flag for an efficiency: Idle with `minimum` ended pilots or fewer, else Bad,
    Poor, Fair or Good by `QUALITY_BOUNDS`."""
    if percent is None or ended <= minimum:
        return "Idle"
    for bound, flag in QUALITY_BOUNDS:
        if percent < bound:
            return flag
    return "Good"


@dataclass(frozen=True)
class EfficiencyRow:
    """One site (`ce` None), one CE of a site, or the whole selection (`site` empty)."""

    site: str
    ce: str | None
    counts: Mapping[str, int]
    efficiency: float | None
    quality: str

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def ended(self) -> int:
        return sum(self.counts.get(s, 0) for s in OUTCOMES)

    def count(self, status: str) -> int:
        return self.counts.get(status, 0)


def _efficiency_row(
    site: str, ce: str | None, counts: Mapping[str, int], minimum: int
) -> EfficiencyRow:
    done, failed, aborted = (counts.get(s, 0) for s in OUTCOMES)
    percent = efficiency(done, failed, aborted)
    return EfficiencyRow(
        site=site,
        ce=ce,
        counts=dict(counts),
        efficiency=percent,
        quality=quality(percent, done + failed + aborted, minimum),
    )


def efficiency_rows(
    summary: Iterable[Mapping[str, Any]],
) -> tuple[list[EfficiencyRow], EfficiencyRow]:
    """Summary rows grouped by (GridSite, DestinationSite, Status) as one row per site, each
    followed by one row per CE of it (sites and CEs sorted), and the row of the whole selection
    (flagged with DIRAC's installation-wide minimum)."""
    by_ce: dict[str, dict[str, dict[str, int]]] = {}
    everything: dict[str, int] = {}
    for row in summary:
        site, ce, status = str(row["GridSite"]), str(row["DestinationSite"]), str(row["Status"])
        counts = by_ce.setdefault(site, {}).setdefault(ce, {})
        counts[status] = counts.get(status, 0) + int(row["count"])
        everything[status] = everything.get(status, 0) + int(row["count"])
    rows: list[EfficiencyRow] = []
    for site, ces in sorted(by_ce.items()):
        site_counts: dict[str, int] = {}
        for counts in ces.values():
            for status, n in counts.items():
                site_counts[status] = site_counts.get(status, 0) + n
        rows.append(_efficiency_row(site, None, site_counts, QUALITY_MIN_ENDED))
        rows.extend(
            _efficiency_row(site, ce, counts, QUALITY_MIN_ENDED)
            for ce, counts in sorted(ces.items())
        )
    return rows, _efficiency_row("", None, everything, QUALITY_MIN_ENDED_ALL)


# --- queues that fail every pilot -------------------------------------------------------------

#: A queue "fails every pilot" when its last FAILING_LAST pilots that ended within
#: FAILING_WINDOW (at least FAILING_MIN of them) all ended Failed or Aborted.
FAILING_LAST = 10
FAILING_MIN = 3
FAILING_WINDOW = timedelta(hours=24)
BAD_ENDS = frozenset({PilotStatus.FAILED.value, PilotStatus.ABORTED.value})


def fails_every_pilot(statuses: Sequence[str], minimum: int = FAILING_MIN) -> bool:
    """Whether these last ended statuses (newest first) are enough and all Failed or Aborted."""
    return len(statuses) >= minimum and all(s in BAD_ENDS for s in statuses)


QueueKey = tuple[str, str, str]


@dataclass(frozen=True)
class QueueHealth:
    """The last pilots one queue (VO, CE, queue) ended, newest first."""

    vo: str
    site: str
    ce: str
    queue: str
    statuses: tuple[str, ...]
    latest_reason: str
    """The reason of the newest Failed or Aborted pilot ("" when none)."""
    latest_at: datetime | None

    @property
    def ended(self) -> int:
        return len(self.statuses)

    @property
    def done(self) -> int:
        return sum(1 for s in self.statuses if s == PilotStatus.DONE.value)

    @property
    def failing(self) -> bool:
        return fails_every_pilot(self.statuses)

    def pilots(self) -> str:
        """The pilot list of this queue, latest updates first."""
        query = urlencode(
            {"vo": self.vo, "ce": self.ce, "queue": self.queue, "sort": "updated", "dir": "desc"}
        )
        return f"/monitor/pilots?{query}"


class QueueHealthFolder:
    """Folds the rows of `db.queue_health.last_ended` (newest first within a queue) into one
    `QueueHealth` per queue as they stream in: only the statuses are kept per row, never the
    rows themselves."""

    def __init__(self) -> None:
        self._statuses: dict[QueueKey, list[str]] = {}
        self._first: dict[QueueKey, tuple[str, datetime | None]] = {}
        self._reason: dict[QueueKey, str] = {}

    def add(self, row: Mapping[str, Any]) -> None:
        key = (str(row["VO"]), str(row["DestinationSite"]), str(row["Queue"]))
        status = str(row["Status"])
        status = _STATUS_NAMES.get(status, status)  # one string object per status, not per row
        statuses = self._statuses.get(key)
        if statuses is None:
            statuses = self._statuses[key] = []
            self._first[key] = (str(row["GridSite"]), row["LastUpdateTime"])
        statuses.append(status)
        if status in BAD_ENDS and key not in self._reason:
            self._reason[key] = str(row["StatusReason"] or "")

    def result(self) -> dict[QueueKey, QueueHealth]:
        found: dict[QueueKey, QueueHealth] = {}
        for (vo, ce, queue), statuses in self._statuses.items():
            site, latest_at = self._first[(vo, ce, queue)]
            found[(vo, ce, queue)] = QueueHealth(
                vo=vo,
                site=site,
                ce=ce,
                queue=queue,
                statuses=tuple(statuses),
                latest_reason=self._reason.get((vo, ce, queue), ""),
                latest_at=latest_at,
            )
        return found


_STATUS_NAMES = {s.value: s.value for s in PilotStatus}


def queue_health(rows: Iterable[Mapping[str, Any]]) -> dict[QueueKey, QueueHealth]:
    """Rows of `db.queue_health.last_ended` (newest first within a queue) per queue."""
    folder = QueueHealthFolder()
    for row in rows:
        folder.add(row)
    return folder.result()


def submissions_failing(queue: Mapping[str, Any], now: datetime) -> bool:
    """Whether a director's report says the queue is backed off after failed submissions."""
    until = queue.get("BackoffUntil")
    return (
        bool(queue.get("Enabled", True))
        and int(queue.get("Failures") or 0) > 0
        and until is not None
        and until > now
    )


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
    efficiency: list[EfficiencyRow] = field(default_factory=list)
    efficiency_total: EfficiencyRow | None = None
    health: dict[QueueKey, QueueHealth] = field(default_factory=dict)

    @property
    def failing(self) -> list[QueueHealth]:
        """Queues whose recent pilots all failed, by VO, CE and queue."""
        return [h for _, h in sorted(self.health.items()) if h.failing]

    def health_of(self, vo: str, ce: str, queue: str) -> QueueHealth | None:
        return self.health.get((vo, ce, queue))

    def submissions_failing(self, queue: Mapping[str, Any]) -> bool:
        return submissions_failing(queue, self.generated)

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
    # One grouped read serves the matrix (narrowed to the status asked for) and the efficiency
    # per site and CE (every status of the selection).
    by_ce = await pilots_logic.summary(
        ctx,
        identity,
        SummaryParams(
            grouping=["GridSite", "DestinationSite", "Status"],
            search=filter_specs(filters, now, status=False),
        ),
    )
    summary = [r for r in by_ce if not filters.status or r["Status"] == filters.status]
    efficiency, efficiency_total = efficiency_rows(by_ce)
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
        health = QueueHealthFolder()
        async for row in db_queue_health.last_ended(
            conn,
            specs=pilots_logic.scoped(filter_specs(filters, now, status=False), identity),
            statuses=OUTCOMES,
            since=now - FAILING_WINDOW,
            per_queue=FAILING_LAST,
        ):
            health.add(row)
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
        efficiency=efficiency,
        efficiency_total=efficiency_total,
        health=health.result(),
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


# --- the pilot list: any selection, paged, sorted, searched -----------------------------------

PILOT_PAGE = 100
MAX_PAGE = 1_000_000
MAX_REFERENCE = 255
#: sort key in the URL -> column; times sort newest first unless asked otherwise.
SORTS = {
    "submitted": "SubmissionTime",
    "updated": "LastUpdateTime",
    "status": "Status",
    "site": "GridSite",
    "ce": "DestinationSite",
    "queue": "Queue",
}
NEWEST_FIRST = frozenset({"submitted", "updated"})
LIST_FIELDS = [
    "PilotStamp",
    "VO",
    "Status",
    "StatusReason",
    "GridSite",
    "DestinationSite",
    "Queue",
    "PilotJobReference",
    "CurrentJobID",
    "SubmissionTime",
    "LastUpdateTime",
]
_STAMP = re.compile(STAMP_PATTERN)


@dataclass(frozen=True)
class PilotQuery:
    """The pilot list's query string, validated: a selection (the overview's filters), an
    optional search (stamp, CE reference, JobID: exact values), a sort and a page."""

    filters: Filters = field(default_factory=Filters)
    stamp: str = ""
    reference: str = ""
    job: str = ""
    sort: str = "submitted"
    direction: str = "desc"
    page: int = 1

    def query(self, **changes: str | int) -> str:
        """This list as a query string with `changes` (URL names); defaults left out."""
        values: dict[str, str | int] = {
            **{k: v for k, v in self.filters.__dict__.items() if k != "range"},
            "stamp": self.stamp,
            "ref": self.reference,
            "job": self.job,
            "sort": self.sort,
            "dir": self.direction,
            "page": self.page,
            **changes,
        }
        sort = str(values["sort"])
        defaults = {
            "sort": "submitted",
            "dir": "desc" if sort in NEWEST_FIRST else "asc",
            "page": 1,
        }
        return urlencode(
            {k: v for k, v in values.items() if v not in ("", None) and defaults.get(k) != v}
        )

    def sorted_by(self, key: str) -> str:
        """The query of the first page sorted by `key`: the other direction when the list is
        sorted by it already, else newest first for times and A to Z for the rest."""
        if key == self.sort:
            direction = "asc" if self.direction == "desc" else "desc"
        else:
            direction = "desc" if key in NEWEST_FIRST else "asc"
        return self.query(sort=key, dir=direction, page=1)

    def aria_sort(self, key: str) -> str:
        if key != self.sort:
            return "none"
        return "descending" if self.direction == "desc" else "ascending"

    @property
    def searching(self) -> bool:
        return bool(self.stamp or self.reference or self.job)


def parse_pilot_query(query: Mapping[str, str]) -> PilotQuery:
    """A pilot list query from a query string; a bad value is a 400 naming the parameter."""
    filters = parse_filters(query)
    stamp = query.get("stamp", "").strip()
    if stamp and not _STAMP.fullmatch(stamp):
        raise InvalidRequest("'stamp' must be 1 to 32 letters, digits, '-' or '_'")
    reference = query.get("ref", "").strip()
    if len(reference) > MAX_REFERENCE:
        raise InvalidRequest(f"'ref' is longer than {MAX_REFERENCE} characters")
    job = query.get("job", "").strip()
    if job:
        try:
            job = str(pilots_logic.job_id(job))
        except InvalidRequest:
            raise InvalidRequest("'job' must be a JobID (an integer)") from None
    sort = query.get("sort", "").strip() or "submitted"
    if sort not in SORTS:
        raise InvalidRequest(f"'sort' must be one of {', '.join(SORTS)}")
    direction = query.get("dir", "").strip() or ("desc" if sort in NEWEST_FIRST else "asc")
    if direction not in ("asc", "desc"):
        raise InvalidRequest("'dir' must be asc or desc")
    raw_page = query.get("page", "").strip() or "1"
    if not (raw_page.isascii() and raw_page.isdigit()) or not 1 <= int(raw_page) <= MAX_PAGE:
        raise InvalidRequest(f"'page' must be a whole number from 1 to {MAX_PAGE}")
    return PilotQuery(
        filters=filters,
        stamp=stamp,
        reference=reference,
        job=job,
        sort=sort,
        direction=direction,
        page=int(raw_page),
    )


def pilot_list_search(query: PilotQuery, now: datetime) -> SearchParams:
    """The list as the API's search body: the filters, the search values, the sort."""
    specs = filter_specs(query.filters, now)
    if query.stamp:
        specs.append(
            ScalarSearch(parameter="PilotStamp", operator=ScalarOperator.EQ, value=query.stamp)
        )
    if query.reference:
        specs.append(
            ScalarSearch(
                parameter="PilotJobReference", operator=ScalarOperator.EQ, value=query.reference
            )
        )
    if query.job:
        specs.append(
            ScalarSearch(
                parameter=pilots_logic.JOB_ID, operator=ScalarOperator.EQ, value=int(query.job)
            )
        )
    return SearchParams(
        parameters=LIST_FIELDS,
        search=specs,
        sort=[SortSpec(parameter=SORTS[query.sort], direction=query.direction)],
    )


@dataclass
class PilotList:
    query: PilotQuery
    pilots: list[dict[str, Any]]
    total: int
    per_page: int = PILOT_PAGE

    @property
    def page(self) -> int:
        return self.query.page

    @property
    def first(self) -> int:
        return (self.page - 1) * self.per_page + 1 if self.pilots else 0

    @property
    def last(self) -> int:
        return self.first + len(self.pilots) - 1 if self.pilots else 0

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))

    @property
    def has_previous(self) -> bool:
        return self.page > 1

    @property
    def has_next(self) -> bool:
        return self.page * self.per_page < self.total

    @property
    def past_the_end(self) -> bool:
        return not self.pilots and self.total > 0


async def pilot_list(ctx: ServerContext, identity: Identity, query: PilotQuery) -> PilotList:
    """One page of the caller's pilots for `query`, through the API's search (so scoped to
    the caller's VOs, sorted and counted within them)."""
    total, pilots = await pilots_logic.search(
        ctx, identity, pilot_list_search(query, utcnow()), page=query.page, per_page=PILOT_PAGE
    )
    return PilotList(query=query, pilots=pilots, total=total)
