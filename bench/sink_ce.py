"""SinkCE: a computing element that accepts every submission in memory, for the director
benchmark. It stands in for a CE so the benchmark measures the director and the server, not a
batch system; it keeps each job's stamp and queue and counts the wrappers' bytes (not the
wrapper: a real CE takes its copy away), and answers load, status and list_jobs from that.

It runs in the director's process, so what it keeps counts in the director's peak RSS: a job is
a slot in its queue's list of stamps (the director's own string), its reference is made from its
number when asked for. Holding a reference string and a dict entry per job, as it first did,
cost ~20 MB of the director's RSS at 100,000 pilots.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from director.ce.base import (
    ActionResult,
    CEJob,
    CELoad,
    ComputingElement,
    PilotOutput,
    PilotSubmission,
    QueueSpec,
    StatusResult,
    SubmitResult,
)
from server.models import PilotStatus


@dataclass
class SinkStats:
    """Shared by every SinkCE of a run: what was submitted and the time spent in submit()."""

    submitted: int = 0
    wrapper_bytes: int = 0
    submit_seconds: float = 0.0
    calls: int = 0


class SinkCE(ComputingElement):
    kind = "sink"

    def __init__(self, name: str, stats: SinkStats) -> None:
        self.name = name
        self.stats = stats
        self._prefix = f"sink://{name}/"
        self._by_queue: dict[str, list[tuple[int, list[str]]]] = {}
        """Queue -> runs of jobs, one per submit call: (first job number, stamps)."""
        self._jobs = 0

    def _key(self, queue: QueueSpec) -> str:
        return f"{queue.site}/{queue.ce}/{queue.name}"

    def _reference(self, number: int) -> str:
        return f"{self._prefix}{number}"

    def _number(self, reference: str) -> int | None:
        if not reference.startswith(self._prefix):
            return None
        number = reference[len(self._prefix) :]
        return int(number) if number.isdigit() else None

    async def load(self, queue: QueueSpec) -> CELoad:
        runs = self._by_queue.get(self._key(queue), [])
        return CELoad(running=0, waiting=sum(len(stamps) for _, stamps in runs))

    async def submit(
        self, queue: QueueSpec, pilots: Sequence[PilotSubmission]
    ) -> list[SubmitResult]:
        started = time.perf_counter()
        first = self._jobs
        stamps = [pilot.stamp for pilot in pilots]
        self._by_queue.setdefault(self._key(queue), []).append((first, stamps))
        self._jobs += len(stamps)
        results = []
        for number, pilot in enumerate(pilots, first):
            self.stats.wrapper_bytes += len(pilot.wrapper)
            results.append(SubmitResult(pilot.stamp, reference=self._reference(number)))
        self.stats.submitted += len(stamps)
        self.stats.calls += 1
        self.stats.submit_seconds += time.perf_counter() - started
        return results

    async def status(self, references: Sequence[str]) -> list[StatusResult]:
        def known(reference: str) -> bool:
            number = self._number(reference)
            return number is not None and number < self._jobs

        return [
            StatusResult(r, PilotStatus.WAITING if known(r) else PilotStatus.ABORTED)
            for r in references
        ]

    async def output(self, reference: str) -> PilotOutput:
        return PilotOutput(reference, "", "")

    async def kill(self, references: Sequence[str]) -> list[ActionResult]:
        return [ActionResult(r) for r in references]

    async def clean(self, references: Sequence[str]) -> list[ActionResult]:
        return [ActionResult(r) for r in references]

    async def list_jobs(self, queue: QueueSpec) -> list[CEJob]:
        return [
            CEJob(self._reference(number), stamp, PilotStatus.WAITING)
            for first, stamps in self._by_queue.get(self._key(queue), [])
            for number, stamp in enumerate(stamps, first)
        ]

    def describe(self, queue: QueueSpec, pilots: Sequence[PilotSubmission]) -> dict[str, str]:
        return {}
