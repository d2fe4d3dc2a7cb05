"""HTCondor-CE backend: remote submission to the CE's schedd, with spooling.

How it talks to the CE, and why:

- The CE is addressed the way an HTCondor-CE is: collector `host:9619`, schedd named `host`. The
  schedd is located through the collector at each call, because its address changes whenever it
  restarts.
- One cluster per batch and one proc per pilot (the stamps and wrapper paths are the submit's
  itemdata). Jobs are submitted with `spool=True`, then `Schedd.spool()` copies each wrapper to
  the CE, so the wrapper files (which hold the pilots' secrets) are deleted right after.
- Every job carries `+SiteDirectorStamp` and `+SiteDirectorQueue`, so `list_jobs` and `load` find
  this director's pilots on the CE without any local state.
- The `htcondor2` bindings are an optional extra: they are imported inside the functions that use
  them. Their calls block, so they run in a worker thread. Which credential the client presents is
  process-wide HTCondor configuration (`htcondor2.param`), so one lock serialises setting it and
  the calls that use it.
- With `ce_token`, the credential is a CE token from the director's server: before each call
  the backend asks the injected `CredentialSource` for it (cached and renewed there) and, when
  it changed, writes it atomically (0600) to `<work_dir>/credentials/scitoken`, the client's
  SCITOKENS_FILE. The client reads that file at each new authentication only: a security
  session it already has with the schedd lasts until HTCondor makes a new one.

Errors: whatever the bindings raise is sorted by its message into the categories of
`director.errors`: auth and rejected are permanent (`CEPermanentError`), unreachable and
CE-side errors temporary (`CETemporaryError`).
"""

from __future__ import annotations

import asyncio
import enum
import importlib.util
import logging
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from director.batching import chunks
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
    split_references,
    valid_stamp,
)
from director.ce.credentials import (
    CETokenOptions,
    CredentialSource,
    NoCredentials,
    write_private_file,
)
from director.errors import CECategory, CEError, CEPermanentError, CETemporaryError, ConfigError
from director.holds import HeldRelease, HoldAction, HoldDecision, decide_hold
from director.render import TemplateRenderer
from server.models import PilotStatus

_log = logging.getLogger(__name__)

REFERENCE_SCHEME = "htcondorce"
STAMP_ATTRIBUTE = "SiteDirectorStamp"
QUEUE_ATTRIBUTE = "SiteDirectorQueue"
TEMPLATE = "htcondor.sub.j2"
OUTPUT_LIMIT = 4 * 1024 * 1024
"""At most this many bytes of a pilot's stdout or stderr are read back (the tail is kept)."""

# HTCondor JobStatus -> pilot status, as DIRAC's HTCondorCEComputingElement maps it

HTCONDOR_IDLE = 1
HTCONDOR_RUNNING = 2
HTCONDOR_REMOVED = 3
HTCONDOR_COMPLETED = 4
HTCONDOR_HELD = 5
HTCONDOR_TRANSFERRING_OUTPUT = 6
HTCONDOR_SUSPENDED = 7
HTCONDOR_HOLD_SPOOLING = 16
"""HoldReasonCode of a job waiting for its input sandbox to be spooled."""


def htcondor_status(job_status: int, hold_reason_code: int | None = None) -> PilotStatus:
    """HTCondor JobStatus -> pilot status, as DIRAC's HTCondorCEComputingElement maps it.

    Held is Aborted, except hold code 16 (input still spooling), which is Waiting.
    """
    if job_status == HTCONDOR_HELD:
        if hold_reason_code == HTCONDOR_HOLD_SPOOLING:
            return PilotStatus.WAITING
        return PilotStatus.ABORTED
    return {
        HTCONDOR_IDLE: PilotStatus.WAITING,
        HTCONDOR_RUNNING: PilotStatus.RUNNING,
        HTCONDOR_REMOVED: PilotStatus.ABORTED,
        HTCONDOR_COMPLETED: PilotStatus.DONE,
        HTCONDOR_TRANSFERRING_OUTPUT: PilotStatus.RUNNING,
        HTCONDOR_SUSPENDED: PilotStatus.RUNNING,
    }.get(job_status, PilotStatus.UNKNOWN)


_JOB_PROJECTION = [
    "ClusterId",
    "ProcId",
    "JobStatus",
    "HoldReasonCode",
    "HoldReasonSubCode",
    "HoldReason",
    "RemoveReason",
    "ExitCode",
    "ExitBySignal",
    "ExitSignal",
    STAMP_ATTRIBUTE,
    "Environment",
    "Iwd",
    "SUBMIT_Iwd",
    "LastHoldReason",
    "LastHoldReasonCode",
    "NumSystemHolds",
    "EnteredCurrentStatus",
    "ServerTime",
    "Out",
    "Err",
]
_STATE_NAMES = {
    HTCONDOR_IDLE: "Idle",
    HTCONDOR_RUNNING: "Running",
    HTCONDOR_REMOVED: "Removed",
    HTCONDOR_COMPLETED: "Completed",
    HTCONDOR_HELD: "Held",
    HTCONDOR_TRANSFERRING_OUTPUT: "TransferringOutput",
    HTCONDOR_SUSPENDED: "Suspended",
}
_ATTRIBUTE_NAME_RE = re.compile(r"^\+?[A-Za-z_][A-Za-z0-9_.]*$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_REFERENCE_RE = re.compile(rf"^{REFERENCE_SCHEME}://([^/]+)/(\d+)\.(\d+)$")
_CLUSTERS_PER_QUERY = 200

# HTCondor's client configuration is process-wide: one lock for every call that sets and uses it.
_BINDINGS_LOCK = threading.Lock()

T = TypeVar("T")


class HTCondorCEConfig(BaseModel):
    """One HTCondor-CE: where it is, how to authenticate, and submit defaults for its queues.

    Authentication: at most one of `ce_token` (SciTokens: CE tokens for `token_audience` from
    the director's server, which the backend fetches through its credential source and keeps in
    a file of its work dir), `scitoken_file` (a SciToken/WLCG token file the operator keeps
    fresh), `idtoken_dir` (a folder of HTCondor IDTOKENs) and `x509_proxy` (an X.509 proxy, SSL
    method). With none, the process's own HTCondor configuration decides. The bindings read the
    token file at each new authentication; `ca_dir` must hold the CA of the CE's host
    certificate, since SCITOKENS runs inside TLS.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["htcondor"] = "htcondor"
    host: str = Field(min_length=1, max_length=255, description="the CE's host name")
    port: int = Field(default=9619, ge=1, le=65535, description="the CE's collector port")
    schedd_name: str | None = Field(default=None, description="defaults to `host`")
    pool: str | None = Field(
        default=None, description="collector address overriding host:port (tests, odd sites)"
    )
    ce_token: CETokenOptions | None = None
    token_audience: str = Field(
        default="",
        max_length=512,
        description="`aud` asked for CE tokens (`ce_token`); defaults to `host:port`",
    )
    scitoken_file: Path | None = None
    idtoken_dir: Path | None = None
    x509_proxy: Path | None = None
    ca_dir: Path | None = Field(
        default=None, description="CA certificates to verify the CE with (SSL/SciTokens)"
    )
    extra_attributes: dict[str, str] = Field(
        default_factory=dict,
        description="submit commands added for every queue of this CE, verbatim ('+Attr': 'expr')",
    )
    remove_held_after_s: int | None = Field(
        default=86400, ge=60, description="held jobs are removed by the CE after this long"
    )
    held_release: HeldRelease = Field(
        default_factory=HeldRelease,
        description="holds known to be transient are released this many times, then Aborted",
    )
    submit_timeout_s: float = Field(default=300.0, gt=0)
    query_timeout_s: float = Field(default=60.0, gt=0)

    @field_validator("extra_attributes")
    @classmethod
    def _check_attributes(cls, value: dict[str, str]) -> dict[str, str]:
        check_submit_attributes(value)
        return value

    @model_validator(mode="before")
    @classmethod
    def _default_audience(cls, data: Any) -> Any:
        """HTCondor-CE checks `aud` against its SCITOKENS_SERVER_AUDIENCE, whose usual form is
        the CE's `host:port` (the collector's port, 9619 by default)."""
        if isinstance(data, Mapping) and not data.get("token_audience") and data.get("host"):
            return {**data, "token_audience": f"{data['host']}:{data.get('port', 9619)}"}
        return data

    @model_validator(mode="after")
    def _one_credential(self) -> HTCondorCEConfig:
        names = ("ce_token", "scitoken_file", "idtoken_dir", "x509_proxy")
        given = [name for name in names if getattr(self, name) is not None]
        if len(given) > 1:
            raise ValueError(f"give at most one of {', '.join(names)}: {given}")
        return self

    @property
    def collector(self) -> str:
        return self.pool or f"{self.host}:{self.port}"

    @property
    def schedd(self) -> str:
        return self.schedd_name or self.host


# ----------------------------------------------------------------------------- pure helpers


@dataclass(frozen=True, order=True)
class JobId:
    cluster: int
    proc: int

    def __str__(self) -> str:
        return f"{self.cluster}.{self.proc}"


def make_reference(host: str, job: JobId) -> str:
    return f"{REFERENCE_SCHEME}://{host}/{job}"


def parse_reference(reference: str) -> tuple[str, JobId]:
    """`htcondorce://host/12.3` -> ("host", JobId(12, 3)); ValueError if it is not one."""
    match = _REFERENCE_RE.match(reference)
    if match is None:
        raise ValueError(f"not an HTCondor-CE job reference: {reference!r}")
    return match.group(1), JobId(int(match.group(2)), int(match.group(3)))


def auth_parameters(
    config: HTCondorCEConfig, issued_token_file: Path | None = None
) -> dict[str, str]:
    """The HTCondor client settings that make the bindings present this CE's credential;
    with `ce_token`, the token is the one the backend keeps in `issued_token_file`."""
    params: dict[str, str] = {}
    token_file = config.scitoken_file
    if config.ce_token is not None:
        if issued_token_file is None:
            raise ValueError("ce_token: the backend names the file of the issued token")
        token_file = issued_token_file
    if token_file is not None:
        params["SEC_CLIENT_AUTHENTICATION_METHODS"] = "SCITOKENS"
        params["SCITOKENS_FILE"] = str(token_file)
    elif config.idtoken_dir is not None:
        params["SEC_CLIENT_AUTHENTICATION_METHODS"] = "IDTOKENS"
        params["SEC_TOKEN_DIRECTORY"] = str(config.idtoken_dir)
    elif config.x509_proxy is not None:
        params["SEC_CLIENT_AUTHENTICATION_METHODS"] = "SSL"
        params["X509_USER_PROXY"] = str(config.x509_proxy)
        params["AUTH_SSL_CLIENT_CERTFILE"] = str(config.x509_proxy)
        params["AUTH_SSL_CLIENT_KEYFILE"] = str(config.x509_proxy)
    if config.ca_dir is not None:
        params["AUTH_SSL_CLIENT_CADIR"] = str(config.ca_dir)
    return params


def check_submit_attributes(attributes: Mapping[str, str]) -> None:
    """Refuse attribute names or values that would break out of their submit line."""
    for name, value in attributes.items():
        if not _ATTRIBUTE_NAME_RE.match(name):
            raise ValueError(f"invalid submit attribute name {name!r}")
        if "\n" in value or "\r" in value:
            raise ValueError(f"submit attribute {name!r}: value spans several lines")


def classad_string(value: str) -> str:
    """A ClassAd string literal, quotes included."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def condor_environment(variables: Mapping[str, str]) -> str:
    """The inside of an `environment = "..."` submit line (HTCondor's "new" syntax).

    Entries are separated by spaces; a value with spaces or quotes goes in single quotes, with
    single quotes doubled, and double quotes are doubled too.
    """
    parts = []
    for name, value in variables.items():
        if not _ENV_NAME_RE.match(name):
            raise ValueError(f"invalid environment variable name {name!r}")
        if "\n" in value or "\r" in value:
            raise ValueError(f"environment variable {name}: value spans several lines")
        escaped = value.replace('"', '""')
        if any(c in value for c in " \t'\""):
            escaped = "'" + escaped.replace("'", "''") + "'"
        parts.append(f"{name}={escaped}")
    return " ".join(parts)


def queue_key(queue: QueueSpec) -> str:
    """What `+SiteDirectorQueue` holds: the site, CE and CE queue this pilot was submitted for."""
    return f"{queue.site}/{queue.ce}/{queue.name}"


def job_constraint(jobs: Iterable[JobId]) -> str:
    """A constraint matching exactly these jobs, grouped by cluster to stay short."""
    by_cluster: dict[int, list[int]] = {}
    for job in jobs:
        by_cluster.setdefault(job.cluster, []).append(job.proc)
    terms = []
    for cluster, procs in sorted(by_cluster.items()):
        if len(procs) == 1:
            terms.append(f"(ClusterId == {cluster} && ProcId == {procs[0]})")
        else:
            members = ", ".join(str(p) for p in sorted(set(procs)))
            terms.append(f"(ClusterId == {cluster} && member(ProcId, {{{members}}}))")
    return " || ".join(terms) if terms else "false"


def classify_error(message: str) -> CECategory:
    """Sort an HTCondor client error message into a CE error category."""
    text = message.lower()
    if any(
        word in text
        for word in ("authenticate", "permission denied", "not authorized", "authoriz", "secman")
    ):
        return "auth"
    if any(
        word in text
        for word in (
            "cedar:",
            "failed to connect",
            "failed communication with collector",
            "unable to locate",
            "not found in the collector",
            "connection refused",
            "timed out",
            "timeout",
            "no route to host",
        )
    ):
        return "unreachable"
    if any(
        word in text
        for word in (
            "failed to create job ad",
            "parse error",
            "submit_requirement",
            "submit requirement",
            "invalid",
        )
    ):
        return "rejected"
    return "ce_error"


def ce_error(message: str, category: CECategory) -> CEError:
    if category in ("auth", "rejected"):
        return CEPermanentError(message, category)
    return CETemporaryError(message, category)


def _as_int(value: Any) -> int | None:
    """An ad's integer, or None: classad2's Undefined/Error are IntEnum members, not numbers."""
    if isinstance(value, enum.Enum):
        return None
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _as_str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _local_iwd(ad: Mapping[str, Any]) -> str:
    """The submit-side folder of a job: spooled jobs have their Iwd rewritten to the CE's spool."""
    return _as_str(ad.get("SUBMIT_Iwd")) or _as_str(ad.get("Iwd"))


def _stamp_from_environment(environment: str) -> str:
    match = re.search(r"(?:^|\s)PILOT_STAMP=([A-Za-z0-9_-]+)", environment)
    return match.group(1) if match else ""


def hold_decision(ad: Mapping[str, Any], policy: HeldRelease) -> HoldDecision:
    """What to do with a held job (`director.holds`): its hold, the releases so far (the
    system's holds before this one) and how long this hold has lasted, by the schedd's clock."""
    holds = _as_int(ad.get("NumSystemHolds")) or 1
    entered = _as_int(ad.get("EnteredCurrentStatus"))
    server_time = _as_int(ad.get("ServerTime"))
    held_seconds = None
    if entered is not None:
        held_seconds = float((server_time if server_time is not None else time.time()) - entered)
    return decide_hold(
        _as_int(ad.get("HoldReasonCode")),
        _as_int(ad.get("HoldReasonSubCode")),
        _as_str(ad.get("HoldReason")),
        max(holds - 1, 0),
        policy,
        held_seconds,
    )


def status_from_ad(
    reference: str, ad: Mapping[str, Any], policy: HeldRelease | None = None
) -> StatusResult:
    """A job ad (from the queue or the history) -> the pilot's status, reason and exit code.

    A held job is Aborted unless its hold is spooling or transient (`hold_decision`): then it
    is Waiting, to be released by `HTCondorCE.status`."""
    job_status = _as_int(ad.get("JobStatus"))
    if job_status is None:
        return StatusResult(reference, PilotStatus.UNKNOWN, "", "job ad without JobStatus")
    hold_code = _as_int(ad.get("HoldReasonCode"))
    status = htcondor_status(job_status, hold_code)
    state = _STATE_NAMES.get(job_status, f"JobStatus={job_status}")
    reason = ""
    exit_code: int | None = None
    if job_status == HTCONDOR_HELD:
        state = f"Held({hold_code})" if hold_code is not None else "Held"
        decision = hold_decision(ad, policy or HeldRelease())
        reason = decision.reason
        status = PilotStatus.ABORTED if decision.action is HoldAction.ABORT else PilotStatus.WAITING
        if hold_code == 3:  # on_exit_hold: the subcode is the pilot's exit code
            exit_code = _as_int(ad.get("HoldReasonSubCode"))
    elif job_status == HTCONDOR_REMOVED:
        reason = "removed from the CE"
        if _as_str(ad.get("RemoveReason")):
            reason = f"removed: {ad.get('RemoveReason')}"
        last_hold = _as_str(ad.get("LastHoldReason"))
        if last_hold and _as_int(ad.get("LastHoldReasonCode")) != HTCONDOR_HOLD_SPOOLING:
            reason = f"{reason} (after being held: {last_hold})"
    elif job_status == HTCONDOR_COMPLETED:
        exit_code = _as_int(ad.get("ExitCode"))
    return StatusResult(reference, status, state, reason[:255], exit_code)


# ----------------------------------------------------------------------------- the backend


class ScheddLike(Protocol):
    """The part of `htcondor2.Schedd` this backend calls (tests pass a FakeSchedd)."""

    def submit(
        self, description: Any, count: int = ..., spool: bool = ..., itemdata: Any = ...
    ) -> Any: ...

    def spool(self, result: Any) -> None: ...

    def query(self, constraint: str = ..., projection: list[str] = ...) -> list[Any]: ...

    def history(
        self, constraint: str | None = ..., projection: list[str] = ..., match: int = ...
    ) -> list[Any]: ...

    def act(self, action: Any, job_spec: Any, reason: str | None = ...) -> Any: ...

    def edit(self, job_spec: Any, attr: str, value: str) -> Any: ...

    def retrieve(self, job_spec: Any) -> None: ...


class HTCondorCE(ComputingElement):
    """Pilots on one HTCondor-CE, submitted remotely to its schedd with spooling."""

    kind = "htcondor"

    def __init__(
        self,
        config: HTCondorCEConfig,
        *,
        renderer: TemplateRenderer,
        work_dir: Path,
        credentials: CredentialSource | None = None,
        schedd_factory: Callable[[], ScheddLike] | None = None,
    ) -> None:
        """`credentials` gives the tokens of `ce_token`; the other credentials need none.
        `schedd_factory` replaces the collector look-up (tests pass a FakeSchedd)."""
        if schedd_factory is None and importlib.util.find_spec("htcondor2") is None:
            raise ConfigError(
                f"CE {config.host}: kind 'htcondor' needs the htcondor bindings "
                "(pip install 'site-director[htcondor]')"
            )
        self.config = config
        self._renderer = renderer
        self._work_dir = work_dir
        self._schedd_factory = schedd_factory or self._locate_schedd
        self.token_file: Path | None = None
        """With `ce_token`: where the CE token is kept for the client (SCITOKENS_FILE)."""
        if config.ce_token is not None:
            self.token_file = work_dir / "credentials" / "scitoken"
        self._auth = auth_parameters(config, self.token_file)
        self._credentials = credentials or NoCredentials(
            "the director gave this CE no credential source"
        )
        self._token_written: str | None = None
        """The token this backend last wrote to `token_file` (guarded by _BINDINGS_LOCK)."""

    # ------------------------------------------------------------------ plumbing

    def _locate_schedd(self) -> ScheddLike:
        import htcondor2

        location = htcondor2.Collector(self.config.collector).locate(
            htcondor2.DaemonTypes.Schedd, self.config.schedd
        )
        if location is None:
            raise CETemporaryError(
                f"schedd {self.config.schedd} not found in the collector {self.config.collector}",
                "unreachable",
            )
        schedd: ScheddLike = htcondor2.Schedd(location)
        return schedd

    async def _issued_token(self, what: str) -> str | None:
        """With `ce_token`, the CE token to present (the source caches and renews it); the
        source's errors keep their kind and category, with this CE named."""
        if self.config.ce_token is None:
            return None
        audience = self.config.token_audience
        try:
            token = await self._credentials.token(
                audience, lifetime_s=self.config.ce_token.lifetime_s
            )
        except CEError as exc:
            kind = CETemporaryError if exc.temporary else CEPermanentError
            raise kind(f"{what} on {self.config.host}: {exc}", exc.category) from exc
        if not token or any(c.isspace() for c in token):
            raise CEPermanentError(
                f"{what} on {self.config.host}: the CE token for {audience} is not one token",
                "auth",
            )
        return token

    def _present(self, what: str, token: str) -> None:
        """Put `token` in the token file if it is not already there (under _BINDINGS_LOCK)."""
        assert self.token_file is not None
        if token == self._token_written and self.token_file.exists():
            return
        try:
            write_private_file(self.token_file, token + "\n")
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise CETemporaryError(
                f"{what} on {self.config.host}: cannot write the CE token to "
                f"{self.token_file}: {reason}",
                "ce_error",
            ) from exc
        self._token_written = token
        _log.debug("CE token for %s written to %s", self.config.token_audience, self.token_file)

    def _blocking(
        self, what: str, operation: Callable[[ScheddLike], T], token: str | None = None
    ) -> T:
        """Run one operation against the schedd in this thread, with this CE's credential
        (`token`: the CE token of `ce_token`, written to its file first if it changed)."""
        try:
            with _BINDINGS_LOCK:
                if token is not None:
                    self._present(what, token)
                if self._auth:
                    import htcondor2

                    for key, value in self._auth.items():
                        htcondor2.param[key] = value
                return operation(self._schedd_factory())
        except CEError:
            raise
        except Exception as exc:  # the bindings raise HTCondorException, ValueError, ...
            message = f"{what} on {self.config.host}: {exc}"
            raise ce_error(message, classify_error(str(exc))) from exc

    async def _call(self, what: str, operation: Callable[[ScheddLike], T], seconds: float) -> T:
        token = await self._issued_token(what)
        try:
            return await asyncio.wait_for(
                asyncio.to_thread(self._blocking, what, operation, token), seconds
            )
        except TimeoutError as exc:
            raise CETemporaryError(
                f"{what} on {self.config.host}: no answer within {seconds:g} s", "unreachable"
            ) from exc

    def _parse(self, references: Sequence[str]) -> dict[str, JobId | str]:
        """reference -> its job id, or the reason it cannot be one of this CE's jobs."""
        ours, others = split_references(references, parse_reference, self.config.host)
        return {**others, **ours}

    @staticmethod
    def _fetch_ads(
        schedd: ScheddLike, jobs: Sequence[JobId], projection: list[str], history: bool
    ) -> dict[JobId, Mapping[str, Any]]:
        """The ads of these jobs from the queue, then from the history for those that left it."""
        wanted = set(jobs)
        found: dict[JobId, Mapping[str, Any]] = {}
        for chunk in chunks(sorted({job.cluster for job in wanted}), _CLUSTERS_PER_QUERY):
            members = set(chunk)
            subset = [job for job in wanted if job.cluster in members]
            for ad in schedd.query(job_constraint(subset), projection):
                _remember(found, wanted, ad)
        missing = sorted(wanted - found.keys())
        if history and missing:
            for ad in schedd.history(job_constraint(missing), projection, len(missing)):
                _remember(found, wanted, ad)
        return found

    # ------------------------------------------------------------------ rendering

    def render_submit(
        self,
        queue: QueueSpec,
        initialdir: Path,
        items: Sequence[tuple[str, str]] = (),
    ) -> str:
        """The submit description for a batch; with `items`, a complete file (dry runs)."""
        check_submit_attributes(queue.extra_attributes)
        for value in (*queue.tags, *queue.required_tags, queue.platform or ""):
            if "\n" in value or "\r" in value:
                raise ValueError(f"tag or platform {value!r} spans several lines")
        environment = {**queue.environment, "PILOT_STAMP": "$(Stamp)"}
        attributes = list(self.config.extra_attributes.items()) + list(
            queue.extra_attributes.items()
        )
        return self._renderer.render(
            TEMPLATE,
            queue=queue,
            initialdir=str(initialdir),
            environment=condor_environment(environment),
            queue_key=classad_string(queue_key(queue)),
            tags=classad_string(",".join(queue.tags)) if queue.tags else "",
            required_tags=(
                classad_string(",".join(queue.required_tags)) if queue.required_tags else ""
            ),
            platform=classad_string(queue.platform) if queue.platform else "",
            remove_held_after_s=self.config.remove_held_after_s,
            extra_attributes=attributes,
            items=list(items),
        )

    def describe(self, queue: QueueSpec, pilots: Sequence[PilotSubmission]) -> dict[str, str]:
        """For the dry run: the submit description a real cycle would send, as a complete file
        that `condor_submit -spool -remote <host> -pool <host>:9619` accepts beside the
        wrappers (written as `<stamp>.sh`)."""
        initialdir = self._work_dir / "htcondor" / self.config.host / "dry-run"
        items = [(p.stamp, f"{p.stamp}.sh") for p in pilots]
        return {"htcondor.sub": self.render_submit(queue, initialdir, items)}

    # ------------------------------------------------------------------ the contract

    async def submit(
        self, queue: QueueSpec, pilots: Sequence[PilotSubmission]
    ) -> list[SubmitResult]:
        if not pilots:
            return []
        valid = [p for p in pilots if valid_stamp(p.stamp)]
        batch_dir = (
            self._work_dir
            / "htcondor"
            / self.config.host
            / f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{secrets.token_hex(4)}"
        )
        try:
            description = self.render_submit(queue, batch_dir)
        except ValueError as exc:
            raise CEPermanentError(
                f"submit description for {queue_key(queue)}: {exc}", "rejected"
            ) from exc
        references: dict[str, str] = {}
        if valid:
            procs = await self._call(
                "submit",
                lambda schedd: self._submit_blocking(schedd, description, batch_dir, valid),
                self.config.submit_timeout_s,
            )
            for pilot, job in zip(valid, procs, strict=False):
                references[pilot.stamp] = make_reference(self.config.host, job)
            _log.info(
                "submitted %d pilots to %s (cluster %s)",
                len(procs),
                self.config.host,
                procs[0].cluster if procs else "-",
            )
        results = []
        for pilot in pilots:
            if pilot.stamp in references:
                results.append(SubmitResult(pilot.stamp, references[pilot.stamp]))
            elif not valid_stamp(pilot.stamp):
                results.append(SubmitResult(pilot.stamp, error="invalid pilot stamp"))
            else:
                results.append(
                    SubmitResult(
                        pilot.stamp, error="the CE made fewer jobs than asked", temporary=True
                    )
                )
        return results

    def _submit_blocking(
        self,
        schedd: ScheddLike,
        description: str,
        batch_dir: Path,
        pilots: Sequence[PilotSubmission],
    ) -> list[JobId]:
        import htcondor2

        batch_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        spool_dir = Path(tempfile.mkdtemp(prefix="htcondor-spool-", dir=self._work_dir))
        try:
            items = []
            for pilot in pilots:
                path = spool_dir / f"{pilot.stamp}.sh"
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w", encoding="utf-8") as handle:
                    handle.write(pilot.wrapper)
                items.append({"Stamp": pilot.stamp, "Wrapper": str(path)})
            result = schedd.submit(htcondor2.Submit(description), spool=True, itemdata=iter(items))
            cluster, first, count = result.cluster(), result.first_proc(), result.num_procs()
            try:
                schedd.spool(result)
            except Exception:
                # jobs whose input never arrives would stay held (code 16) on the CE
                try:
                    schedd.act(
                        htcondor2.JobAction.Remove,
                        f"ClusterId == {cluster}",
                        "site director: spooling failed",
                    )
                except Exception:
                    _log.warning("could not remove cluster %s after a failed spool", cluster)
                raise
            return [JobId(cluster, first + i) for i in range(min(count, len(pilots)))]
        finally:
            shutil.rmtree(spool_dir, ignore_errors=True)

    async def status(self, references: Sequence[str]) -> list[StatusResult]:
        parsed = self._parse(references)
        jobs = [job for job in parsed.values() if isinstance(job, JobId)]
        ads: dict[JobId, Mapping[str, Any]] = {}
        if jobs:
            ads = await self._call(
                "status",
                lambda schedd: self._fetch_ads(schedd, jobs, _JOB_PROJECTION, history=True),
                self.config.query_timeout_s,
            )
        released = await self._release_transient(ads)
        results = []
        for reference in references:
            job = parsed[reference]
            if not isinstance(job, JobId):
                results.append(StatusResult(reference, None, error=job))
            elif job in released:
                code = _as_int(ads[job].get("HoldReasonCode"))
                results.append(
                    StatusResult(reference, PilotStatus.WAITING, f"Released({code})", released[job])
                )
            elif job in ads:
                results.append(status_from_ad(reference, ads[job], self.config.held_release))
            else:
                results.append(
                    StatusResult(
                        reference,
                        PilotStatus.ABORTED,
                        "Unknown",
                        "job unknown to the CE (neither queued nor in its history)",
                    )
                )
        return results

    async def _release_transient(self, ads: Mapping[JobId, Mapping[str, Any]]) -> dict[JobId, str]:
        """Release the held jobs whose hold is transient and due (`director.holds`); returns
        the jobs the schedd released, with why. A failed release is retried at the next check."""
        due = {
            job: decision.reason
            for job, ad in ads.items()
            if _as_int(ad.get("JobStatus")) == HTCONDOR_HELD
            and (decision := hold_decision(ad, self.config.held_release)).action
            is HoldAction.RELEASE
        }
        if not due:
            return {}
        try:
            still_held = await self._call(
                "release",
                lambda schedd: self._release_blocking(schedd, list(due)),
                self.config.query_timeout_s,
            )
        except CEError as exc:
            _log.warning("could not release %d held jobs: %s", len(due), exc)
            return {}
        return {job: reason for job, reason in due.items() if job not in still_held}

    @staticmethod
    def _release_blocking(schedd: ScheddLike, jobs: Sequence[JobId]) -> set[JobId]:
        """Release the jobs; returns those still held afterwards."""
        import htcondor2

        schedd.act(
            htcondor2.JobAction.Release,
            [str(job) for job in jobs],
            "site director: transient hold released",
        )
        ads = HTCondorCE._fetch_ads(schedd, jobs, ["ClusterId", "ProcId", "JobStatus"], False)
        return {job for job, ad in ads.items() if _as_int(ad.get("JobStatus")) == HTCONDOR_HELD}

    async def output(self, reference: str) -> PilotOutput:
        job = self._parse([reference])[reference]
        if not isinstance(job, JobId):
            raise CEPermanentError(job, "rejected")
        ads = await self._call(
            "output",
            lambda schedd: self._retrieve_blocking(schedd, job),
            self.config.query_timeout_s,
        )
        ad = ads.get(job)
        if ad is None:
            return PilotOutput(reference, "", "")
        iwd = _local_iwd(ad)
        return PilotOutput(
            reference,
            stdout=_read_tail(iwd, _as_str(ad.get("Out"))),
            stderr=_read_tail(iwd, _as_str(ad.get("Err"))),
        )

    def _retrieve_blocking(self, schedd: ScheddLike, job: JobId) -> dict[JobId, Mapping[str, Any]]:
        ads = self._fetch_ads(schedd, [job], _JOB_PROJECTION, history=True)
        ad = ads.get(job)
        # output exists once the job has left the execute node; spooled jobs keep it until then
        if (
            ad is not None
            and _as_int(ad.get("JobStatus"))
            in (
                HTCONDOR_COMPLETED,
                HTCONDOR_HELD,
                HTCONDOR_REMOVED,
            )
            and _as_int(ad.get("HoldReasonCode")) != HTCONDOR_HOLD_SPOOLING
        ):
            queued = schedd.query(job_constraint([job]), ["ClusterId"])
            if queued:
                schedd.retrieve(job_constraint([job]))
        return ads

    async def kill(self, references: Sequence[str]) -> list[ActionResult]:
        parsed = self._parse(references)
        jobs = [job for job in parsed.values() if isinstance(job, JobId)]
        failures: dict[JobId, tuple[str, bool]] = {}
        if jobs:
            failures = await self._call(
                "kill",
                lambda schedd: self._remove_blocking(schedd, jobs),
                self.config.query_timeout_s,
            )
        return self._action_results(references, parsed, failures)

    @staticmethod
    def _remove_blocking(
        schedd: ScheddLike, jobs: Sequence[JobId]
    ) -> dict[JobId, tuple[str, bool]]:
        """Remove the jobs; those that are still live afterwards -> (error, temporary)."""
        import htcondor2

        totals = schedd.act(
            htcondor2.JobAction.Remove, [str(job) for job in jobs], "removed by the site director"
        )
        if _as_int(_get(totals, "TotalSuccess")) == len(jobs):
            return {}
        denied = (_as_int(_get(totals, "TotalPermissionDenied")) or 0) > 0
        summary = ", ".join(
            f"{key[5:]}={_get(totals, key)}"
            for key in (
                "TotalSuccess",
                "TotalNotFound",
                "TotalBadStatus",
                "TotalPermissionDenied",
                "TotalError",
            )
        )
        ads = HTCondorCE._fetch_ads(schedd, jobs, ["ClusterId", "ProcId", "JobStatus"], False)
        failures = {}
        for job, ad in ads.items():
            if _as_int(ad.get("JobStatus")) not in (HTCONDOR_REMOVED, HTCONDOR_COMPLETED):
                failures[job] = (f"the CE did not remove the job ({summary})", not denied)
        return failures

    async def clean(self, references: Sequence[str]) -> list[ActionResult]:
        parsed = self._parse(references)
        jobs = [job for job in parsed.values() if isinstance(job, JobId)]
        failures: dict[JobId, tuple[str, bool]] = {}
        if jobs:
            failures = await self._call(
                "clean",
                lambda schedd: self._clean_blocking(schedd, jobs),
                self.config.query_timeout_s,
            )
        return self._action_results(references, parsed, failures)

    def _clean_blocking(
        self, schedd: ScheddLike, jobs: Sequence[JobId]
    ) -> dict[JobId, tuple[str, bool]]:
        """Drop ended jobs from the CE's queue and their retrieved output from the work dir."""
        ads = self._fetch_ads(schedd, jobs, _JOB_PROJECTION, history=True)
        queued = self._fetch_ads(schedd, jobs, ["ClusterId", "ProcId", "JobStatus"], False)
        completed = [
            j for j, ad in queued.items() if _as_int(ad.get("JobStatus")) == HTCONDOR_COMPLETED
        ]
        live = [
            j
            for j, ad in queued.items()
            if _as_int(ad.get("JobStatus")) not in (HTCONDOR_COMPLETED, HTCONDOR_REMOVED)
        ]
        if completed:
            # spooled jobs stay in the queue until their output is fetched; let them go
            schedd.edit([str(j) for j in completed], "LeaveJobInQueue", "false")
        failures = self._remove_blocking(schedd, live) if live else {}
        for ad in ads.values():
            self._remove_output(_local_iwd(ad), (_as_str(ad.get("Out")), _as_str(ad.get("Err"))))
        return failures

    def _remove_output(self, iwd: str, names: Iterable[str]) -> None:
        """Delete a job's retrieved output, and its batch folder once only the log is left.

        Only ever inside this backend's work dir, whatever the job ad says.
        """
        if not iwd:
            return
        folder = Path(iwd).resolve()
        if self._work_dir.resolve() not in folder.parents:
            return
        for name in names:
            if name and name != "/dev/null":
                (folder / name).unlink(missing_ok=True)
        try:
            if {entry.name for entry in folder.iterdir()} <= {"pilots.log"}:
                shutil.rmtree(folder, ignore_errors=True)
        except OSError:
            pass

    @staticmethod
    def _action_results(
        references: Sequence[str],
        parsed: Mapping[str, JobId | str],
        failures: Mapping[JobId, tuple[str, bool]],
    ) -> list[ActionResult]:
        results = []
        for reference in references:
            job = parsed[reference]
            if not isinstance(job, JobId):
                results.append(ActionResult(reference, error=job))
            elif job in failures:
                error, temporary = failures[job]
                results.append(ActionResult(reference, error=error, temporary=temporary))
            else:
                results.append(ActionResult(reference))
        return results

    async def load(self, queue: QueueSpec) -> CELoad:
        ads = await self._call(
            "load",
            lambda schedd: schedd.query(
                f"{QUEUE_ATTRIBUTE} == {classad_string(queue_key(queue))}",
                ["JobStatus", "HoldReasonCode"],
            ),
            self.config.query_timeout_s,
        )
        running = waiting = 0
        for ad in ads:
            job_status = _as_int(ad.get("JobStatus"))
            hold_code = _as_int(ad.get("HoldReasonCode"))
            if job_status == HTCONDOR_IDLE or (
                job_status == HTCONDOR_HELD and hold_code == HTCONDOR_HOLD_SPOOLING
            ):
                waiting += 1
            elif job_status in (HTCONDOR_RUNNING, HTCONDOR_TRANSFERRING_OUTPUT, HTCONDOR_SUSPENDED):
                running += 1
        return CELoad(running=running, waiting=waiting)

    async def list_jobs(self, queue: QueueSpec) -> list[CEJob]:
        ads = await self._call(
            "list jobs",
            lambda schedd: schedd.query(
                f"{QUEUE_ATTRIBUTE} == {classad_string(queue_key(queue))}", _JOB_PROJECTION
            ),
            self.config.query_timeout_s,
        )
        jobs = []
        for ad in ads:
            cluster, proc = _as_int(ad.get("ClusterId")), _as_int(ad.get("ProcId"))
            if cluster is None or proc is None:
                continue
            stamp = _as_str(ad.get(STAMP_ATTRIBUTE)) or _stamp_from_environment(
                _as_str(ad.get("Environment"))
            )
            if not stamp:
                continue
            reference = make_reference(self.config.host, JobId(cluster, proc))
            status = (
                status_from_ad(reference, ad, self.config.held_release).status
                or PilotStatus.UNKNOWN
            )
            jobs.append(CEJob(reference, stamp, status))
        return jobs


def _get(ad: Any, key: str) -> Any:
    try:
        return ad.get(key)
    except AttributeError:
        return None


def _remember(
    found: dict[JobId, Mapping[str, Any]], wanted: set[JobId], ad: Mapping[str, Any]
) -> None:
    cluster, proc = _as_int(ad.get("ClusterId")), _as_int(ad.get("ProcId"))
    if cluster is None or proc is None:
        return
    job = JobId(cluster, proc)
    if job in wanted and job not in found:
        found[job] = ad


def _read_tail(iwd: str, name: str) -> str:
    """The last OUTPUT_LIMIT bytes of a retrieved output file, or "" if there is none."""
    if not name or name == "/dev/null":
        return ""
    path = Path(iwd) / name if iwd else Path(name)
    try:
        with path.open("rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - OUTPUT_LIMIT))
            return handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
