"""The contract every computing-element backend fulfils, and the suite that proves it.

Construction: `Backend(config, *, renderer, work_dir, credentials)`, from the queue's `ce:` block
(the backend's own `<Kind>CEConfig`, already validated), the director's template renderer, a
work folder of its own, and the `CredentialSource` the director injects
(`director.ce.credentials`): a backend gets tokens and proxies from it and never talks to the
server. A constructor only checks and stores; it raises ConfigError (missing bindings, say) and
does no I/O, so the dry run can build every CE without reaching any.

All other methods are bulk and async. A bulk method returns one result per input item, in the
same order, so the loop can line them up with its pilots; an item's failure is a value (`error`
set, `temporary` saying whether to retry), not an exception. An exception means the whole call
failed, and is always a `director.errors.CEError`, whose class says what to do:

    CEError                     the whole call failed; `category`: auth, unreachable,
    │                           rejected or ce_error
    ├── CETemporaryError        unreachable, timed out, CE-side error, the credential issuer
    │                           down: the loop backs the queue off and tries again later
    └── CEPermanentError        rejected (bad description), credentials refused: the pilots
                                of the call are Aborted with `reason`

Backends translate foreign errors (httpx, htcondor2, OSError) at their boundary, chained with
`from`; anything else escaping a backend is a bug.

Backends only do I/O. The loop owns retries, back-off, locks and the server; a backend never
talks to the server and never sleeps to retry.

Adding a CE kind: one module here with a `<Kind>CEConfig` Pydantic model (`kind:
Literal["<kind>"]`) and a class implementing `ComputingElement`, one entry in
`director/ce/__init__.py`'s registry, its templates, a fixture in the contract suite
(`tests/director/ce/contract/`, which runs the same tests against every backend: local,
HTCondor and ARC, real and fake), its own tests for what only it does, and an example block in
`config.example.yaml`.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from server.models import PilotStatus

if TYPE_CHECKING:
    from director.ce.credentials import CredentialSource
    from director.render import TemplateRenderer

JobId = TypeVar("JobId")

_STAMP_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def valid_stamp(stamp: str) -> bool:
    """A stamp a backend may put in job names, attributes and file names (the director makes
    32 hex characters; anything with a separator or a path in it is refused per item)."""
    return _STAMP_RE.match(stamp) is not None


@dataclass(frozen=True)
class QueueSpec:
    """What a CE needs to know about the queue it submits into."""

    name: str
    """The CE-side queue (batch queue, ARC queue, HTCondor-CE route); may be empty."""
    site: str
    ce: str
    processors: int = 1
    memory_mb: int | None = None
    max_runtime_s: int | None = None
    tags: tuple[str, ...] = ()
    """DIRAC tags of the queue (the pilot gets them too, `--tag=`)."""
    required_tags: tuple[str, ...] = ()
    """DIRAC required tags (the pilot gets them too, `--requiredTag=`)."""
    platform: str | None = None
    """The DIRAC platform the queue's worker nodes have (no pilot option: it finds its own)."""
    environment: Mapping[str, str] = field(default_factory=dict)
    extra_attributes: Mapping[str, str] = field(default_factory=dict)
    """CE-kind-specific submit attributes, passed through verbatim (e.g. HTCondor `+Attr`)."""


@dataclass(frozen=True)
class PilotSubmission:
    """One pilot to submit. `wrapper` holds the pilot's secret: never log it."""

    stamp: str
    wrapper: str

    def __repr__(self) -> str:  # keep the secret out of logs and tracebacks
        return f"PilotSubmission(stamp={self.stamp!r}, wrapper=<{len(self.wrapper)} chars>)"


@dataclass(frozen=True)
class SubmitResult:
    stamp: str
    reference: str | None = None
    error: str | None = None
    temporary: bool = False

    @property
    def ok(self) -> bool:
        return self.reference is not None and self.error is None


@dataclass(frozen=True)
class StatusResult:
    """The state of one job: `status` is the mapped pilot status, `ce_state` the CE's own word.

    `status` is None when the query failed for this item (then `error` says why). A job the CE no
    longer knows is reported as `PilotStatus.ABORTED` (or DONE where the CE's history says so)
    with a reason, never as an error.
    """

    reference: str
    status: PilotStatus | None
    ce_state: str = ""
    reason: str = ""
    exit_code: int | None = None
    error: str | None = None
    temporary: bool = False


@dataclass(frozen=True)
class ActionResult:
    reference: str
    error: str | None = None
    temporary: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class CELoad:
    """Jobs the CE holds for this queue: waiting counts accepting and preparing jobs too."""

    running: int
    waiting: int
    free_slots: int | None = None
    """Free slots the CE itself reports, when it does; None when it cannot tell."""


@dataclass(frozen=True)
class CEJob:
    """A job found on the CE, with the pilot stamp it carries (for crash reconciliation)."""

    reference: str
    stamp: str
    status: PilotStatus


@dataclass(frozen=True)
class PilotOutput:
    reference: str
    stdout: str
    stderr: str


class ComputingElement(abc.ABC):
    """One CE endpoint. Instances are made from their config block and live for the daemon.

    The module docstring gives the rules every method follows (one result per item, in order;
    item failures as values; whole-call failures as CETemporaryError or CEPermanentError).
    """

    kind: ClassVar[str]

    @abc.abstractmethod
    def __init__(
        self,
        config: Any,
        *,
        renderer: TemplateRenderer,
        work_dir: Path,
        credentials: CredentialSource | None = None,
    ) -> None:
        """Check and keep the `ce:` block; no I/O. `work_dir` is this CE's own folder (made
        on first use); `credentials` None means the backend needs none, or may not ask (a
        backend configured for issued tokens then fails its calls with an auth error).

        Raises ConfigError when this host cannot serve the kind (its bindings are missing).
        """

    @abc.abstractmethod
    async def load(self, queue: QueueSpec) -> CELoad:
        """The queue's running and waiting jobs as the CE counts them, and its free slots where
        it reports them.

        Raises CETemporaryError when the CE cannot tell (the loop then counts from the server's
        pilot records), CEPermanentError when it refuses our credentials.
        """

    @abc.abstractmethod
    async def submit(
        self, queue: QueueSpec, pilots: Sequence[PilotSubmission]
    ) -> list[SubmitResult]:
        """Submit pilots in bulk; one result per pilot, in order, each with the job's reference
        or the reason it was not made (`temporary` when another try may succeed).

        Files holding a wrapper (and so its secret) are mode 0600 and removed once the CE has
        its copy. Raises CEPermanentError when the description is rejected or the credentials
        refused, CETemporaryError when the CE cannot be reached; in both cases no job of the
        call is left on the CE as far as the backend can tell.
        """

    @abc.abstractmethod
    async def status(self, references: Sequence[str]) -> list[StatusResult]:
        """Status of many jobs in as few CE calls as possible; one result per reference.

        A job the CE no longer knows is Aborted (or Done where its history says so) with a
        reason, not an error; a reference that is not this CE's is an item error. Raises
        CETemporaryError when the CE cannot be asked at all.
        """

    @abc.abstractmethod
    async def output(self, reference: str) -> PilotOutput:
        """The job's stdout and stderr (their tails), as far as the CE still has them; empty
        strings when it has none. Raises CEPermanentError for another CE's reference,
        CETemporaryError when the CE cannot be asked."""

    @abc.abstractmethod
    async def kill(self, references: Sequence[str]) -> list[ActionResult]:
        """Ask the CE to end these jobs; one result per reference. A job already ended or gone
        is a success (the caller wanted it not running)."""

    @abc.abstractmethod
    async def clean(self, references: Sequence[str]) -> list[ActionResult]:
        """Remove what the CE (and this backend's work folder) keeps of ended jobs: session
        folders, spool, output. A job already gone is a success; one that cannot be cleaned
        yet (still running) is a temporary item error."""

    @abc.abstractmethod
    async def list_jobs(self, queue: QueueSpec) -> list[CEJob]:
        """Every job of this queue the CE still knows, with its stamp, for reconciliation.

        Raises CETemporaryError when the CE cannot be asked (the reconciliation waits)."""

    @abc.abstractmethod
    def describe(self, queue: QueueSpec, pilots: Sequence[PilotSubmission]) -> dict[str, str]:
        """For the dry run: `{file name: text}` of what `submit` would send for these pilots,
        as files an operator can read or submit by hand beside the wrappers (written as
        `<stamp>.sh`). No I/O: it neither writes nor asks the CE. Raises ValueError when a
        value cannot be written safely into the description."""

    async def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing
        """Release connections; called once when the daemon stops."""


def split_references(
    references: Iterable[str], parse: Callable[[str], tuple[str, JobId]], endpoint: str
) -> tuple[dict[str, JobId], dict[str, str]]:
    """Sort pilot references into this CE's jobs and the rest, for one bulk call.

    `parse(reference)` returns (the CE endpoint the reference names, the job's id there), or
    raises ValueError for a string that is no reference of this kind. Returns `{reference:
    job id}` for the references naming `endpoint`, and `{reference: why not}` for the others
    (malformed, or another CE's), which the caller reports as per-item errors.
    """
    ours: dict[str, JobId] = {}
    others: dict[str, str] = {}
    for reference in references:
        try:
            where, job = parse(reference)
        except ValueError as exc:
            others[reference] = str(exc)
            continue
        if where == endpoint:
            ours[reference] = job
        else:
            others[reference] = f"reference of another CE ({where}), not {endpoint}"
    return ours, others
