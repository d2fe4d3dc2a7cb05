"""The local CE: each pilot wrapper runs as a real `sh` process on this machine.

It is what the tests and the demo submit to, and a reasonable CE for a single worker host. Each
job lives in its own directory under the CE's work dir:

    <work_dir>/jobs/<stamp>/
        job.json     reference, stamp, queue, submission time, pid and process start ticks
        pilot.sh     the wrapper (mode 0600: it holds the pilot's secret); removed once ended
        work/        the wrapper's working directory
        stdout, stderr
        exit_code    written by the job's own shell when the wrapper ends
        killed       marker written before the job is signalled

Everything the CE knows is on disk and the exit code is written by the job itself, so a director
that crashed and restarted finds its jobs again (running ones by pid and start time, ended ones
by their exit code). Jobs run in their own session, so they survive the director. At most
`slots` jobs run at once; the others wait in submission order and start when a slot frees up
(on the next call into the CE).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

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
from director.ce.credentials import CredentialSource
from director.errors import CEPermanentError, CETemporaryError
from director.render import TemplateRenderer
from server.models import PilotStatus

log = logging.getLogger(__name__)

REFERENCE_PREFIX = "local:"
KILL_GRACE_SECONDS = 10.0
OUTPUT_LIMIT = 1024 * 1024

# The job's own shell: runs the wrapper, then records its exit code atomically. The wrapper's
# shell is passed as $1 so no configured value is ever spliced into a command line.
_JOB_SCRIPT = (
    'cd work || exit 111; "$1" ../pilot.sh >../stdout 2>../stderr; rc=$?; '
    'echo "$rc" >../exit_code.tmp && mv ../exit_code.tmp ../exit_code'
)


def local_status(started: bool, exit_code: int | None, killed: bool) -> PilotStatus:
    """A local process -> pilot status: its exit code says Done or Failed, a kill Aborted."""
    if killed:
        return PilotStatus.ABORTED
    if not started:
        return PilotStatus.WAITING
    if exit_code is None:
        return PilotStatus.RUNNING
    return PilotStatus.DONE if exit_code == 0 else PilotStatus.FAILED


class LocalCEConfig(BaseModel):
    """`ce: {kind: local, ...}`: processes on this host."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["local"] = "local"
    slots: int = Field(4, ge=1, le=4096, description="jobs running at once on this host")
    shell: str = Field("/bin/sh", min_length=1, description="runs each wrapper")
    inherit_environment: list[str] = Field(
        default_factory=lambda: ["PATH", "HOME", "LANG", "LC_ALL", "TMPDIR"],
        description="variables of the director's environment a job inherits",
    )


@dataclass
class _Job:
    reference: str
    stamp: str
    queue: str
    directory: Path
    submitted_at: float
    pid: int | None = None
    start_ticks: str | None = None
    started_at: float | None = None

    def save(self) -> None:
        data = {k: v for k, v in self.__dict__.items() if k != "directory"}
        tmp = self.directory / "job.json.tmp"
        tmp.write_text(json.dumps(data))
        tmp.replace(self.directory / "job.json")

    @classmethod
    def load(cls, directory: Path) -> _Job | None:
        try:
            data = json.loads((directory / "job.json").read_text())
            return cls(directory=directory, **data)
        except (OSError, ValueError, TypeError):
            return None

    @property
    def exit_code(self) -> int | None:
        try:
            return int((self.directory / "exit_code").read_text().strip())
        except (OSError, ValueError):
            return None

    @property
    def killed_at(self) -> float | None:
        try:
            return float((self.directory / "killed").read_text().strip() or 0)
        except (OSError, ValueError):
            return None


def _queue_key(queue: QueueSpec) -> str:
    return f"{queue.site}/{queue.ce}/{queue.name}"


def _not_ours(reference: str) -> str:
    return f"not a local CE job reference: {reference!r}"


def _proc_start_ticks(pid: int) -> str | None:
    """The process's start time in clock ticks (field 22 of /proc/pid/stat): tells a reused pid
    from ours. None when the process does not exist or is a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    if not fields or fields[0] in ("Z", "X"):
        return None
    return fields[19]


class LocalCE(ComputingElement):
    """Runs wrappers as local processes; see the module docstring for the on-disk layout."""

    kind = "local"

    def __init__(
        self,
        config: LocalCEConfig,
        *,
        renderer: TemplateRenderer,
        work_dir: Path,
        credentials: CredentialSource | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`credentials` is unused: local processes need none."""
        self.config = config
        self.renderer = renderer
        self.work_dir = work_dir
        self.jobs_dir = work_dir / "jobs"
        self._clock = clock
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    # --- the on-disk job table ----------------------------------------------------------------

    def _ensure_dirs(self) -> None:
        try:
            self.jobs_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise CETemporaryError(f"cannot create {self.jobs_dir}: {exc}") from exc

    def _job_dir(self, reference: str) -> Path | None:
        if not reference.startswith(REFERENCE_PREFIX):
            return None
        name = reference[len(REFERENCE_PREFIX) :]
        if not name or "/" in name or name.startswith("."):
            return None
        return self.jobs_dir / name

    def _all_jobs(self) -> list[_Job]:
        if not self.jobs_dir.is_dir():
            return []
        jobs = [job for d in self.jobs_dir.iterdir() if (job := _Job.load(d)) is not None]
        jobs.sort(key=lambda j: (j.submitted_at, j.reference))
        return jobs

    def _alive(self, job: _Job) -> bool:
        if job.pid is None:
            return False
        child = self._children.get(job.reference)
        if child is not None and child.poll() is not None:
            del self._children[job.reference]  # reaped
        ticks = _proc_start_ticks(job.pid)
        return ticks is not None and ticks == job.start_ticks

    def _state(self, job: _Job) -> tuple[PilotStatus, str, str, int | None]:
        """(status, CE word, reason, exit code) of one job, from disk and /proc."""
        exit_code = job.exit_code
        killed = job.killed_at is not None
        if exit_code is not None:
            status = local_status(True, exit_code, killed=False)
            return status, "exited", f"exit code {exit_code}", exit_code
        if killed:
            return PilotStatus.ABORTED, "killed", "killed", None
        if job.pid is None:
            return local_status(False, None, False), "queued", "", None
        if self._alive(job):
            return local_status(True, None, False), "running", "", None
        return PilotStatus.ABORTED, "vanished", "process ended without an exit code", None

    def _refresh(self) -> list[_Job]:
        """Start queued jobs while slots are free, escalate kills, drop ended wrappers."""
        jobs = self._all_jobs()
        running = 0
        queued: list[_Job] = []
        now = self._clock()
        for job in jobs:
            status, word, _, _ = self._state(job)
            if word == "running":
                running += 1
            elif word == "queued":
                queued.append(job)
            elif word == "killed" and job.pid is not None and self._alive(job):
                running += 1
                killed_at = job.killed_at or now
                if now - killed_at > KILL_GRACE_SECONDS:
                    self._signal(job, signal.SIGKILL)
            if status in (PilotStatus.DONE, PilotStatus.FAILED, PilotStatus.ABORTED):
                with contextlib.suppress(OSError):
                    (job.directory / "pilot.sh").unlink(missing_ok=True)
        for job in queued[: max(0, self.config.slots - running)]:
            self._start(job)
        return jobs

    def _environment(self, job: _Job) -> dict[str, str]:
        env = {k: os.environ[k] for k in self.config.inherit_environment if k in os.environ}
        env.update(json.loads((job.directory / "env.json").read_text()))
        return env

    def _start(self, job: _Job) -> None:
        try:
            child = subprocess.Popen(
                [self.config.shell, "-c", _JOB_SCRIPT, "local-ce", self.config.shell],
                cwd=job.directory,
                env=self._environment(job),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as exc:
            log.warning("local CE: cannot start %s: %s", job.reference, exc)
            (job.directory / "stderr").write_text(f"local CE: cannot start: {exc}\n")
            (job.directory / "exit_code").write_text("127\n")
            return
        self._children[job.reference] = child
        job.pid = child.pid
        job.start_ticks = _proc_start_ticks(child.pid)
        job.started_at = self._clock()
        job.save()

    def _signal(self, job: _Job, sig: signal.Signals) -> None:
        if job.pid is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(job.pid, sig)

    # --- the CE contract ----------------------------------------------------------------------

    async def load(self, queue: QueueSpec) -> CELoad:
        # no folder is made here: the dry run counts too, and writes nothing outside --output
        jobs = self._refresh()
        key = _queue_key(queue)
        running = waiting = busy = 0
        for job in jobs:
            status = self._state(job)[0]
            live = status in (PilotStatus.WAITING, PilotStatus.RUNNING)
            busy += live
            if job.queue == key and status == PilotStatus.WAITING:
                waiting += 1
            elif job.queue == key and status == PilotStatus.RUNNING:
                running += 1
        return CELoad(running=running, waiting=waiting, free_slots=max(0, self.config.slots - busy))

    async def submit(
        self, queue: QueueSpec, pilots: Sequence[PilotSubmission]
    ) -> list[SubmitResult]:
        self._ensure_dirs()
        results: list[SubmitResult] = []
        key = _queue_key(queue)
        for pilot in pilots:
            reference = REFERENCE_PREFIX + pilot.stamp
            directory = self._job_dir(reference)
            if directory is None:
                results.append(SubmitResult(pilot.stamp, error="invalid stamp"))
                continue
            try:
                directory.mkdir(mode=0o700)
                (directory / "work").mkdir(mode=0o700)
                fd = os.open(directory / "pilot.sh", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as handle:
                    handle.write(pilot.wrapper)
                (directory / "env.json").write_text(json.dumps(dict(queue.environment)))
                _Job(reference, pilot.stamp, key, directory, self._clock()).save()
            except FileExistsError:
                results.append(SubmitResult(pilot.stamp, error="a job with this stamp exists"))
                continue
            except OSError as exc:
                shutil.rmtree(directory, ignore_errors=True)
                results.append(SubmitResult(pilot.stamp, error=str(exc), temporary=True))
                continue
            results.append(SubmitResult(pilot.stamp, reference=reference))
        self._refresh()
        return results

    async def status(self, references: Sequence[str]) -> list[StatusResult]:
        self._refresh()
        results: list[StatusResult] = []
        for reference in references:
            directory = self._job_dir(reference)
            if directory is None:
                results.append(StatusResult(reference, None, error=_not_ours(reference)))
                continue
            job = _Job.load(directory)
            if job is None:
                results.append(
                    StatusResult(
                        reference,
                        PilotStatus.ABORTED,
                        ce_state="unknown",
                        reason="job unknown to the local CE",
                    )
                )
                continue
            status, word, reason, exit_code = self._state(job)
            results.append(
                StatusResult(reference, status, ce_state=word, reason=reason, exit_code=exit_code)
            )
        return results

    async def output(self, reference: str) -> PilotOutput:
        directory = self._job_dir(reference)
        if directory is None:
            raise CEPermanentError(_not_ours(reference), "rejected")

        def tail(name: str) -> str:
            if directory is None:
                return ""
            try:
                with (directory / name).open("rb") as handle:
                    handle.seek(0, os.SEEK_END)
                    handle.seek(max(0, handle.tell() - OUTPUT_LIMIT))
                    return handle.read().decode("utf-8", "replace")
            except OSError:
                return ""

        return PilotOutput(reference, tail("stdout"), tail("stderr"))

    async def kill(self, references: Sequence[str]) -> list[ActionResult]:
        results: list[ActionResult] = []
        for reference in references:
            directory = self._job_dir(reference)
            if directory is None:
                results.append(ActionResult(reference, error=_not_ours(reference)))
                continue
            job = _Job.load(directory)
            if job is None:
                results.append(ActionResult(reference))  # gone already: not running, as asked
                continue
            if job.exit_code is None and job.killed_at is None:
                (job.directory / "killed").write_text(f"{self._clock()}\n")
                self._signal(job, signal.SIGTERM)
            results.append(ActionResult(reference))
        return results

    async def clean(self, references: Sequence[str]) -> list[ActionResult]:
        results: list[ActionResult] = []
        for reference in references:
            directory = self._job_dir(reference)
            if directory is None:
                results.append(ActionResult(reference, error=_not_ours(reference)))
                continue
            job = _Job.load(directory)
            if job is None:
                results.append(ActionResult(reference))  # nothing left: already clean
                continue
            if job.exit_code is None and self._alive(job):
                results.append(ActionResult(reference, error="still running", temporary=True))
                continue
            shutil.rmtree(job.directory, ignore_errors=True)
            self._children.pop(reference, None)
            results.append(ActionResult(reference))
        return results

    async def list_jobs(self, queue: QueueSpec) -> list[CEJob]:
        key = _queue_key(queue)
        return [
            CEJob(job.reference, job.stamp, self._state(job)[0])
            for job in self._refresh()
            if job.queue == key
        ]

    def describe(self, queue: QueueSpec, pilots: Sequence[PilotSubmission]) -> dict[str, str]:
        """What would be run, for the dry run: one description per pilot."""
        out: dict[str, str] = {}
        for pilot in pilots:
            lines = [
                f"# local CE job for pilot {pilot.stamp}",
                f"queue: {_queue_key(queue)}",
                f"command: {self.config.shell} pilot.sh",
                f"work_dir: {self.jobs_dir / pilot.stamp / 'work'}",
                f"slots: {self.config.slots}",
                "environment:",
            ]
            lines += [f"  {k}={v}" for k, v in sorted(queue.environment.items())]
            out[f"{pilot.stamp}.local.txt"] = "\n".join(lines) + "\n"
        return out

    def info(self) -> dict[str, Any]:
        return {"kind": self.kind, "slots": self.config.slots, "work_dir": str(self.work_dir)}
