"""The body of the director's queue report: pure, so its arithmetic is tested without I/O.

At the end of each submission cycle the director tells the server, for every configured queue:
its limits (from the config), whether it is enabled, its back-off (consecutive failures and
until when) and what its last cycle did. The monitor page shows it; the director never reads
it back, so a lost report costs nothing but a stale page.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from director.backoff import Backoff
from director.config import QueueRef
from director.empty_pilots import QueueThrottle
from server.models import QueueReport, QueuesReport

MAX_ERROR = 255
MAX_NAME = 128
MAX_KEY = 384
MAX_COUNT = 2**31 - 1
MAX_QUEUES = 10_000

# 64 hex characters are a pilot secret's shape; three base64url parts starting "eyJ", a JWT's
_SECRET_LIKE = re.compile(
    r"(?<![0-9a-fA-F])[0-9a-fA-F]{64,}(?![0-9a-fA-F])"
    r"|eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"
)


@dataclass(frozen=True)
class LastCycle:
    """What a queue's last submission cycle did; counts are None when it did not count."""

    at: float
    submitted: int
    waiting: int | None
    running: int | None
    error: str | None


def short_error(text: str | None) -> str | None:
    """One line of at most 255 characters, anything shaped like a secret or token masked:
    an error text comes from CEs and servers we do not control, and ends up on a web page."""
    if not text:
        return None
    line = " ".join(text.split())
    line = _SECRET_LIKE.sub("<redacted>", line)
    if len(line) > MAX_ERROR:
        line = line[: MAX_ERROR - 1] + "…"
    return line or None


def _time(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _count(value: int | None) -> int | None:
    return None if value is None else max(0, min(value, MAX_COUNT))


def queue_report(
    ref: QueueRef,
    backoff: Backoff,
    last: LastCycle | None,
    now: float,
    throttle: QueueThrottle | None = None,
) -> QueueReport:
    """One queue's line; `now` is on the same clock as `backoff`'s and `last.at` (epoch);
    `throttle`, when the director follows empty pilots, its recent counts and factor."""
    q = ref.config
    kind = str(getattr(ref.entry.ce, "kind", "?"))
    rest = backoff.remaining(ref.key)
    error = last.error if last is not None else None
    return QueueReport(
        queue_key=ref.key[:MAX_KEY],
        vo=ref.vo,
        site=ref.site,
        ce=ref.ce,
        queue=ref.ce_queue[:MAX_NAME],
        ce_kind=kind[:32] or "?",
        max_total_pilots=min(q.max_total_pilots, MAX_COUNT),
        max_waiting_pilots=min(q.max_waiting_pilots, MAX_COUNT),
        pilots_per_cycle=min(q.pilots_per_cycle, MAX_COUNT),
        enabled=ref.enabled,
        failures=_count(backoff.failures(ref.key)) or 0,
        backoff_until=_time(now + rest) if rest > 0 else None,
        last_error=short_error(error or backoff.reason(ref.key)),
        last_cycle_at=_time(last.at) if last is not None else None,
        last_submitted=_count(last.submitted) if last is not None else None,
        last_waiting=_count(last.waiting) if last is not None else None,
        last_running=_count(last.running) if last is not None else None,
        ended_pilots=_count(throttle.counts.ended) if throttle is not None else None,
        empty_ratio=throttle.counts.ratio if throttle is not None else None,
        submission_factor=throttle.factor if throttle is not None else None,
    )


def report_body(
    refs: Sequence[QueueRef],
    backoff: Backoff,
    last: Mapping[str, LastCycle],
    now: float,
    throttles: Mapping[str, QueueThrottle] | None = None,
) -> bytes:
    """The JSON of `PUT /api/director/queues`: every configured queue, enabled or not; `last`
    and `throttles` are keyed by `ref.key`. Each queue's model is made, checked and serialised
    in turn and dropped: 10,000 models alive at once were ~20 MB of the director's peak, at the
    end of its largest cycle. The checks of `QueuesReport` (at most 10,000 queues, each key
    once per VO) are made here, with its messages."""
    if len(refs) > MAX_QUEUES:
        raise ValueError(f"{len(refs)} queues: a report takes at most {MAX_QUEUES}")
    throttles = throttles or {}
    seen: set[tuple[str, str]] = set()
    parts: list[bytes] = []
    for r in refs:
        q = queue_report(r, backoff, last.get(r.key), now, throttles.get(r.key))
        if (q.vo, q.queue_key) in seen:
            raise ValueError(f"queue {q.queue_key!r} of VO {q.vo!r} is reported twice")
        seen.add((q.vo, q.queue_key))
        parts.append(q.__pydantic_serializer__.to_json(q, exclude_none=True))  # None: default
    return b'{"queues":[' + b",".join(parts) + b"]}"


def build_report(
    refs: Sequence[QueueRef],
    backoff: Backoff,
    last: Mapping[str, LastCycle],
    now: float,
    throttles: Mapping[str, QueueThrottle] | None = None,
) -> QueuesReport:
    """`report_body` as the server reads it."""
    return QueuesReport.model_validate_json(report_body(refs, backoff, last, now, throttles))
