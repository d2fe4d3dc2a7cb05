"""SinkCE: a computing element that accepts every submission in memory, for the director
benchmark. It stands in for a CE so the benchmark measures the director and the server, not a
batch system; it keeps each job's stamp, queue and wrapper size (not the wrapper: a real CE
takes its copy away), and answers load, status and list_jobs from that.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

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
    jobs: dict[str, tuple[str, str]] = field(default_factory=dict)  # reference -> (queue, stamp)


class SinkCE(ComputingElement):
    kind = "sink"

    def __init__(self, name: str, stats: SinkStats) -> None:
        self.name = name
        self.stats = stats
        self._by_queue: dict[str, list[str]] = {}

    def _key(self, queue: QueueSpec) -> str:
        return f"{queue.site}/{queue.ce}/{queue.name}"

    async def load(self, queue: QueueSpec) -> CELoad:
        return CELoad(running=0, waiting=len(self._by_queue.get(self._key(queue), [])))

    async def submit(
        self, queue: QueueSpec, pilots: Sequence[PilotSubmission]
    ) -> list[SubmitResult]:
        started = time.perf_counter()
        key = self._key(queue)
        refs = self._by_queue.setdefault(key, [])
        results = []
        for pilot in pilots:
            reference = f"sink://{self.name}/{self.stats.submitted}"
            self.stats.submitted += 1
            self.stats.wrapper_bytes += len(pilot.wrapper)
            self.stats.jobs[reference] = (key, pilot.stamp)
            refs.append(reference)
            results.append(SubmitResult(pilot.stamp, reference=reference))
        self.stats.calls += 1
        self.stats.submit_seconds += time.perf_counter() - started
        return results

    async def status(self, references: Sequence[str]) -> list[StatusResult]:
        return [
            StatusResult(r, PilotStatus.WAITING if r in self.stats.jobs else PilotStatus.ABORTED)
            for r in references
        ]

    async def output(self, reference: str) -> PilotOutput:
        return PilotOutput(reference, "", "")

    async def kill(self, references: Sequence[str]) -> list[ActionResult]:
        return [ActionResult(r) for r in references]

    async def clean(self, references: Sequence[str]) -> list[ActionResult]:
        return [ActionResult(r) for r in references]

    async def list_jobs(self, queue: QueueSpec) -> list[CEJob]:
        key = self._key(queue)
        return [
            CEJob(r, self.stats.jobs[r][1], PilotStatus.WAITING)
            for r in self._by_queue.get(key, [])
        ]

    def describe(self, queue: QueueSpec, pilots: Sequence[PilotSubmission]) -> dict[str, str]:
        return {}
