"""FakeCE: a computing element that times out, errors or lies, for the fault tests.

It mirrors `director.ce.base.ComputingElement` (same methods, same result types) and keeps its
jobs in memory. Nothing real can be made to misbehave on demand like this on loopback: a real
CE that hangs, refuses or reports jobs it does not have is what the director meets in
production, and what these tests need to reproduce exactly.

Modes:
- "hang"   submit never answers (a CE whose connection hangs after the request was sent);
           the rest answers at once with nothing.
- "error"  every call raises CETemporaryError (a CE that is down).
- "liar"   submit says yes but keeps nothing; list_jobs reports a job nobody submitted;
           status says each job it accepted is unknown.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

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
from director.errors import CETemporaryError
from server.models import PilotStatus

Mode = Literal["hang", "error", "liar"]


class FakeCE(ComputingElement):
    kind = "fake"

    def __init__(self, mode: Mode, *, renderer: Any = None, work_dir: Path | None = None) -> None:
        self.mode = mode
        self.calls: list[str] = []
        self.phantom = secrets.token_hex(16)

    def _enter(self, name: str) -> None:
        self.calls.append(name)
        if self.mode == "error":
            raise CETemporaryError(f"fake CE down ({name})", category="unreachable")

    async def load(self, queue: QueueSpec) -> CELoad:
        self._enter("load")
        return CELoad(running=0, waiting=0)

    async def submit(
        self, queue: QueueSpec, pilots: Sequence[PilotSubmission]
    ) -> list[SubmitResult]:
        self._enter("submit")
        if self.mode == "hang":
            await asyncio.Event().wait()
        return [SubmitResult(p.stamp, reference=f"fake:{p.stamp}") for p in pilots]

    async def status(self, references: Sequence[str]) -> list[StatusResult]:
        self._enter("status")
        return [
            StatusResult(r, PilotStatus.ABORTED, ce_state="unknown", reason="no such job")
            for r in references
        ]

    async def output(self, reference: str) -> PilotOutput:
        self._enter("output")
        return PilotOutput(reference, "", "")

    async def kill(self, references: Sequence[str]) -> list[ActionResult]:
        self._enter("kill")
        return [ActionResult(r) for r in references]

    async def clean(self, references: Sequence[str]) -> list[ActionResult]:
        self._enter("clean")
        return [ActionResult(r) for r in references]

    async def list_jobs(self, queue: QueueSpec) -> list[CEJob]:
        self._enter("list_jobs")
        if self.mode == "liar":
            return [CEJob(f"fake:{self.phantom}", self.phantom, PilotStatus.RUNNING)]
        return []

    def describe(self, queue: QueueSpec, pilots: Sequence[PilotSubmission]) -> dict[str, str]:
        return {"fake.txt": "".join(f"{p.stamp}\n" for p in pilots)}
