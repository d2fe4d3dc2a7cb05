"""The monitoring cycle: per queue, the status of its live pilots from the CE, patched on the
server in bulk; pilots Unknown or held too long Aborted (and killed); operators' kill and
output requests carried out, and the output of pilots ended Failed or Aborted uploaded
(`director.cycle.requests`); then ended jobs' leftovers cleaned from the CE."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Set as AbstractSet
from typing import Any

from director.ce.base import ComputingElement, QueueSpec
from director.client import LIVE_STATUSES, LivePilot
from director.config import QueueRef
from director.cycle.context import CycleContext
from director.cycle.leases import Leases
from director.cycle.outcomes import MonitorOutcome, log_outcome
from director.cycle.queues import QueueFactory, queue_id, sibling_ids, spec_for
from director.cycle.requests import Pending, PilotRequests
from director.errors import CEError, ServerError
from server.models import FINAL_STATUSES, PilotMetadata, PilotStatus

log = logging.getLogger(__name__)

_RANK = {
    PilotStatus.SUBMITTED: 0,
    PilotStatus.UNKNOWN: 0,
    PilotStatus.WAITING: 1,
    PilotStatus.RUNNING: 2,
}
"""A live status moves only forward: a CE that answers Waiting for a Running pilot is late."""

_ENDED_BADLY = frozenset({PilotStatus.FAILED, PilotStatus.ABORTED})
"""The ends whose CE output is fetched before the job is cleaned."""


class Monitoring:
    """Follows the live pilots of every queue; remembers since when a pilot is Unknown or held."""

    def __init__(self, context: CycleContext, factory: QueueFactory, leases: Leases) -> None:
        self.context = context
        self.factory = factory
        self.leases = leases
        self._unknown_since: dict[str, float] = {}
        self._held_since: dict[str, float] = {}
        self.requests = PilotRequests(context)

    async def run(self, *, only: str | None = None) -> list[MonitorOutcome]:
        """One monitoring cycle over every queue (or the queue named `only`), disabled ones
        too: disabling stops submission, not the follow-up of live pilots."""
        context = self.context
        started = context.clock()
        refs = [ref for ref in context.queues if only is None or only in (ref.key, ref.queue)]
        try:
            granted = await self.leases.take(refs)
        except ServerError as exc:
            log.error("monitoring cycle: no queue can be followed: leases: %s", exc)
            context.cycle_done("monitoring", False)
            return [MonitorOutcome(ref.key, ref.ce, error=str(exc)) for ref in refs]
        pending = await self.requests.pending() if granted else Pending()
        semaphore = asyncio.Semaphore(context.settings.director.concurrency)

        async def one(ref: QueueRef) -> MonitorOutcome:
            outcome = MonitorOutcome(ref.key, ref.ce)
            t0 = context.clock()
            if ref.key not in granted:
                outcome.why = "lease held by another director"
                return outcome
            if context.stopping:
                outcome.why = "stopping"
                return outcome
            async with semaphore:
                try:
                    async with asyncio.timeout(context.settings.director.queue_timeout_seconds):
                        await self.follow(ref, outcome, pending.of_queue(queue_id(ref)))
                except (ServerError, CEError, OSError, TimeoutError) as exc:
                    outcome.error = outcome.why = f"{type(exc).__name__}: {exc}"
                except Exception as exc:
                    log.exception("queue %s: unexpected monitoring error", ref.key)
                    outcome.error = outcome.why = f"{type(exc).__name__}: {exc}"
            outcome.seconds = context.clock() - t0
            log_outcome(
                "monitoring", outcome, json_format=context.settings.director.log_format == "json"
            )
            return outcome

        outcomes = list(await asyncio.gather(*(one(ref) for ref in refs)))
        context.metrics.cycle_seconds.labels("monitoring").observe(context.clock() - started)
        context.cycle_done("monitoring", not any(outcome.error for outcome in outcomes))
        return outcomes

    @staticmethod
    def _stuck(trackers: dict[str, float], stamp: str, now: float, limit: float) -> bool:
        since = trackers.setdefault(stamp, now)
        return now - since > limit

    async def follow(
        self, ref: QueueRef, outcome: MonitorOutcome, pending: Pending | None = None
    ) -> None:
        """One queue: statuses from the CE to the server, stuck pilots Aborted, kill and
        output requests carried out, leftovers cleaned (those whose output is still to
        fetch kept)."""
        context = self.context
        pending = pending or Pending()
        live_pilots = await context.server().live_pilots(queue_id(ref))
        by_reference = {pilot.reference: pilot for pilot in live_pilots if pilot.reference}
        if not by_reference and not ref.enabled and not pending.kills and not pending.outputs:
            return  # nothing to follow, and a disabled CE may be gone: leave it alone
        killed_by_us = self.requests.killed_by_us(pending)
        ce = self.factory.ce_for(ref)
        spec = spec_for(ref)
        results = await ce.status(list(by_reference)) if by_reference else []
        now = context.clock()
        cfg = context.settings.director
        updates: dict[str, PilotMetadata] = {}
        to_kill: list[str] = []
        ended: list[str] = []
        ended_now: set[str] = set()
        ended_badly: dict[str, str] = {}
        aborted_by_ce: list[str] = []
        live_counts: dict[str, int] = {}
        for result in results:
            pilot = by_reference.get(result.reference)
            if pilot is None or result.status is None:
                continue
            outcome.checked += 1
            stamp, current, new = pilot.stamp, pilot.status, result.status
            # Held and still alive by the CE's map (ARC HELD, HTCondor spooling): wait, then
            # Abort. A hold the map already calls final (a failed HTCondor pilot) is recorded now.
            held = "HELD" in result.ce_state.upper() and new not in FINAL_STATUSES
            if new == PilotStatus.UNKNOWN or held:
                trackers = self._held_since if held else self._unknown_since
                limit = cfg.held_timeout_seconds if held else cfg.unknown_timeout_seconds
                if self._stuck(trackers, stamp, now, limit):
                    what = "held" if held else "in Unknown"
                    reason = f"{what} for more than {limit:.0f}s"
                    if result.reason:
                        reason += f": {result.reason}"
                    updates[stamp] = PilotMetadata(
                        status=PilotStatus.ABORTED, status_reason=reason[:255]
                    )
                    to_kill.append(result.reference)
                    trackers.pop(stamp, None)
                    outcome.aborted += 1
                    continue
                live_counts[current.value] = live_counts.get(current.value, 0) + 1
                if held or new == current:
                    continue
            else:
                self._unknown_since.pop(stamp, None)
                self._held_since.pop(stamp, None)
            if new in FINAL_STATUSES and stamp in killed_by_us:
                continue  # our kill of an earlier cycle: its request records the end
            if new in FINAL_STATUSES:
                ended_now.add(stamp)
                if new in (PilotStatus.FAILED, PilotStatus.ABORTED):
                    ended_badly[result.reference] = stamp
                meta: dict[str, Any] = {"status": new}
                if result.reason:
                    meta["status_reason"] = result.reason[:255]
                updates[stamp] = PilotMetadata(**meta)
                ended.append(result.reference)
                if new == PilotStatus.ABORTED:
                    aborted_by_ce.append(result.reason or result.ce_state)
                continue
            live_counts[new.value] = live_counts.get(new.value, 0) + 1
            if new != current and _RANK.get(new, 0) > _RANK.get(current, 0):
                updates[stamp] = PilotMetadata(status=new)
        if updates:
            await context.server().patch_metadata(updates)
        outcome.updated = len(updates)
        if to_kill:
            await ce.kill(to_kill)
            context.metrics.aborted.labels(ref.key).inc(len(to_kill))
        if aborted_by_ce:
            reason = f"pilots aborted on the CE: {aborted_by_ce[0]}"
            rest = context.backoff.failure(ref.key, reason)
            log.warning("queue %s: backing off %.0fs: %s", ref.key, rest, reason)
        for status in LIVE_STATUSES:
            context.metrics.live_pilots.labels(ref.key, status).set(live_counts.get(status, 0))
        outcome.aborted += await self.requests.kill(ref, ce, pending.kills, live_pilots, ended_now)
        hold = await self.requests.outputs(ref, ce, pending.outputs, ended_badly)
        if cfg.clean_finished and pending.complete:
            outcome.cleaned = await self._clean(
                ref,
                ce,
                spec,
                [r for r in ended if r not in hold],
                by_reference,
                live_pilots,
                hold,
                pending.waiting_outputs,
            )

    async def _clean(
        self,
        ref: QueueRef,
        ce: ComputingElement,
        spec: QueueSpec,
        ended: list[str],
        by_reference: dict[str, LivePilot],
        live_pilots: list[LivePilot],
        hold: AbstractSet[str] = frozenset(),
        waiting_outputs: AbstractSet[str] = frozenset(),
    ) -> int:
        """Remove CE leftovers: jobs that ended now, and ended jobs the server has as final.

        An ended job whose pilot the server still has as live without its reference (a crash
        between submission and the references' PATCH) is left for the reconciliation to
        register: cleaning it first would make that pilot look never submitted. Jobs whose
        output is still to fetch (`hold`, by reference; `waiting_outputs`, by stamp) are kept."""
        leftovers = set(ended)
        live_stamps = {pilot.stamp for pilot in live_pilots}
        for other in sibling_ids(ref):  # other VOs' live jobs on this CE queue: not leftovers
            others = await self.context.server().live_pilots(other)
            live_stamps.update(pilot.stamp for pilot in others)
        ended_badly: dict[str, str] = {}
        try:
            for job in await ce.list_jobs(spec):
                if (
                    job.status in FINAL_STATUSES
                    and job.reference not in by_reference
                    and job.stamp not in live_stamps
                    and job.reference not in hold
                    and job.stamp not in waiting_outputs
                ):
                    leftovers.add(job.reference)
                    if job.reference not in ended and job.status in _ENDED_BADLY:
                        ended_badly[job.reference] = job.stamp
        except CEError as exc:
            log.info("queue %s: cannot list CE jobs for cleaning: %s", ref.key, exc)
        if ended_badly:
            # The pilot's own report (the wrapper's Failed) can reach the server before its
            # job ends on the CE: such a pilot is no longer followed, so its output is fetched
            # here, before its job is cleaned.
            leftovers -= await self.requests.outputs(ref, ce, (), ended_badly)
        if not leftovers:
            return 0
        results = await ce.clean(sorted(leftovers))
        return sum(1 for result in results if result.ok)
