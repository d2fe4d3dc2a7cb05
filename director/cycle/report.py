"""The report of every configured queue (limits, back-off, last cycle) sent to the server after
each submission cycle, for the monitor page (`director.queue_report`)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from director.cycle.context import CycleContext
from director.cycle.outcomes import QueueOutcome, kv
from director.empty_pilots import QueueThrottle
from director.errors import DirectorError
from director.queue_report import LastCycle, report_body

log = logging.getLogger(__name__)


class QueueReporter:
    """Keeps each queue's last cycle and reports all queues at once."""

    def __init__(self, context: CycleContext) -> None:
        self.context = context
        self._last_cycle: dict[str, LastCycle] = {}

    async def report(
        self,
        started: float,
        outcomes: Sequence[QueueOutcome],
        throttles: Mapping[str, QueueThrottle] | None = None,
    ) -> None:
        """Tell the server every queue's limits, back-off and last cycle, and, when the
        director follows empty pilots, each queue's recent counts and submission factor (what
        a restarted director starts from). Best effort: a failed report is logged and the
        cycle goes on."""
        context = self.context
        for outcome in outcomes:
            counted = outcome.counts_from in ("ce", "server")
            self._last_cycle[outcome.queue] = LastCycle(
                at=started,
                submitted=outcome.submitted,
                waiting=outcome.waiting if counted else None,
                running=outcome.running if counted else None,
                error=outcome.error,
            )
        if context.client is None:
            return
        queues = context.queues
        try:
            body = report_body(
                queues, context.backoff, self._last_cycle, context.clock(), throttles
            )
            await context.client.report_queues(body)
        except (DirectorError, OSError, ValueError) as exc:
            log.warning("report queues=%d error=%s", len(queues), kv(str(exc)))
        except Exception:
            log.exception("report queues=%d: unexpected error", len(queues))
