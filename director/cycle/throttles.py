"""The submission factors of the queues, learnt from their empty pilots (`director.empty_pilots`,
the arithmetic in `director.empty_pilots`): read once per submission cycle, next to the bans.

One `GET /api/director/queues/empty-pilots` per cycle gives every queue's Done pilots of the
last `window_s` with and without a job. The same pilot stays in that window for `window_s`, so
deciding every cycle would count it again and again, and a queue whose few pilots came back
empty once would be halved down to the floor within minutes. A queue's factor is therefore
decided only when both hold:

- its counts differ from those of its last decision (new evidence: a pilot ended, or one left
  the window), and
- at least a quarter of the window (`DECIDE_EVERY`) has passed since that decision,

so a pilot takes part in at most four decisions, and a queue is halved at most four times per
window (1 -> 0.0625, floored at `min_factor`) or raised by `recover` as often.

After a restart (or a reload) the first cycle starts each queue from the factor last reported
to the server (`GET /api/director/queues`, one call), when that report is younger than the
window; its next decision waits a quarter window, as if it had just been taken. A server that
cannot say keeps every factor where it was (1 at start), logged at WARNING.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime

from director.client import ServerClient
from director.config import QueueRef
from director.empty_pilots import (
    EmptyPilotCounts,
    EmptyPilotPolicy,
    QueueThrottle,
    clamp,
    counts_by_queue,
    next_factor,
)
from director.errors import DirectorError

log = logging.getLogger(__name__)

#: The share of the window between two decisions on one queue.
DECIDE_EVERY = 0.25

_NONE = EmptyPilotCounts()


def _key(ref: QueueRef) -> tuple[str, str, str, str]:
    """The queue as the server's counts name it: (VO, GridSite, DestinationSite, Queue)."""
    return (ref.vo, ref.site, ref.ce, ref.ce_queue)


class Throttles:
    """Each queue's submission factor, its window's counts, and its last decision."""

    def __init__(self, policy: EmptyPilotPolicy) -> None:
        self.policy = policy
        self.factors: dict[str, float] = {}
        """The factor per queue key; a queue not in it submits at 1."""
        self.counts: dict[str, EmptyPilotCounts] = {}
        """The counts of the last successful read, per queue key."""
        self._decided: dict[str, tuple[float, EmptyPilotCounts | None]] = {}
        """Per queue key: when its factor was last decided, and on which counts (None: the
        factor came from the server's report)."""
        self._restored = False

    def factor(self, ref: QueueRef) -> float:
        return self.factors.get(ref.key, 1.0) if self.policy.enabled else 1.0

    def why(self, ref: QueueRef) -> str:
        """The plan's note on a throttled queue: `empty pilots: x0.25 (9/12 empty)`."""
        counts = self.counts.get(ref.key, _NONE)
        seen = f"{counts.empty}/{counts.ended} empty" if counts.ended else "as last reported"
        return f"empty pilots: x{self.factor(ref):g} ({seen})"

    def throttles(self) -> dict[str, QueueThrottle] | None:
        """What the queue report says of each queue; None when the policy is off."""
        if not self.policy.enabled:
            return None
        return {
            key: QueueThrottle(self.counts.get(key, _NONE), factor)
            for key, factor in self.factors.items()
        }

    async def refresh(
        self, client: ServerClient | None, queues: Sequence[QueueRef], now: float
    ) -> None:
        """One cycle's read and decisions; `now` is epoch seconds (the cycle's clock)."""
        if not self.policy.enabled or client is None:
            return
        if not self._restored:
            self._restored = True
            await self._restore(client, queues, now)
        since = datetime.fromtimestamp(now - self.policy.window_s, UTC)
        try:
            rows = await client.empty_pilots(since)
        except (DirectorError, OSError, ValueError) as exc:
            log.warning("empty pilots: cannot read the counts, factors kept: %s", exc)
            return
        by_queue = counts_by_queue(rows)
        self.counts = {ref.key: by_queue.get(_key(ref), _NONE) for ref in queues}
        keys = {ref.key for ref in queues}
        self.factors = {key: f for key, f in self.factors.items() if key in keys}
        self._decided = {key: d for key, d in self._decided.items() if key in keys}
        for ref in queues:
            self._decide(ref, self.counts[ref.key], now)

    def _decide(self, ref: QueueRef, counts: EmptyPilotCounts, now: float) -> None:
        previous = self.factors.get(ref.key, 1.0)
        last = self._decided.get(ref.key)
        if last is not None:
            at, seen = last
            if counts == seen or now - at < DECIDE_EVERY * self.policy.window_s:
                self.factors[ref.key] = previous
                return
        factor = next_factor(counts, previous, self.policy)
        self.factors[ref.key] = factor
        if counts.ended >= self.policy.min_samples:
            self._decided[ref.key] = (now, counts)
        if factor != previous:
            log.info(
                "queue %s: empty pilots %d/%d in the last %ds: submission factor %g -> %g",
                ref.key,
                counts.empty,
                counts.ended,
                self.policy.window_s,
                previous,
                factor,
            )

    async def _restore(self, client: ServerClient, queues: Sequence[QueueRef], now: float) -> None:
        """Start from the factors last reported, when younger than the window."""
        try:
            reported = await client.reported_factors()
        except (DirectorError, OSError, ValueError) as exc:
            log.warning("empty pilots: last reported factors unknown, starting at 1: %s", exc)
            return
        oldest = datetime.fromtimestamp(now - self.policy.window_s, UTC)
        for ref in queues:
            found = reported.get((ref.vo, ref.key))
            if found is None or found[1] < oldest:
                continue
            factor = clamp(found[0], self.policy)
            if factor < 1.0:
                self.factors[ref.key] = factor
                self._decided[ref.key] = (now, None)
                log.info("queue %s: submission factor %g, as last reported", ref.key, factor)
