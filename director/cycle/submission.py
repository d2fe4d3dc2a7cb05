"""The submission cycle, in four phases, so that the server sees a few bulk calls per cycle
rather than a few per queue (1,000 queues: five calls, not 3,000), while each queue is still
bounded by `director.queue_timeout_seconds` where it talks to its CE, so a slow CE never holds
the others up for longer than that:

0. skip the queues whose site, CE or themselves are disabled, that are backed off, whose lease
   another director holds, or that a ban covers (one `GET /api/bans` per cycle, none when no
   queue took a lease; no list, no submission: `director.bans`); read the empty-pilot counts
   (`throttles`, `director.empty_pilots`); then one search (per `SEARCH_QUEUES` queues) for
   the live pilots of the others that have no CE reference yet, grouped per queue;
1. plan, per queue, concurrently up to `director.concurrency`: reconcile (`reconcile`), count
   waiting and running pilots from the CE, or from the server's records when the CE cannot
   tell; demand from the configured source; n = min(slots, demand) (`director.slots`),
   scaled by the queue's empty-pilot factor (`director.empty_pilots.apply_factor`);
   (the n stamps are made when the queue's group starts);
2. register + mint (`registration.register`): one server call per VO (per `BULK_MAX` pilots)
   registering every planned pilot and minting one bound secret each, before anything is
   submitted; a failed call fails the queues it carried (they submit next cycle);
3. submit, per queue, concurrently: n wrappers, one bulk submission to the CE;
4. record (`registration.record`): one call revoking the secrets of the pilots that failed,
   then one PATCH (per `BULK_MAX`) with every reference, and every failed pilot Aborted with
   the CE's reason; a queue whose submission failed backs off. A queue that failed after
   phase 2 but before its CE call has its pilots Aborted here too; one that failed during its
   CE call (a timeout) is left to the next reconciliation, which asks the CE what it holds.

Phases 2-4 run per group of whole queues of at most `director.group_pilots` pilots (10,000),
group k+1 registering while group k submits and is recorded (`_in_groups`), so the director's
memory is bounded by two groups, not by the number of queues; a queue planning more pilots
than a group holds is capped at it (`registration.group_batches`).

After the queues, the queue report goes to the server (`report`).

The dry run is this cycle without the server's side effects: no lease, no registration, no
secret (a placeholder goes into the wrappers), no submission. It writes the wrappers and the
CE's submit descriptions under the output folder.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TypeVar

from director.bans import BanList
from director.ce.base import ComputingElement, PilotSubmission, SubmitResult
from director.client import LivePilot, PilotCounts, QueueId
from director.config import QueueRef
from director.cycle.context import CycleContext
from director.cycle.leases import Leases
from director.cycle.outcomes import QueueOutcome, log_outcome, log_unexpected
from director.cycle.queues import QueueFactory, ce_kind, queue_id, safe_name, spec_for
from director.cycle.reconcile import reconcile
from director.cycle.registration import Batch, group_batches, record, register
from director.cycle.report import QueueReporter
from director.cycle.throttles import Throttles
from director.demand import DemandSource
from director.empty_pilots import apply_factor
from director.errors import CEError, ConfigError, DirectorError, ServerError, ServerUnavailable
from director.gc_pause import collect_cycle_garbage, freeze_planned, long_lived_frozen
from director.slots import Limits, plan

log = logging.getLogger(__name__)
Result = TypeVar("Result")

DRY_RUN_SECRET = "dry-run-placeholder-not-a-secret"  # noqa: S105 - a placeholder


def new_stamp() -> str:
    """32 lowercase hex characters (128 random bits), as DIRAC makes pilot stamps."""
    return secrets.token_hex(16)


class Submission:
    """Runs submission cycles; holds the demand source and the ban list across them."""

    def __init__(
        self,
        context: CycleContext,
        factory: QueueFactory,
        leases: Leases,
        demand: DemandSource,
    ) -> None:
        self.context = context
        self.factory = factory
        self.leases = leases
        self.demand = demand
        self.bans = BanList.from_settings(context.settings)
        """The bans in force, read once per submission cycle (`director.bans`)."""
        self.reporter = QueueReporter(context)
        self.throttles = Throttles(context.settings.director.empty_pilots)
        """Each queue's submission factor from its empty pilots (`director.empty_pilots`)."""

    async def run(
        self, *, dry_run: bool = False, output: Path | None = None, only: str | None = None
    ) -> list[QueueOutcome]:
        """One submission cycle over every queue (or the queue named `only`), in the phases
        the module docstring describes; one outcome per queue, in configuration order."""
        with long_lived_frozen():  # the collector passes over this cycle's objects only
            return await self._run(dry_run=dry_run, output=output, only=only)

    async def _run(
        self, *, dry_run: bool, output: Path | None, only: str | None
    ) -> list[QueueOutcome]:
        context = self.context
        started = context.clock()
        refs = [ref for ref in context.queues if only is None or only in (ref.key, ref.queue)]
        if only is not None and not refs:
            raise ConfigError(f"--queue {only}: no such queue (site/ce/queue or queue name)")
        granted: set[str] = set()
        lease_error = ""
        if not dry_run:
            try:
                granted = await self.leases.take([ref for ref in refs if ref.enabled])
            except ServerError as exc:
                lease_error = f"leases: {exc}"
                log.error("submission cycle: no queue can submit: %s", lease_error)
        if dry_run or granted:
            # no lease, no submission: the bans would not change that, and reading them
            # would log the same refused token or unreachable server a second time
            await self.bans.refresh(context.client, context.queues, dry_run=dry_run)
            await self.throttles.refresh(context.client, context.queues, started)
        try:
            await self.demand.refresh()
        except DirectorError as exc:  # unknown demand: the source's demand() decides (0)
            log.warning("demand source: %s", exc)
        outcomes = [QueueOutcome(queue=ref.key, ce=ref.ce, kind=ce_kind(ref)) for ref in refs]
        todo = [
            (ref, outcome)
            for ref, outcome in zip(refs, outcomes, strict=True)
            if self._may_submit(ref, outcome, granted, lease_error, dry_run)
        ]
        unreferenced: dict[QueueId, list[LivePilot]] = {}
        if todo and not dry_run:
            try:
                unreferenced = await context.server().unreferenced_pilots(
                    queue_id(ref) for ref, _ in todo
                )
            except Exception as exc:  # the server is down: no queue can submit this cycle
                log_unexpected(exc, "reconciliation search")
                log.error("submission cycle: no queue can submit: %s", exc)
                for _, outcome in todo:
                    outcome.error = outcome.why = f"{type(exc).__name__}: {exc}"
                todo = []
        concurrency = context.settings.director.concurrency
        semaphore = asyncio.Semaphore(concurrency)
        planned: list[Batch | None] = [None] * len(todo)
        queue = iter(enumerate(todo))

        async def planner() -> None:
            # `concurrency` planners take the queues in turn, rather than a task per queue
            # waiting on the semaphore: 10,000 tasks and their coroutines were ~7 MB
            for index, (ref, outcome) in queue:
                pilots = unreferenced.get(queue_id(ref), [])
                planned[index] = await self._guarded(
                    semaphore, outcome, functools.partial(self._plan, ref, outcome, pilots, dry_run)
                )

        await asyncio.gather(*(planner() for _ in range(min(concurrency, len(todo)))))
        batches = [batch for batch in planned if batch is not None]
        planned.clear()
        await self._in_groups(batches, semaphore, dry_run, output)
        json_format = context.settings.director.log_format == "json"
        for outcome in outcomes:
            context.metrics.backoff_seconds.labels(outcome.queue).set(
                context.backoff.remaining(outcome.queue)
            )
            log_outcome("submission", outcome, json_format=json_format)
        context.metrics.cycle_seconds.labels("submission").observe(context.clock() - started)
        if not dry_run:
            await self.reporter.report(started, outcomes, self.throttles.throttles())
            context.cycle_done(
                "submission", not any(outcome.error or outcome.failed for outcome in outcomes)
            )
        return outcomes

    async def _in_groups(
        self,
        batches: Sequence[Batch],
        semaphore: asyncio.Semaphore,
        dry_run: bool,
        output: Path | None,
    ) -> None:
        """Phases 2-4 per group of whole queues of at most `director.group_pilots` pilots
        (`group_batches`), in a pipeline: group k+1 registers while group k renders, submits
        and is recorded, so at most two groups' secrets, wrappers and results are alive at
        once. A group not yet registered when the director is told to stop is not submitted."""
        context = self.context
        groups = group_batches(batches, context.settings.director.group_pilots)

        async def registered(group: list[Batch]) -> list[Batch]:
            if context.stopping:
                for batch in group:
                    batch.outcome.why = "stopping"
                return []
            for batch in group:
                batch.stamp(new_stamp)
            if not dry_run:
                await register(context, group)
            return group

        async def submit_one(batch: Batch) -> None:
            await self._guarded(
                semaphore, batch.outcome, lambda: self._submit(batch, dry_run, output)
            )

        freeze_planned()  # the groups' passes skip the plans (`gc_pause` says why)
        following = asyncio.create_task(registered(groups[0])) if groups else None
        try:
            for index in range(len(groups)):
                assert following is not None
                group = await following
                following = (
                    asyncio.create_task(registered(groups[index + 1]))
                    if index + 1 < len(groups)
                    else None
                )
                for batch in group:
                    batch.outcome.stamps = batch.stamps
                await asyncio.gather(
                    *(submit_one(batch) for batch in group if batch.outcome.error is None)
                )
                if not dry_run and group:
                    await record(context, group)
                for batch in group:  # counted: the group's results go
                    batch.results = None
                collect_cycle_garbage()  # its requests and answers, in reference cycles
        finally:
            if following is not None and not following.done():
                # an unexpected error: a group registered but never submitted is Aborted by
                # the reconciliation after `submit_grace_seconds`
                following.cancel()

    def _may_submit(
        self,
        ref: QueueRef,
        outcome: QueueOutcome,
        granted: set[str],
        lease_error: str,
        dry_run: bool,
    ) -> bool:
        """Phase 0 for one queue: whether it takes part in this cycle; if not, `outcome.why`
        says why."""
        backoff = self.context.backoff
        if not ref.enabled:
            outcome.why = "disabled"
        elif self.context.stopping:
            outcome.why = "stopping"
        elif backoff.blocked(ref.key):
            outcome.why = f"backed off {backoff.remaining(ref.key):.0f}s: {backoff.reason(ref.key)}"
        elif not dry_run and lease_error:
            outcome.why = lease_error
            outcome.error = lease_error
        elif not dry_run and ref.key not in granted:
            outcome.why = "lease held by another director"
        elif not dry_run and self.bans.error:
            outcome.why = outcome.error = self.bans.error
        elif (banned := self.bans.why(ref)) is not None:
            outcome.why = banned
        else:
            return True
        return False

    async def _guarded(
        self,
        semaphore: asyncio.Semaphore,
        outcome: QueueOutcome,
        work: Callable[[], Awaitable[Result]],
    ) -> Result | None:
        """One queue's part of a phase, at most `director.concurrency` queues at once, bounded
        by `director.queue_timeout_seconds`: an error or a timeout becomes that queue's outcome
        (None here) and never holds up or fails the other queues."""
        context = self.context
        timeout = context.settings.director.queue_timeout_seconds
        async with semaphore:
            t0 = context.clock()
            try:
                async with asyncio.timeout(timeout):
                    return await work()
            except TimeoutError:
                outcome.error = outcome.why = f"timed out after {timeout:g}s"
                context.backoff.failure(outcome.queue, outcome.error)
            except (ServerError, CEError, ConfigError, OSError) as exc:
                outcome.error = outcome.why = f"{type(exc).__name__}: {exc}"
                if isinstance(exc, CEError):
                    context.backoff.failure(outcome.queue, exc.reason)
            except Exception as exc:
                log.exception("queue %s: unexpected error", outcome.queue)
                outcome.error = outcome.why = f"{type(exc).__name__}: {exc}"
            finally:
                outcome.seconds += context.clock() - t0
        return None

    async def count(
        self, ref: QueueRef, ce: ComputingElement, dry_run: bool, outcome: QueueOutcome
    ) -> PilotCounts:
        """The queue's waiting and running pilots: from the CE, or from the server's records
        when the CE cannot tell (`outcome.counts_from` says which). One VO of a CE queue shared
        by several counts from the server's records, which tell the VOs apart: the CE's
        figures are the whole CE queue's."""
        if not ref.shared:
            try:
                load = await ce.load(spec_for(ref))
            except CEError as exc:
                log.info("queue %s: CE cannot count (%s); counting from the server", ref.key, exc)
            else:
                outcome.counts_from = "ce"
                return PilotCounts(load.waiting, load.running)
        try:
            counts = await self.context.server().pilot_counts(queue_id(ref))
        except ServerUnavailable:
            if not dry_run:
                raise
            outcome.counts_from = "none (no CE count, no server)"
            return PilotCounts(0, 0)
        outcome.counts_from = "server"
        return counts

    async def _plan(
        self,
        ref: QueueRef,
        outcome: QueueOutcome,
        unreferenced: Sequence[LivePilot],
        dry_run: bool,
    ) -> Batch | None:
        """Phase 1 for one queue: reconcile, count, plan; the batch to register and submit, or
        None when the queue wants no pilot now."""
        ce = self.factory.ce_for(ref)
        spec = spec_for(ref)
        if ref.pilot.manifest:
            await self.factory.manifests.refresh(ref.pilot.manifest, self.factory.manifest_ca(ref))
        prepared = self.factory.prepared(ref)
        if not dry_run:
            await reconcile(self.context, ref, ce, spec, unreferenced)
        counts = await self.count(ref, ce, dry_run, outcome)
        outcome.waiting, outcome.running = counts.waiting, counts.running
        demand = self.demand.demand(ref, counts.waiting)
        queue = ref.config
        result = plan(
            Limits(queue.max_total_pilots, queue.max_waiting_pilots, queue.pilots_per_cycle),
            counts.waiting,
            counts.running,
            demand,
        )
        n = apply_factor(result.n, self.throttles.factor(ref))
        outcome.slots, outcome.demand, outcome.n = result.slots, result.demand, n
        outcome.why = result.why
        if n < result.n:
            outcome.why = f"{outcome.why}; {self.throttles.why(ref)}"
        note = self.demand.explain(ref, detail=dry_run)  # which jobs the demand came from
        if note:
            outcome.why = f"{outcome.why}; {note}"
        if n == 0:
            return None
        if self.context.stopping:
            outcome.why = "stopping"
            return None
        return Batch(ref, outcome, ce, spec, prepared, n)

    async def _submit(self, batch: Batch, dry_run: bool, output: Path | None) -> None:
        """Phase 3 for one queue: render its wrappers and submit them in one CE call (or write
        them out, in the dry run)."""
        if dry_run:
            if output is not None:
                self._write_dry_run(batch, output)
            return
        try:
            submissions = [
                PilotSubmission(stamp, batch.prepared.render(stamp, batch.secrets[stamp]))
                for stamp in batch.stamps
            ]
        finally:
            batch.prepared.release()  # its JSON is made again next cycle: memory per group
        batch.secrets.clear()
        batch.submitting = True
        try:
            batch.results = await batch.ce.submit(batch.spec, submissions)
        except CEError as exc:
            batch.results = [
                SubmitResult(stamp, error=exc.reason, temporary=exc.temporary)
                for stamp in batch.stamps
            ]
        del submissions

    @staticmethod
    def _write_dry_run(batch: Batch, output: Path) -> None:
        """The wrappers (with a placeholder secret) and the CE's submit descriptions, under
        `output/site/ce/queue/`."""
        ref = batch.ref
        folder = output / safe_name(ref.site) / safe_name(ref.ce) / safe_name(ref.queue)
        folder.mkdir(parents=True, exist_ok=True)
        try:
            pilots = [
                PilotSubmission(stamp, batch.prepared.render(stamp, DRY_RUN_SECRET))
                for stamp in batch.stamps
            ]
        finally:
            batch.prepared.release()
        for pilot in pilots:
            path = folder / f"{pilot.stamp}.sh"
            path.write_text(pilot.wrapper)
            path.chmod(0o700)
        for name, text in batch.ce.describe(batch.spec, pilots).items():
            (folder / safe_name(name)).write_text(text)
