"""DiracX's resource status as a second ban list (`director.resource_status`, optional).

DiracX 0.7.0 answers, for the VO of the caller's token, `GET /api/rss/site` and
`GET /api/rss/compute` with `{name: {"all": {"allowed": true, "warnings": ...}}}` or
`{"allowed": false, "reason": ...}` (Active and Degraded are allowed, Degraded with a warning;
Banned, Probing, Error, Unknown and anything else are not). Both are read once per submission
cycle for every queue, right after the server's bans (`director.bans`), not once per queue.

A queue is skipped while its site (`sites:` key) or its CE (`ces:` key, DIRAC's CE name) is
not allowed; pilots already submitted are still followed. Each refusal is logged once at
WARNING with the queues it stops, and once at INFO when allowed again; a warning of an allowed
site or CE once at INFO.

A site or CE that the answer does not list has no status: with `unlisted: submit` (the default)
the resource status has no opinion on it and the ban list alone decides; with `unlisted: skip`
it is not submitted to, as DIRAC's SiteDirector submits only to sites and CEs its RSS lists as
Active or Degraded. (DiracX 0.7.0 lists a CE only when its `ResourceStatus` row has
ElementType `ComputeElement`; DIRAC's RSS agents write `ComputingElement`, so on a database
that DIRAC fills the compute answer is empty and `skip` would stop every CE.)

When DiracX cannot give both answers (no answer, 5xx, 401, a body of another shape), every
queue's status is unknown and nothing new is submitted that cycle, as when the server cannot
give its bans: one ERROR line per cycle, and each queue's outcome says why. A dry run plans as
if everything were allowed and says so at WARNING.

The DiracX token is one VO's: its view (the statuses of every VO overlaid with its VO's own)
applies to every queue of the director, whatever the queue's VO.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from director.client import ServerClient, TokenSource
from director.errors import ConfigError, DirectorError, ServerError

if TYPE_CHECKING:
    from director.config import QueueRef, ResourceStatusConfig, Settings

log = logging.getLogger(__name__)

Kind = Literal["site", "CE"]
SITE_PATH = "/api/rss/site"
COMPUTE_PATH = "/api/rss/compute"


class _Status(BaseModel):
    model_config = ConfigDict(extra="ignore")

    allowed: bool
    reason: str | None = None
    warnings: str | None = None


class _Element(BaseModel):
    model_config = ConfigDict(extra="ignore")

    all: _Status


_ANSWER: TypeAdapter[dict[str, _Element]] = TypeAdapter(dict[str, _Element])


@dataclass(frozen=True)
class Status:
    """One site's or CE's status as DiracX gave it."""

    allowed: bool
    text: str = ""
    """The reason when not allowed, the warnings (if any) when allowed."""


def parse(body: Any) -> dict[str, Status]:
    """`{name: {"all": {...}}}` -> {name: Status}; raises ValueError for another shape."""
    try:
        elements = _ANSWER.validate_python(body)
    except ValidationError as exc:
        raise ValueError(f"not a resource status answer: {exc.errors()[0]['msg']}") from exc
    return {
        name: Status(
            e.all.allowed,
            (e.all.warnings or "") if e.all.allowed else (e.all.reason or "not allowed"),
        )
        for name, e in elements.items()
    }


class ResourceStatusClient(ServerClient):
    """The two reads of DiracX's RSS router over the director's client machinery (token
    reread when its file changes, errors translated and naming the URL)."""

    async def statuses(self, path: str) -> dict[str, Status]:
        response = await self._call("GET", path)
        try:
            return parse(response.json())
        except ValueError as exc:
            raise ServerError(f"GET {self.base_url}{path}: {exc}") from exc


class ResourceStatus:
    """What DiracX said this cycle, and which refusals were already logged."""

    def __init__(
        self,
        config: ResourceStatusConfig,
        token: TokenSource,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.config = config
        self._token = token
        self.transport = transport
        """The HTTP transport (tests); None: the network."""
        self.sites: dict[str, Status] = {}
        self.ces: dict[str, Status] = {}
        self.known = False
        """Whether this cycle's answers are in (a dry run without them plans as if allowed)."""
        self.error = ""
        """Why the statuses are unknown this cycle ("" when they are known)."""
        self._logged: dict[tuple[Kind, str], str] = {}
        self._warned: dict[tuple[Kind, str], str] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> ResourceStatus | None:
        config = settings.director.resource_status
        if config is None:
            return None
        token = TokenSource(config.token_file or settings.server.token_file, settings.server.token)
        return cls(config, token)

    def _client(self) -> ResourceStatusClient:
        try:
            return ResourceStatusClient(
                str(self.config.url),
                self._token,
                ca_bundle=self.config.ca_bundle,
                timeout=self.config.timeout_seconds,
                transport=self.transport,
            )
        except ConfigError as exc:  # the CA bundle went away since the start
            raise ConfigError(
                str(exc).replace("server.ca_bundle", "director.resource_status.ca_bundle")
            ) from exc

    async def refresh(self, queues: Sequence[QueueRef], *, dry_run: bool = False) -> None:
        """Read both statuses for this cycle (one connection, two calls); on failure every
        status is unknown and `error` says why."""
        try:
            client = self._client()
            try:
                sites = await client.statuses(SITE_PATH)
                ces = await client.statuses(COMPUTE_PATH)
            finally:
                await client.aclose()
        except DirectorError as exc:
            self.sites, self.ces, self.known = {}, {}, False
            if dry_run:
                self.error = ""
                log.warning("dry run: resource status unknown (%s); planned as if allowed", exc)
            else:
                self.error = f"resource status unknown: {exc}"
                log.error("submission cycle: no queue can submit: %s", self.error)
            return
        self.sites, self.ces, self.known, self.error = sites, ces, True, ""
        self._log_changes(queues)

    def _status(self, kind: Kind, name: str) -> Status | None:
        found = (self.sites if kind == "site" else self.ces).get(name)
        if found is None and self.known and self.config.unlisted == "skip":
            return Status(False, "not listed (unlisted: skip)")
        return found

    def refusal(self, ref: QueueRef) -> tuple[Kind, str, str] | None:
        """(kind, name, reason) of what stops the queue (its site first), or None."""
        elements: tuple[tuple[Kind, str], ...] = (("site", ref.site), ("CE", ref.ce))
        for kind, name in elements:
            status = self._status(kind, name)
            if status is not None and not status.allowed:
                return kind, name, status.text
        return None

    def why(self, ref: QueueRef) -> str | None:
        """The skip reason of a queue DiracX does not allow, None if allowed."""
        found = self.refusal(ref)
        if found is None:
            return None
        kind, name, reason = found
        return f"not allowed by DiracX resource status ({kind} {name}): {reason}"

    def _by_element(self, queues: Sequence[QueueRef]) -> Mapping[tuple[Kind, str], list[str]]:
        names: dict[tuple[Kind, str], list[str]] = {}
        for ref in queues:
            names.setdefault(("site", ref.site), []).append(ref.key)
            names.setdefault(("CE", ref.ce), []).append(ref.key)
        return names

    def _log_changes(self, queues: Sequence[QueueRef]) -> None:
        refused: dict[tuple[Kind, str], str] = {}
        warned: dict[tuple[Kind, str], str] = {}
        ours = self._by_element(queues)
        for (kind, name), keys in ours.items():
            status = self._status(kind, name)
            if status is None:
                continue
            if not status.allowed:
                refused[kind, name] = status.text
                if self._logged.get((kind, name)) != status.text:
                    log.warning(
                        "DiracX resource status: %s %s not allowed: %s; no new pilots to %s",
                        kind,
                        name,
                        status.text,
                        ", ".join(keys),
                    )
            elif status.text:
                warned[kind, name] = status.text
                if self._warned.get((kind, name)) != status.text:
                    log.info(
                        "DiracX resource status: %s %s allowed with warnings: %s",
                        kind,
                        name,
                        status.text,
                    )
        for kind, name in sorted(self._logged.keys() - refused.keys()):
            if (kind, name) in ours:  # not a queue dropped from the configuration since
                log.info(
                    "DiracX resource status: %s %s allowed again: submitting again", kind, name
                )
        self._logged, self._warned = refused, warned
