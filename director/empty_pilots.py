"""Learning from empty pilots: a queue whose pilots keep coming back without a job gets fewer.

A pilot that ended Done without running a job is an empty pilot: it took a batch slot, found
nothing to match and left. When most of a queue's recent pilots are empty, submitting as many
again only wastes the site's slots (DIRAC issue 7636 asks for exactly this signal); when they
carry jobs again, the queue should get its full share back.

Each cycle the director reads, once for all its queues, how many Done pilots of each queue
ended in a recent window with and without a job (`GET /api/director/queues/empty-pilots`), and
keeps one submission factor per queue in [min_factor, 1]:

- fewer than `min_samples` ended pilots: no change (too little to judge, either way);
- empty ratio above `high`: the factor is multiplied by `decrease` (halved by default), down
  to `min_factor`;
- empty ratio below `low`: the factor grows by `recover` (additive, so recovery is gradual),
  up to 1;
- in between: no change. The gap between `low` and `high` is the hysteresis that keeps a
  queue hovering near one threshold from flapping.

The factor then scales what the queue would have submitted (`apply_factor`), never to zero
while there is demand: one pilot a cycle still goes out, so a queue whose jobs come back is
noticed (its pilots carry jobs again) and recovers.

Pure functions: no I/O, no clock; the director owns the per-queue state (a dict of factors).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from server.models import QueueEmptyPilots

K = TypeVar("K", bound=Hashable)

#: Tolerance for `n * factor` landing a hair under an integer (0.7 * 10 = 6.999...).
_EPSILON = 1e-9


class EmptyPilotPolicy(BaseModel):
    """How a queue's submission follows its empty-pilot ratio (the config's `empty_pilots:`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    window_s: int = Field(3600, ge=60, le=7 * 24 * 3600, description="ended pilots counted")
    min_samples: int = Field(10, ge=1, description="fewer ended pilots: no change")
    high: float = Field(0.8, ge=0.0, le=1.0, description="empty ratio above which to lower")
    low: float = Field(0.5, ge=0.0, le=1.0, description="empty ratio below which to recover")
    decrease: float = Field(0.5, gt=0.0, lt=1.0, description="factor multiplied by this")
    recover: float = Field(0.1, gt=0.0, le=1.0, description="factor raised by this")
    min_factor: float = Field(0.1, gt=0.0, le=1.0, description="the factor's floor")

    @model_validator(mode="after")
    def _band(self) -> EmptyPilotPolicy:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        return self


@dataclass(frozen=True)
class EmptyPilotCounts:
    """Done pilots of one queue that ended in the window: without a job, and with one."""

    empty: int = 0
    with_jobs: int = 0

    def __post_init__(self) -> None:
        if self.empty < 0 or self.with_jobs < 0:
            raise ValueError("counts must not be negative")

    @property
    def ended(self) -> int:
        return self.empty + self.with_jobs

    @property
    def ratio(self) -> float | None:
        """The share of empty pilots, or None with no ended pilot."""
        return self.empty / self.ended if self.ended else None


@dataclass(frozen=True)
class QueueThrottle:
    """What the queue report says of one queue: its window's counts and its current factor."""

    counts: EmptyPilotCounts
    factor: float


def clamp(factor: float, policy: EmptyPilotPolicy) -> float:
    """The factor within [min_factor, 1]; a NaN (never expected) reads as 1, no throttling."""
    if math.isnan(factor):
        return 1.0
    return min(1.0, max(policy.min_factor, factor))


def next_factor(counts: EmptyPilotCounts, previous: float, policy: EmptyPilotPolicy) -> float:
    """The queue's new submission factor in [min_factor, 1] from its recent ended pilots."""
    factor = clamp(previous, policy)
    if not policy.enabled:
        return 1.0
    ratio = counts.ratio
    if ratio is None or counts.ended < policy.min_samples:
        return factor
    if ratio > policy.high:
        return clamp(factor * policy.decrease, policy)
    if ratio < policy.low:
        return clamp(factor + policy.recover, policy)
    return factor


def apply_factor(n: int, factor: float) -> int:
    """`n` pilots (a demand or a slot count) scaled by `factor`, rounded down, but at least
    one when `n` is: a throttled queue still sends a pilot a cycle, so it can recover."""
    if n <= 0:
        return 0
    if math.isnan(factor) or factor >= 1.0:
        return n
    return min(n, max(1, math.floor(n * factor + _EPSILON)))


def counts_by_queue(
    rows: Iterable[QueueEmptyPilots],
) -> dict[tuple[str, str, str, str], EmptyPilotCounts]:
    """The server's answer keyed as pilot records name a queue: (VO, site, CE, CE queue)."""
    return {
        (r.vo, r.site, r.ce, r.queue): EmptyPilotCounts(empty=r.empty, with_jobs=r.with_jobs)
        for r in rows
    }


def update_factors(
    previous: Mapping[K, float],
    counts: Mapping[K, EmptyPilotCounts],
    keys: Iterable[K],
    policy: EmptyPilotPolicy,
) -> dict[K, float]:
    """One cycle's factors for `keys`: a queue not seen before starts at 1, a queue with no
    ended pilot in the window keeps its factor (too few samples), a queue not in `keys`
    is forgotten."""
    empty = EmptyPilotCounts()
    return {k: next_factor(counts.get(k, empty), previous.get(k, 1.0), policy) for k in keys}
