"""Operators' requests carried out in the monitoring step: kills, and pilots' CE output fetched
and uploaded (on request, and on its own when a pilot ends Failed or Aborted).

Kills. The pending kill requests are read once per monitoring cycle; each queue takes those of
its pilots. A request of a pilot already final (or that the CE reports ended in this cycle,
before anyone asked it to) is `already_ended`; the others are reported `in_progress`, killed at
the CE in one bulk call, then reported `done` (the server ends the pilot Aborted, "killed by
<who>: <why>": the monitoring does not patch its status itself), `retry` with the CE's error
when it is temporary (the server backs the request off), or `failed` when it is permanent.

Crash safety: `in_progress` is recorded before the CE kill, so a director killed between the CE
kill and the outcome finds the request still open at its next start. A kill is idempotent (a
job already gone is a success), so it kills again and reports `done`; a pilot whose request is
`in_progress` and that the CE reports ended is taken as killed by us, not patched as ended.

Outputs. `ce.output(reference)` is called before the pilot is cleaned from the CE; each stream
is cut to `director.pilot_output.max_bytes` (its tail) and uploaded. When the CE has nothing
(both streams empty) or refuses for good, `not_available` with the reason is uploaded (the
server records it once, and it closes the pilot's open output request). A temporary error is a
`retry` of a request, or another try at the next cycle for an automatic fetch, up to
`director.pilot_output.attempts` cycles. Until then the pilot is not cleaned. The automatic
tries are kept in memory: a restart forgets them (the pilot is then cleaned as before).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from director.batching import chunks
from director.ce.base import ComputingElement
from director.client import LivePilot, QueueId
from director.config import QueueRef
from director.cycle.context import CycleContext
from director.errors import CEError, CEPermanentError, CETemporaryError, ServerError
from server.models import (
    FINAL_STATUSES,
    PilotOutputUpload,
    PilotRequest,
    PilotStatus,
    RequestOutcome,
    RequestOutcomes,
    RequestState,
)

log = logging.getLogger(__name__)

OUTCOMES_PER_CALL = 1000
"""The most outcomes one PATCH carries (the server's limit)."""
NO_OUTPUT = "the CE has no output of this job (unknown to it, or cleaned)"


def _final(status: str | None) -> bool:
    """A pilot status the server records as final (None: the pilot was purged)."""
    if status is None:
        return True
    try:
        return PilotStatus(status) in FINAL_STATUSES
    except ValueError:
        return False


def reason(text: str, default: str) -> str:
    """`text` as the server takes a reason: one line, no control characters, at most 255."""
    line = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return line[:255] or default


def tail(text: str, max_bytes: int) -> str:
    """The last `max_bytes` bytes of `text` as UTF-8 (a character cut in two is dropped)."""
    data = text.encode("utf-8", "replace")
    if len(data) <= max_bytes:
        return text
    return data[-max_bytes:].decode("utf-8", "ignore")


@dataclass
class Pending:
    """The requests read at the start of a monitoring cycle."""

    kills: list[PilotRequest] = field(default_factory=list)
    """Kill requests due now."""
    outputs: list[PilotRequest] = field(default_factory=list)
    """Output requests due now."""
    waiting_outputs: set[str] = field(default_factory=set)
    """Stamps of the pilots with an open output request that is not due yet (backed off):
    not cleaned from the CE meanwhile."""
    complete: bool = True
    """False when the server could not be asked: nothing is cleaned this cycle (a pending
    output request might be lost)."""

    def of_queue(self, queue: QueueId) -> Pending:
        def ours(request: PilotRequest) -> bool:
            where = (request.site, request.ce, request.queue)
            vo = getattr(queue, "vo", request.vo)  # the queue's VO, where the ids carry it
            return where == (queue.site, queue.ce, queue.queue) and request.vo == vo

        return Pending(
            kills=[r for r in self.kills if ours(r)],
            outputs=[r for r in self.outputs if ours(r)],
            waiting_outputs=self.waiting_outputs,
            complete=self.complete,
        )


@dataclass
class _AutoFetch:
    stamp: str
    tries: int = 0


class PilotRequests:
    """Carries out kill and output requests; remembers the automatic output fetches to retry."""

    def __init__(self, context: CycleContext) -> None:
        self.context = context
        self._auto: dict[str, dict[str, _AutoFetch]] = {}
        """queue key -> CE reference -> the pilot whose output is still to fetch"""

    async def pending(self) -> Pending:
        """The requests to carry out in this cycle (one read of each list for every queue)."""
        server = self.context.server()
        try:
            kills = await server.list_requests("kill", state="pending")
            outputs = await server.list_requests("output", state="pending")
            due = {request.request_id for request in outputs}
            waiting = {
                request.pilot_stamp
                for request in await server.list_requests("output", state="open")
                if request.request_id not in due
            }
        except ServerError as exc:
            log.warning("monitoring: cannot read kill and output requests: %s", exc)
            return Pending(complete=False)
        return Pending(kills, outputs, waiting)

    async def _record(self, kind: str, outcomes: Sequence[RequestOutcome]) -> None:
        for piece in chunks(outcomes, OUTCOMES_PER_CALL):
            await self.context.server().record_outcomes(kind, RequestOutcomes(outcomes=list(piece)))

    # --- kills ----------------------------------------------------------------------------------

    @staticmethod
    def killed_by_us(pending: Pending) -> set[str]:
        """Stamps whose kill was sent in an earlier attempt (request `in_progress`): a CE
        status saying they ended is the kill's doing, for the kill request to record."""
        return {r.pilot_stamp for r in pending.kills if r.state == RequestState.IN_PROGRESS}

    async def kill(
        self,
        ref: QueueRef,
        ce: ComputingElement,
        requests: Sequence[PilotRequest],
        live_pilots: Iterable[LivePilot],
        ended_now: set[str],
    ) -> int:
        """Carry out the queue's kill requests; `ended_now`: stamps the CE reported ended in
        this cycle (patched by the monitoring). Returns how many pilots were killed."""
        if not requests:
            return 0
        live = {pilot.stamp: pilot for pilot in live_pilots}
        outcomes: list[RequestOutcome] = []
        to_kill: dict[str, PilotRequest] = {}
        for request in requests:
            pilot = live.get(request.pilot_stamp)
            if pilot is None and _final(request.pilot_status):
                outcomes.append(
                    RequestOutcome(request_id=request.request_id, outcome="already_ended")
                )
            elif pilot is None or pilot.reference is None:
                outcomes.append(
                    RequestOutcome(
                        request_id=request.request_id,
                        outcome="retry",
                        error="the pilot has no CE job yet",
                    )
                )
            elif pilot.stamp in ended_now:
                outcomes.append(
                    RequestOutcome(request_id=request.request_id, outcome="already_ended")
                )
            else:
                to_kill[pilot.reference] = request
        if to_kill:
            await self._record(
                "kill",
                [
                    RequestOutcome(request_id=r.request_id, outcome="in_progress")
                    for r in to_kill.values()
                ],
            )
        killed = 0
        if to_kill:
            try:
                results = await ce.kill(list(to_kill))
            except CEError as exc:
                outcome = "failed" if isinstance(exc, CEPermanentError) else "retry"
                log.warning("queue %s: kill failed (%s): %s", ref.key, outcome, exc)
                outcomes.extend(
                    RequestOutcome(request_id=r.request_id, outcome=outcome, error=str(exc)[:255])
                    for r in to_kill.values()
                )
            else:
                for result in results:
                    request = to_kill[result.reference]
                    if result.ok:
                        killed += 1
                        outcomes.append(
                            RequestOutcome(request_id=request.request_id, outcome="done")
                        )
                    else:
                        outcomes.append(
                            RequestOutcome(
                                request_id=request.request_id,
                                outcome="retry" if result.temporary else "failed",
                                error=(result.error or "kill failed")[:255],
                            )
                        )
        if outcomes:
            await self._record("kill", outcomes)
        if killed:
            log.info("queue %s: %d pilots killed on request", ref.key, killed)
            self.context.metrics.aborted.labels(ref.key).inc(killed)
        return killed

    # --- outputs --------------------------------------------------------------------------------

    async def outputs(
        self,
        ref: QueueRef,
        ce: ComputingElement,
        requests: Sequence[PilotRequest],
        ended_badly: dict[str, str],
    ) -> set[str]:
        """Fetch and upload the output of the pilots that ended Failed or Aborted in this cycle
        (`ended_badly`: CE reference -> stamp), of those still to retry, and of the queue's
        output requests. Returns the CE references not to clean yet."""
        auto = self._auto.setdefault(ref.key, {})
        for ended_reference, stamp in ended_badly.items():
            auto.setdefault(ended_reference, _AutoFetch(stamp))
        hold: set[str] = set()
        outcomes: list[RequestOutcome] = []
        for request in requests:
            reference = request.pilot_reference
            if reference is None:
                outcomes.append(
                    RequestOutcome(
                        request_id=request.request_id,
                        outcome="failed",
                        error="the pilot has no CE job",
                    )
                )
                continue
            auto.pop(reference, None)  # the request covers it
            error = await self._fetch(ref, ce, reference, request.pilot_stamp)
            if error is not None:
                hold.add(reference)
                outcomes.append(
                    RequestOutcome(request_id=request.request_id, outcome="retry", error=error)
                )
        for reference, fetch in list(auto.items()):
            error = await self._fetch(ref, ce, reference, fetch.stamp)
            if error is None:
                del auto[reference]
                continue
            fetch.tries += 1
            if fetch.tries >= self.context.settings.director.pilot_output.attempts:
                log.warning(
                    "queue %s: output of pilot %s not fetched after %d tries: %s",
                    ref.key,
                    fetch.stamp,
                    fetch.tries,
                    error,
                )
                del auto[reference]
            else:
                hold.add(reference)
        if outcomes:
            await self._record("output", outcomes)
        return hold

    async def _fetch(
        self, ref: QueueRef, ce: ComputingElement, reference: str, stamp: str
    ) -> str | None:
        """Fetch one pilot's output and upload it (or why there is none); the error when it
        is worth another try, None when done."""
        max_bytes = self.context.settings.director.pilot_output.max_bytes
        try:
            output = await ce.output(reference)
        except CETemporaryError as exc:
            return reason(str(exc), "CE unavailable")
        except CEPermanentError as exc:
            body = PilotOutputUpload(pilot_stamp=stamp, not_available=reason(str(exc), NO_OUTPUT))
        except CEError as exc:
            return reason(str(exc), "CE error")
        else:
            if not output.stdout and not output.stderr:
                body = PilotOutputUpload(pilot_stamp=stamp, not_available=NO_OUTPUT)
            else:
                body = PilotOutputUpload(
                    pilot_stamp=stamp,
                    std_output=tail(output.stdout, max_bytes),
                    std_error=tail(output.stderr, max_bytes),
                )
        try:
            await self.context.server().upload_output(body)
        except ServerError as exc:
            log.warning("queue %s: output of pilot %s not uploaded: %s", ref.key, stamp, exc)
            return reason(f"upload: {exc}", "upload failed")
        return None
