"""ARC CE backend: A-REX's REST interface (`/arex/rest/1.0`) over httpx.

How it talks to the CE, and why:

- A batch of pilots is one `POST /jobs?action=new` with the xRSL descriptions joined by `+`
  (rendered from `templates/arc.xrsl.j2`); each wrapper is then `PUT` into its job's session
  directory straight from memory, so no file holding a secret is ever written on this host. A job
  whose upload fails is killed and cleaned at once and reported as a temporary failure.
- References are `arc://host:port/<job id>`: the CE and the id, all `status`, `kill` and `clean`
  need. Those are bulk (`POST /jobs?action=status|kill|clean` with `{"job": [{"id": ...}]}`).
- Every job is named `sitedirector:<stamp>:<site>/<ce>/<queue>` and carries `PILOT_STAMP` in its
  environment, so `list_jobs` finds this director's pilots on the CE (`GET /jobs` then
  `action=info`) without any local state.
- `load` reads the queue's share from `GET /info?schema=glue2` and counts accepting, preparing
  and pre-LRMS jobs as waiting. The GLUE2 numbers lag behind submissions (the info provider runs
  every few minutes at a real site); counted alone, the director keeps filling slots that are
  already taken (DIRAC issue #8208). So, with `count_own_jobs` (the default), the director's own
  jobs found on the CE are counted too and the larger figure wins.

Authentication, one of: a bearer token read from `token_file` (reread whenever the file changes,
so an operator's refresh job just rewrites it), a bearer token from this project's server
(`ce_token`: a short-lived RS256 JWT whose `aud` is this CE, asked of the `CredentialSource` the
director injects, which buys it with the director's service token and renews it before it
expires), or an X.509 client certificate (`cert_file`/`key_file`). The backend never talks to
the server itself.

Errors (`director.errors`): 401/403 -> `CEPermanentError("auth")`; connection failures and
timeouts -> `CETemporaryError("unreachable")`; another 4xx on submit -> `CEPermanentError(
"rejected")`; 5xx -> `CETemporaryError("ce_error")`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import ssl
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from http import HTTPStatus
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, HttpUrl, model_validator

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
from director.ce.credentials import CredentialSource, NoCredentials
from director.errors import CEError, CEPermanentError, CETemporaryError
from director.render import TemplateRenderer
from server.models import PilotStatus

_log = logging.getLogger(__name__)

REFERENCE_SCHEME = "arc"
TEMPLATE = "arc.xrsl.j2"
JOB_NAME_PREFIX = "sitedirector"
WRAPPER_NAME = "pilot-wrapper.sh"
STDOUT_NAME = "pilot.out"
STDERR_NAME = "pilot.err"
OUTPUT_LIMIT = 4 * 1024 * 1024
"""At most this many characters of a pilot's stdout or stderr are kept (the tail)."""
REST_PATH = "rest/1.0"
_JSON = "application/json"
OWN_JOBS_TTL_S = 10.0
"""`load()` of several queues of one CE in one cycle lists the director's jobs on it once."""
_PRE_LRMS_STATES = frozenset(
    {"ACCEPTING", "ACCEPTED", "PREPARING", "PREPARED", "SUBMITTING", "QUEUING", "HELD"}
)


class CETokenSource(BaseModel):
    """`ce_token: {}`: bearer tokens for this CE from the director's own server (it acts as
    the token issuer, `POST /api/auth/ce-token`), through the credential source the director
    injects; the director's server token must carry TrustedHost."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    lifetime_s: int = Field(default=1200, ge=60, le=86400)

    @model_validator(mode="before")
    @classmethod
    def _no_server_of_its_own(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        moved = sorted({"server_url", "service_token_file", "ca_file"} & set(data))
        if moved:
            raise ValueError(
                f"{', '.join(moved)}: no longer set here; CE tokens come from the director's "
                "server (server.url, server.token_file, server.ca_bundle)"
            )
        return data


class ARCCEConfig(BaseModel):
    """One ARC CE (A-REX): where it is, how to authenticate, and how long to wait for it.

    Give `url` (`https://host:port/arex`) or `host` (and `port`). Authentication: exactly one of
    `token_file`, `ce_token` and `cert_file` (with `key_file`, or a file holding both).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["arc"] = "arc"
    url: HttpUrl | None = Field(default=None, description="A-REX endpoint, https://host:port/arex")
    host: str | None = Field(default=None, min_length=1, max_length=255)
    port: int = Field(default=443, ge=1, le=65535)
    queue: str | None = Field(
        default=None, description="ARC queue used when the director queue names none"
    )
    token_file: Path | None = None
    ce_token: CETokenSource | None = None
    token_audience: str | None = Field(
        default=None, description="`aud` asked for CE tokens; defaults to the endpoint URL"
    )
    cert_file: Path | None = None
    key_file: Path | None = None
    ca_file: Path | None = Field(default=None, description="CA bundle that signs the CE")
    ca_dir: Path | None = Field(default=None, description="hashed CA folder, e.g. grid-security")
    connect_timeout_s: float = Field(default=10.0, gt=0)
    timeout_s: float = Field(default=120.0, gt=0)
    submit_chunk: int = Field(default=100, ge=1, le=1000, description="jobs per submit request")
    query_chunk: int = Field(default=500, ge=1, le=5000, description="jobs per status request")
    upload_concurrency: int = Field(default=8, ge=1, le=64)
    count_own_jobs: bool = Field(
        default=True, description="count this director's jobs on the CE too in `load`"
    )
    extra_attributes: dict[str, str] = Field(
        default_factory=dict, description="xRSL attributes for every job, verbatim: name -> value"
    )
    runtime_environments: list[str] = Field(
        default_factory=list,
        description="ARC runtime environments every job asks for, e.g. ENV/PROXY",
    )

    @model_validator(mode="after")
    def _check(self) -> ARCCEConfig:
        if (self.url is None) == (self.host is None):
            raise ValueError("give exactly one of url and host")
        given = [n for n in ("token_file", "ce_token", "cert_file") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of token_file, ce_token, cert_file (got {given})")
        if self.key_file is not None and self.cert_file is None:
            raise ValueError("key_file needs cert_file")
        for name, value in self.extra_attributes.items():
            check_xrsl_attribute(name, value)
        for name in self.runtime_environments:
            if not name or "\n" in name or "\r" in name:
                raise ValueError(f"runtime environment {name!r}: one line of text expected")
        return self

    @property
    def endpoint(self) -> str:
        """`https://host:port/arex`, without a trailing slash."""
        if self.url is not None:
            return str(self.url).rstrip("/")
        return f"https://{self.host}:{self.port}/arex"

    @property
    def netloc(self) -> str:
        """`host:port` as references carry it."""
        parts = urlsplit(self.endpoint)
        return f"{parts.hostname}:{parts.port or 443}"

    @property
    def audience(self) -> str:
        return self.token_audience or self.endpoint


# ----------------------------------------------------------------------------- states

# A-REX states -> pilot statuses, as DIRAC's AREX CE maps them, so a pilot shows the same status
# whichever director submitted it; a state not listed is Unknown (the monitoring cycle Aborts
# pilots that stay Unknown too long).
_ARC: dict[str, PilotStatus] = {
    # A-REX REST states (the `state` field of action=status)
    "ACCEPTING": PilotStatus.WAITING,
    "ACCEPTED": PilotStatus.WAITING,
    "PREPARING": PilotStatus.WAITING,
    "PREPARED": PilotStatus.WAITING,
    "SUBMITTING": PilotStatus.WAITING,
    "QUEUING": PilotStatus.WAITING,
    "RUNNING": PilotStatus.RUNNING,
    "HELD": PilotStatus.WAITING,
    "EXITINGLRMS": PilotStatus.RUNNING,
    "OTHER": PilotStatus.RUNNING,
    "EXECUTED": PilotStatus.RUNNING,
    "FINISHING": PilotStatus.RUNNING,
    "FINISHED": PilotStatus.DONE,
    "FAILED": PilotStatus.FAILED,
    "KILLING": PilotStatus.RUNNING,
    "KILLED": PilotStatus.ABORTED,
    "WIPED": PilotStatus.ABORTED,
    "DELETED": PilotStatus.ABORTED,
}


def arc_status(state: str | None) -> PilotStatus:
    """A-REX REST state -> pilot status; a job A-REX no longer knows (None) is Aborted."""
    if state is None:
        return PilotStatus.ABORTED
    return _ARC.get(state.upper(), PilotStatus.UNKNOWN)


# ----------------------------------------------------------------------------- pure helpers


def xrsl_string(value: str) -> str:
    """An xRSL string literal: double-quoted, inner double quotes doubled."""
    if "\n" in value or "\r" in value:
        raise ValueError("xRSL values cannot span lines")
    return '"' + value.replace('"', '""') + '"'


def check_xrsl_attribute(name: str, value: str) -> None:
    """Refuse an extra attribute that would break out of its `(name=value)`."""
    if not name or not all(c.isalnum() or c == "_" for c in name):
        raise ValueError(f"invalid xRSL attribute name {name!r}")
    if "\n" in value or "\r" in value:
        raise ValueError(f"xRSL attribute {name!r}: value spans several lines")
    if value.count("(") != value.count(")"):
        raise ValueError(f"xRSL attribute {name!r}: unbalanced parentheses")


def queue_key(queue: QueueSpec) -> str:
    """The site, CE and CE queue a pilot was submitted for, as the job name carries them."""
    return f"{queue.site}/{queue.ce}/{queue.name}"


def job_name(stamp: str, queue: QueueSpec) -> str:
    return f"{JOB_NAME_PREFIX}:{stamp}:{queue_key(queue)}"


def parse_job_name(name: str) -> tuple[str, str] | None:
    """`sitedirector:<stamp>:<queue key>` -> (stamp, queue key); None for anyone else's job."""
    prefix, sep, rest = name.partition(":")
    if prefix != JOB_NAME_PREFIX or not sep:
        return None
    stamp, sep, key = rest.partition(":")
    if not stamp or not sep:
        return None
    return stamp, key


def make_reference(netloc: str, job_id: str) -> str:
    return f"{REFERENCE_SCHEME}://{netloc}/{job_id}"


def parse_reference(reference: str) -> tuple[str, str]:
    """`arc://host:port/<id>` -> ("host:port", "<id>"); ValueError if it is not one."""
    parts = urlsplit(reference)
    job_id = parts.path.lstrip("/")
    if parts.scheme != REFERENCE_SCHEME or not parts.netloc or not job_id or "/" in job_id:
        raise ValueError(f"not an ARC job reference: {reference!r}")
    return parts.netloc, job_id


def as_list(value: Any) -> list[Any]:
    """A-REX answers one item as an object and several as a list."""
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def glue2_shares(info: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The ComputingShare objects of a `GET /info?schema=glue2` answer."""
    domains = info.get("Domains", info)
    admin = domains.get("AdminDomain", {}) if isinstance(domains, Mapping) else {}
    services = admin.get("Services", {}) if isinstance(admin, Mapping) else {}
    shares: list[Mapping[str, Any]] = []
    for service in as_list(services.get("ComputingService")):
        shares.extend(s for s in as_list(service.get("ComputingShare")) if isinstance(s, Mapping))
    return shares


def load_from_glue2(info: Mapping[str, Any], queue_name: str | None) -> CELoad:
    """Running and waiting jobs of the queue's share(s), counting staging and pre-LRMS as waiting.

    A share matches by MappingQueue or Name; with no queue name every share counts. Free slots
    are summed where the shares report them.
    """
    running = waiting = 0
    free: int | None = None
    for share in glue2_shares(info):
        if queue_name and queue_name not in (share.get("MappingQueue"), share.get("Name")):
            continue
        running += _int(share.get("RunningJobs"))
        waiting += (
            _int(share.get("WaitingJobs"))
            + _int(share.get("StagingJobs"))
            + _int(share.get("PreLRMSWaitingJobs"))
        )
        if share.get("FreeSlots") is not None:
            free = (free or 0) + _int(share.get("FreeSlots"))
    return CELoad(running=running, waiting=waiting, free_slots=free)


def activity_of(item: Mapping[str, Any]) -> Mapping[str, Any]:
    """The GLUE2 ComputingActivity of one `action=info` item ({} when absent)."""
    document = item.get("info_document") or {}
    activity = document.get("ComputingActivity") if isinstance(document, Mapping) else None
    return activity if isinstance(activity, Mapping) else {}


def arcrest_state(activity: Mapping[str, Any]) -> str | None:
    """The `arcrest:` state among an activity's State values."""
    for state in as_list(activity.get("State")):
        if isinstance(state, str) and state.startswith("arcrest:"):
            return state.removeprefix("arcrest:")
    return None


def failure_reason(activity: Mapping[str, Any]) -> tuple[int | None, str]:
    """Exit code and error text A-REX reports for an ended job."""
    code = activity.get("ExitCode")
    exit_code = _int(code) if code not in (None, "") else None
    errors = [str(e).strip() for e in as_list(activity.get("Error")) if str(e).strip()]
    return exit_code, "; ".join(errors)


def classify_status(code: int, *, submitting: bool = False) -> CEError:
    """An HTTP error status from the CE -> the director's error class and category."""
    if code in (HTTPStatus.UNAUTHORIZED, HTTPStatus.FORBIDDEN):
        return CEPermanentError(f"the CE refused our credentials (HTTP {code})", "auth")
    if code >= HTTPStatus.INTERNAL_SERVER_ERROR:
        return CETemporaryError(f"the CE failed (HTTP {code})", "ce_error")
    if submitting:
        return CEPermanentError(f"the CE rejected the job description (HTTP {code})", "rejected")
    return CETemporaryError(f"unexpected answer from the CE (HTTP {code})", "ce_error")


# ----------------------------------------------------------------------------- credentials


class _Credentials:
    """The bearer token to send, if any: from a file (reread on change) or from the credential
    source the director injected (tokens from its server, cached there)."""

    def __init__(self, config: ARCCEConfig, source: CredentialSource | None) -> None:
        self._config = config
        self._source = source or NoCredentials("the director gave this CE no credential source")
        self._file_stamp: tuple[float, int] | None = None
        self._file_token = ""

    async def header(self) -> dict[str, str]:
        if self._config.token_file is not None:
            return {"Authorization": f"Bearer {self._read_file(self._config.token_file)}"}
        if self._config.ce_token is not None:
            token = await self._source.token(
                self._config.audience, lifetime_s=self._config.ce_token.lifetime_s
            )
            return {"Authorization": f"Bearer {token}"}
        return {}

    def _read_file(self, path: Path) -> str:
        try:
            stat = path.stat()
            stamp = (stat.st_mtime, stat.st_size)
            if stamp != self._file_stamp:
                self._file_token = path.read_text().strip()
                self._file_stamp = stamp
        except OSError as exc:
            raise CEPermanentError(f"cannot read the CE token file {path}: {exc}", "auth") from exc
        if not self._file_token:
            raise CEPermanentError(f"the CE token file {path} is empty", "auth")
        return self._file_token


def _ssl_context(
    ca_file: Path | None, ca_dir: Path | None, cert: Path | None, key: Path | None
) -> ssl.SSLContext:
    """A verifying TLS context: the given CAs (else the system's), and the client cert if any."""
    if ca_file is None and ca_dir is None:
        context = ssl.create_default_context()
    else:
        context = ssl.create_default_context(
            cafile=str(ca_file) if ca_file else None, capath=str(ca_dir) if ca_dir else None
        )
    if cert is not None:
        context.load_cert_chain(str(cert), str(key) if key else None)
    return context


# ----------------------------------------------------------------------------- the backend


class ARCCE(ComputingElement):
    """One A-REX endpoint, over its REST interface."""

    kind = "arc"

    def __init__(
        self,
        config: ARCCEConfig,
        *,
        renderer: TemplateRenderer,
        work_dir: Path,
        credentials: CredentialSource | None = None,
    ) -> None:
        """`credentials` gives the tokens of `ce_token`; `token_file` and `cert_file` need none."""
        self.config = config
        self._renderer = renderer
        self._work_dir = work_dir
        self._base = f"{config.endpoint}/{REST_PATH}"
        self._credentials = _Credentials(config, credentials)
        self._client: httpx.AsyncClient | None = None
        self._upload_slots = asyncio.Semaphore(config.upload_concurrency)
        self._client_auth: dict[str, str] | None = None
        self._retired: httpx.AsyncClient | None = None
        self._closing: set[asyncio.Future[None]] = set()
        self.clock: Callable[[], float] = time.monotonic
        self.transport: httpx.AsyncBaseTransport | None = None
        """httpx's extension point: tests put a fake A-REX here for what a real one cannot
        be made to do (5xx answers, failed uploads); None = the network."""
        self._own_cache: tuple[float, list[tuple[str, str, str, str | None]]] | None = None
        self._submitted: dict[str, tuple[str, str]] = {}
        """job id -> (stamp, queue key) of this process's submissions whose name A-REX had not
        yet shown: right after a submission its info can lack the job's name for a moment, and
        such a job, uncounted, would leave room for a second pilot in its place."""

    def __str__(self) -> str:
        return f"arc:{self.config.netloc}"

    def _new_connections(self, auth: dict[str, str]) -> None:
        """A-REX binds the caller's identity to the connection at its first request, and keeps
        it for later requests whatever token they carry (seen with 6.17: a refused token then a
        good one on one connection -> 403, and the reverse -> 200). So a new token gets new
        connections. The old client may still carry requests in flight: it is closed at the
        next change, or by `close()`."""
        if self._client is not None:
            if self._retired is not None:
                self._closing.add(asyncio.ensure_future(self._retired.aclose()))
            self._retired, self._client = self._client, None
        self._client_auth = auth

    def _http(self) -> httpx.AsyncClient:
        """Made on first use, inside the event loop that will use it."""
        if self._client is None:
            c = self.config
            try:
                context = _ssl_context(c.ca_file, c.ca_dir, c.cert_file, c.key_file)
            except (OSError, ssl.SSLError) as exc:
                raise CEPermanentError(f"TLS set-up for {self}: {exc}", "auth") from exc
            self._client = httpx.AsyncClient(
                base_url=self._base,
                transport=self.transport,
                verify=context,
                timeout=httpx.Timeout(c.timeout_s, connect=c.connect_timeout_s),
                headers={"Accept": _JSON},
            )
        return self._client

    async def _request(
        self,
        method: str,
        path: str,
        *,
        submitting: bool = False,
        ok: Iterable[int] = (HTTPStatus.OK, HTTPStatus.CREATED, HTTPStatus.ACCEPTED),
        **kwargs: Any,
    ) -> httpx.Response:
        """One REST call; transport failures and error statuses become CEErrors."""
        auth = await self._credentials.header()
        if auth != self._client_auth:
            self._new_connections(auth)
        headers = {**kwargs.pop("headers", {}), **auth}
        try:
            response = await self._http().request(method, path, headers=headers, **kwargs)
        except httpx.TimeoutException as exc:
            raise CETemporaryError(
                f"{self}: timed out ({type(exc).__name__})", "unreachable"
            ) from exc
        except httpx.TransportError as exc:
            raise CETemporaryError(f"{self}: unreachable ({exc})", "unreachable") from exc
        if response.status_code not in set(ok):
            error = classify_status(response.status_code, submitting=submitting)
            _log.debug("%s %s %s -> %s", self, method, path, response.status_code)
            raise type(error)(f"{self}: {error}", error.category)
        return response

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self._request(method, path, **kwargs)
        if not response.content.strip():
            return {}  # A-REX answers `GET /jobs` with an empty body when there is no job
        try:
            return response.json()
        except ValueError as exc:
            raise CETemporaryError(f"{self}: answer is not JSON", "ce_error") from exc

    async def _bulk(self, action: str, ids: Sequence[str]) -> dict[str, Mapping[str, Any]]:
        """`POST /jobs?action=<action>` over ids in chunks -> {id: item}."""
        items: dict[str, Mapping[str, Any]] = {}
        for chunk in chunks(ids, self.config.query_chunk):
            body = await self._json(
                "POST",
                "/jobs",
                params={"action": action},
                json={"job": [{"id": i} for i in chunk]},
                headers={"Content-Type": _JSON},
            )
            for item in as_list(body.get("job") if isinstance(body, Mapping) else None):
                if isinstance(item, Mapping) and "id" in item:
                    items[str(item["id"])] = item
        return items

    # ------------------------------------------------------------------ descriptions

    def _queue_name(self, queue: QueueSpec) -> str:
        return queue.name or self.config.queue or ""

    def render_job(self, queue: QueueSpec, stamp: str, wrapper_source: str = "") -> str:
        """The xRSL of one pilot (ValueError on values that cannot be written safely).

        `wrapper_source` empty: the wrapper is uploaded by REST after submission; otherwise the
        local file `arcsub` should send (dry runs)."""
        for name, value in queue.extra_attributes.items():
            check_xrsl_attribute(name, value)
        environment = {**queue.environment, "PILOT_STAMP": stamp}
        queue_name = self._queue_name(queue)
        return self._renderer.render(
            TEMPLATE,
            queue=queue,
            queue_name=xrsl_string(queue_name) if queue_name else "",
            jobname=xrsl_string(job_name(stamp, queue)),
            executable=xrsl_string(WRAPPER_NAME),
            wrapper_source=xrsl_string(wrapper_source),
            stdout=xrsl_string(STDOUT_NAME),
            stderr=xrsl_string(STDERR_NAME),
            environment=[(xrsl_string(k), xrsl_string(v)) for k, v in environment.items()],
            walltime_min=math.ceil(queue.max_runtime_s / 60) if queue.max_runtime_s else None,
            runtime_environments=[xrsl_string(n) for n in self.config.runtime_environments],
            extra_attributes=[
                *self.config.extra_attributes.items(),
                *queue.extra_attributes.items(),
            ],
        )

    def render_batch(
        self, queue: QueueSpec, stamps: Sequence[str], *, local_wrappers: bool = False
    ) -> str:
        """One xRSL document for several jobs: `+(&...)(&...)`."""
        jobs = [
            self.render_job(queue, s, f"{s}.sh" if local_wrappers else "").strip() for s in stamps
        ]
        if len(jobs) == 1:
            return jobs[0] + "\n"
        return "+" + "\n".join(f"({job})" for job in jobs) + "\n"

    def describe(self, queue: QueueSpec, pilots: Sequence[PilotSubmission]) -> dict[str, str]:
        """For the dry run: the batch's xRSL, naming the wrappers written beside it as
        `<stamp>.sh`, so that `arcsub -C <url> arc.xrsl` in that folder submits it as is (a real
        cycle leaves the source empty and uploads each wrapper by REST)."""
        return {
            "arc.xrsl": self.render_batch(queue, [p.stamp for p in pilots], local_wrappers=True)
        }

    # ------------------------------------------------------------------ the contract

    async def submit(
        self, queue: QueueSpec, pilots: Sequence[PilotSubmission]
    ) -> list[SubmitResult]:
        self._own_cache = None
        results = {
            p.stamp: SubmitResult(p.stamp, error="invalid pilot stamp")
            for p in pilots
            if not valid_stamp(p.stamp)
        }
        valid = [p for p in pilots if valid_stamp(p.stamp)]
        for number, chunk in enumerate(chunks(valid, self.config.submit_chunk)):
            try:
                document = self.render_batch(queue, [p.stamp for p in chunk])
            except ValueError as exc:
                raise CEPermanentError(
                    f"job description for {queue_key(queue)}: {exc}", "rejected"
                ) from exc
            try:
                created = await self._create(document, len(chunk))
            except CEError as exc:
                if number == 0:
                    raise  # nothing submitted at all: the whole call failed
                for pilot in chunk:
                    results[pilot.stamp] = SubmitResult(
                        pilot.stamp, error=exc.reason, temporary=exc.temporary
                    )
                continue
            made = [(p, i) for p, (i, _) in zip(chunk, created, strict=True) if i is not None]
            errors = await asyncio.gather(*(self._upload(p, i) for p, i in made))
            upload_error = {p.stamp: e for (p, _), e in zip(made, errors, strict=True)}
            failed_ids: list[str] = []
            for pilot, (job_id, refusal) in zip(chunk, created, strict=True):
                if job_id is None:
                    results[pilot.stamp] = SubmitResult(pilot.stamp, error=refusal)
                elif upload_error[pilot.stamp] is not None:
                    failed_ids.append(job_id)
                    results[pilot.stamp] = SubmitResult(
                        pilot.stamp, error=upload_error[pilot.stamp], temporary=True
                    )
                else:
                    results[pilot.stamp] = SubmitResult(
                        pilot.stamp, make_reference(self.config.netloc, job_id)
                    )
                    self._submitted[job_id] = (pilot.stamp, queue_key(queue))
            if failed_ids:
                await self._discard(failed_ids)
        submitted = sum(1 for r in results.values() if r.ok)
        _log.info("submitted %d of %d pilots to %s", submitted, len(pilots), self)
        return [results[p.stamp] for p in pilots]

    async def _create(self, document: str, count: int) -> list[tuple[str | None, str]]:
        """POST the xRSL; per description (job id, "") or (None, the CE's reason for refusing)."""
        body = await self._json(
            "POST",
            "/jobs",
            params={"action": "new"},
            content=document.encode(),
            headers={"Content-Type": "application/rsl"},
            submitting=True,
        )
        items = as_list(body.get("job") if isinstance(body, Mapping) else None)
        if len(items) != count:
            # cannot tell which job is which pilot's: none gets a wrapper, so none may stay
            orphans = [str(i["id"]) for i in items if isinstance(i, Mapping) and i.get("id")]
            if orphans:
                await self._discard(orphans)
            raise CETemporaryError(
                f"{self}: asked for {count} jobs, the CE answered for {len(items)}", "ce_error"
            )
        made: list[tuple[str | None, str]] = []
        for item in items:
            code = _int(item.get("status-code"))
            if code == HTTPStatus.CREATED and item.get("id"):
                made.append((str(item["id"]), ""))
            else:
                reason = " ".join(str(item.get("reason", "")).split())[:200]
                made.append((None, f"rejected: {reason or code}"))
                _log.warning("%s refused a job: %s %s", self, code, reason)
        if not any(job_id for job_id, _ in made):
            raise CEPermanentError(f"{self}: the CE refused every job ({made[0][1]})", "rejected")
        return made

    async def _upload(self, pilot: PilotSubmission, job_id: str) -> str | None:
        """PUT the wrapper into the session directory; None on success, else the reason."""
        async with self._upload_slots:
            try:
                await self._request(
                    "PUT",
                    f"/jobs/{job_id}/session/{WRAPPER_NAME}",
                    content=pilot.wrapper.encode(),
                    headers={"Content-Type": "application/octet-stream"},
                )
            except CEError as exc:
                return f"wrapper upload failed: {exc.reason}"
        return None

    async def _discard(self, ids: Sequence[str]) -> None:
        """Kill and clean jobs that will never get their wrapper; best effort."""
        try:
            await self._bulk("kill", ids)
            await self._bulk("clean", ids)
        except CEError as exc:
            _log.warning("%s: could not discard %d half-made jobs: %s", self, len(ids), exc)

    def _split(self, references: Sequence[str]) -> tuple[dict[str, str], dict[str, str]]:
        """{reference: job id} of this CE, and {reference: error} for the others."""
        return split_references(references, parse_reference, self.config.netloc)

    async def status(self, references: Sequence[str]) -> list[StatusResult]:
        ours, bad = self._split(references)
        items = await self._bulk("status", list(ours.values())) if ours else {}
        failed = [
            job_id
            for job_id in ours.values()
            if str(items.get(job_id, {}).get("state", "")).upper() in ("FAILED", "FINISHED")
        ]
        infos = await self._bulk("info", failed) if failed else {}
        results = []
        for reference in references:
            if reference in bad:
                results.append(StatusResult(reference, None, error=bad[reference]))
                continue
            job_id = ours[reference]
            results.append(self._status_of(reference, items.get(job_id), infos.get(job_id)))
        return results

    @staticmethod
    def _status_of(
        reference: str, item: Mapping[str, Any] | None, info: Mapping[str, Any] | None
    ) -> StatusResult:
        code = _int(item.get("status-code")) if item else HTTPStatus.NOT_FOUND
        if code == HTTPStatus.NOT_FOUND:
            return StatusResult(
                reference, arc_status(None), reason="the CE no longer knows this job"
            )
        state = str(item.get("state", "")) if item else ""
        if code != HTTPStatus.OK or not state or state == "None":
            reason = str(item.get("reason", "")) if item else ""
            return StatusResult(
                reference, None, error=f"no status ({code} {reason})".strip(), temporary=True
            )
        status = arc_status(state)
        exit_code: int | None = None
        reason = ""
        if info is not None:
            exit_code, reason = failure_reason(activity_of(info))
        if status is PilotStatus.FAILED and not reason:
            reason = f"pilot exited with code {exit_code}" if exit_code is not None else "failed"
        elif status is PilotStatus.ABORTED:
            reason = reason or f"{state.lower()} on the CE"
        return StatusResult(
            reference, status, ce_state=state, reason=reason[:255], exit_code=exit_code
        )

    async def _action(self, action: str, references: Sequence[str]) -> list[ActionResult]:
        self._own_cache = None
        ours, bad = self._split(references)
        items = await self._bulk(action, list(ours.values())) if ours else {}
        results = []
        for reference in references:
            if reference in bad:
                results.append(ActionResult(reference, error=bad[reference]))
                continue
            item = items.get(ours[reference])
            code = _int(item.get("status-code")) if item else HTTPStatus.NOT_FOUND
            if code in (HTTPStatus.OK, HTTPStatus.ACCEPTED, HTTPStatus.NOT_FOUND):
                # 404: the job is already gone, which is what kill and clean want
                results.append(ActionResult(reference))
            else:
                reason = str(item.get("reason", "")) if item else ""
                results.append(
                    ActionResult(
                        reference,
                        error=f"{action} refused ({code} {reason})".strip(),
                        temporary=code >= HTTPStatus.INTERNAL_SERVER_ERROR
                        or code == HTTPStatus.CONFLICT,
                    )
                )
        return results

    async def kill(self, references: Sequence[str]) -> list[ActionResult]:
        return await self._action("kill", references)

    async def clean(self, references: Sequence[str]) -> list[ActionResult]:
        return await self._action("clean", references)

    async def output(self, reference: str) -> PilotOutput:
        ours, bad = self._split([reference])
        if reference in bad:
            raise CEPermanentError(bad[reference], "rejected")
        job_id = ours[reference]
        texts = []
        for name in (STDOUT_NAME, STDERR_NAME):
            response = await self._request(
                "GET",
                f"/jobs/{job_id}/session/{name}",
                ok=(HTTPStatus.OK, HTTPStatus.NOT_FOUND),
                headers={"Accept": "*/*"},
            )
            text = response.text if response.status_code == HTTPStatus.OK else ""
            texts.append(text[-OUTPUT_LIMIT:])
        return PilotOutput(reference, stdout=texts[0], stderr=texts[1])

    async def _own_jobs(self) -> list[tuple[str, str, str, str | None]]:
        """(job id, stamp, queue key, state) of every job of ours this CE knows."""
        body = await self._json("GET", "/jobs")
        ids = [
            str(item["id"])
            for item in as_list(body.get("job") if isinstance(body, Mapping) else None)
            if isinstance(item, Mapping) and item.get("id")
        ]
        if not ids:
            return []
        infos = await self._bulk("info", ids)
        found = []
        for job_id, item in infos.items():
            activity = activity_of(item)
            parsed = parse_job_name(str(activity.get("Name", "")))
            if parsed is not None:
                self._submitted.pop(job_id, None)  # named now: A-REX says whose it is
                found.append((job_id, parsed[0], parsed[1], arcrest_state(activity)))
            elif job_id in self._submitted:
                stamp, key = self._submitted[job_id]
                # no state shown yet either: A-REX is still accepting it
                found.append((job_id, stamp, key, arcrest_state(activity) or "ACCEPTING"))
        gone = self._submitted.keys() - set(ids)
        for job_id in gone:
            del self._submitted[job_id]
        return found

    async def list_jobs(self, queue: QueueSpec) -> list[CEJob]:
        key = queue_key(queue)
        return [
            CEJob(make_reference(self.config.netloc, job_id), stamp, arc_status(state))
            for job_id, stamp, job_key, state in await self._own_jobs()
            if job_key == key
        ]

    async def load(self, queue: QueueSpec) -> CELoad:
        info = await self._json("GET", "/info", params={"schema": "glue2"})
        if not isinstance(info, Mapping):
            raise CETemporaryError(f"{self}: no GLUE2 information", "ce_error")
        glue = load_from_glue2(info, self._queue_name(queue) or None)
        if not self.config.count_own_jobs:
            return glue
        key = queue_key(queue)
        running = waiting = 0
        now = self.clock()
        if self._own_cache is None or now - self._own_cache[0] > OWN_JOBS_TTL_S:
            self._own_cache = (now, await self._own_jobs())
        for _job_id, _stamp, job_key, state in self._own_cache[1]:
            if job_key != key or state is None:
                continue
            if state.upper() in _PRE_LRMS_STATES:
                waiting += 1
            elif arc_status(state) is PilotStatus.RUNNING:
                running += 1
        return CELoad(
            running=max(glue.running, running),
            waiting=max(glue.waiting, waiting),
            free_slots=glue.free_slots,
        )

    async def close(self) -> None:
        for client in (self._client, self._retired):
            if client is not None:
                await client.aclose()
        self._client = self._retired = None
        self._client_auth = None
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
