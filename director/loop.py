"""The director's cycles: one `run_cycle()` for `run`, `once` and the dry run, and one
`monitor_cycle()`.

Submission, in four phases, so that the server sees a few bulk calls per cycle rather than a
few per queue (1,000 queues: five calls, not 3,000), while each queue is still bounded by
`director.queue_timeout_seconds` where it talks to its CE, so a slow CE never holds the others
up for longer than that:

0. skip the queues whose site, CE or themselves are disabled, that are backed off, whose
   lease another director holds, or that a ban covers (one `GET /api/bans` per cycle; no
   list, no submission: `director.bans`); then one search (per `SEARCH_QUEUES` queues) for the live
   pilots of the others that have no CE reference yet, grouped per queue here;
1. per queue, concurrently up to `director.concurrency`: reconcile, that is CE jobs against
   those pilots by stamp (a reference the server misses is patched on; a pilot registered but
   absent from the CE after `submit_grace_seconds` is Aborted and its secret revoked), so a
   crash at any point loses no pilot and counts none twice; count waiting and running pilots
   from the CE, or from the server's records when the CE cannot tell; demand from the
   configured source; n = min(slots, demand) (`director.slots`); n stamps;
2. one server call per VO (per `BULK_MAX` pilots) registering every planned pilot and minting
   one bound secret each, before anything is submitted; a failed call fails the queues it
   carried (the server is down: they submit next cycle);
3. per queue, concurrently: n wrappers, one bulk submission to the CE;
4. one call revoking the secrets of the pilots that failed, then one PATCH (per `BULK_MAX`)
   with every reference, and every failed pilot Aborted with the CE's reason; a queue whose
   submission failed backs off. A queue that failed after phase 2 but before its CE call has
   its pilots Aborted here too; one that failed during its CE call (a timeout) is left to the
   next reconciliation, which asks the CE what it holds.

After the queues, one report of every configured queue (limits, back-off, last cycle) goes to
the server for the monitor page (`director.queue_report`); a failed report is only logged.

Monitoring, per queue: the status of live pilots from the CE, patched in bulk; Unknown or held
too long -> Aborted (and killed); ended jobs' leftovers cleaned.

The dry run is the submission cycle without the server's side effects: no lease, no
registration, no secret (a placeholder goes into the wrappers), no submission. It writes the
wrappers and the CE's submit descriptions under the output folder.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from director import ce as ce_registry
from director.backoff import Backoff
from director.bans import BanList
from director.batching import chunks
from director.ce.base import ComputingElement, PilotSubmission, QueueSpec, SubmitResult
from director.ce.credentials import CredentialSource, NoCredentials, ServerCredentials
from director.client import ServerClient
from director.config import QueueRef, Settings
from director.demand import DemandSource, make_demand_source
from director.errors import CEError, ConfigError, DirectorError, ServerError, ServerUnavailable
from director.metrics import Metrics
from director.pilot_files import ManifestCache, download_locations, resolve_files
from director.queue_report import LastCycle, build_report
from director.render import TemplateRenderer, default_template_dir
from director.slots import Limits, plan
from director.wrapper import PilotFile, PilotOptions, PreparedWrapper, WrapperRenderer
from server.models import (
    FINAL_STATUSES,
    BulkPilot,
    BulkRegistration,
    PilotMetadata,
    PilotStatus,
    ScalarSearch,
    SearchParams,
    SecretConstraints,
    SummaryParams,
    VectorSearch,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

BULK_MAX = 10_000
"""Pilots per registration, revocation or PATCH call (the server takes 10,000 at most)."""
SEARCH_QUEUES = 1000
"""Queues per reconciliation search (three lists of at most this many names)."""
SEARCH_PAGE = 10_000
DRY_RUN_SECRET = "dry-run-placeholder-not-a-secret"  # noqa: S105 - a placeholder
GRID_TYPES = {"local": "Local", "arc": "ARC", "htcondor": "HTCondorCE"}
LIVE = [s.value for s in PilotStatus if s not in FINAL_STATUSES]
_RANK = {
    PilotStatus.SUBMITTED: 0,
    PilotStatus.UNKNOWN: 0,
    PilotStatus.WAITING: 1,
    PilotStatus.RUNNING: 2,
}


@dataclass
class QueueOutcome:
    """What one queue's cycle did: one log line, one dry-run table row."""

    queue: str
    ce: str
    kind: str
    slots: int = 0
    demand: int = 0
    n: int = 0
    submitted: int = 0
    failed: int = 0
    waiting: int = 0
    running: int = 0
    counts_from: str = ""
    why: str = ""
    seconds: float = 0.0
    stamps: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass
class MonitorOutcome:
    queue: str
    ce: str
    checked: int = 0
    updated: int = 0
    aborted: int = 0
    cleaned: int = 0
    seconds: float = 0.0
    why: str = ""
    error: str | None = None


QueueId = tuple[str, str, str]
"""A queue as the server's pilot records name it: (GridSite, DestinationSite, Queue)."""


def queue_id(ref: QueueRef) -> QueueId:
    return (ref.site, ref.ce, ref.ce_queue)


@dataclass(eq=False)
class _Batch:
    """One queue's pilots on their way through phases 2-4 of a submission cycle."""

    ref: QueueRef
    outcome: QueueOutcome
    ce: ComputingElement
    spec: QueueSpec
    prepared: PreparedWrapper
    stamps: list[str]
    registered: list[str] = field(default_factory=list)
    """The stamps the server registered (all of them, unless a registration call failed)."""
    secrets: dict[str, str] = field(default_factory=dict, repr=False)
    """Stamp -> minted secret, from phase 2 until the wrappers are rendered."""
    submitting: bool = False
    """The CE call started: from then on, only the CE knows which pilots it holds."""
    results: list[SubmitResult] | None = None
    record_failure: str | None = None

    def fail(self, error: str) -> None:
        if self.outcome.error is None:
            self.outcome.error = self.outcome.why = error

    def record_error(self, error: str) -> None:
        if self.record_failure is None:
            self.record_failure = error


def _log_unexpected(exc: Exception, what: str) -> None:
    if not isinstance(exc, (DirectorError, OSError)):
        log.error("%s: unexpected error", what, exc_info=exc)


def new_stamp() -> str:
    """32 lowercase hex characters (128 random bits), as DIRAC makes pilot stamps."""
    return secrets.token_hex(16)


def _parse_time(value: Any) -> float | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def ce_reference(pilot: dict[str, Any]) -> str | None:
    """The pilot's CE reference, or None before the director patched it on (the server
    stores the stamp as the reference of a pilot registered without one, as DiracX does)."""
    reference = pilot.get("PilotJobReference")
    if not reference or reference == pilot.get("PilotStamp"):
        return None
    return str(reference)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)


class Director:
    """Holds what lives across cycles: CEs, back-off, trackers, prepared wrappers."""

    def __init__(
        self,
        settings: Settings,
        *,
        client: ServerClient | None,
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
        demand: DemandSource | None = None,
        ces: dict[str, ComputingElement] | None = None,
    ) -> None:
        """`ces` maps `site/ce` to a CE instance to use instead of one made from the config."""
        self.settings = settings
        self.client = client
        self.clock = clock
        self.metrics = metrics or Metrics()
        extra = [settings.director.template_dir] if settings.director.template_dir else []
        self.renderer = TemplateRenderer(extra)
        self._template_dirs = [*extra, default_template_dir()]
        self.wrappers = WrapperRenderer(self.renderer)
        cfg = settings.director.backoff
        self.backoff = Backoff(cfg.initial_seconds, cfg.max_seconds, cfg.factor, clock=clock)
        self.demand = demand or make_demand_source(settings)
        self._ces: dict[str, ComputingElement] = dict(ces or {})
        self.credentials: CredentialSource = (
            ServerCredentials(client)
            if client is not None
            else NoCredentials("the director has no server (dry run)")
        )
        """What the CEs present to their CEs: tokens bought from the server, cached."""
        self._prepared: dict[str, PreparedWrapper] = {}
        self.manifests = ManifestCache()
        """`pilot.manifest` folders' checksums (`director.pilot_files`), re-read when stale."""
        self._manifest_digest: dict[str, str] = {}
        self._unknown_since: dict[str, float] = {}
        self._held_since: dict[str, float] = {}
        self.stopping = False
        """Set on SIGTERM: queues not yet started are skipped, and a queue stops before its
        next registration; a batch already registered is still submitted and recorded."""
        self.queues: list[QueueRef] = list(settings.queues())
        self._last_cycle: dict[str, LastCycle] = {}
        self.bans = BanList.from_settings(settings)
        """The bans in force, read once per submission cycle (`director.bans`)."""

    # --- set-up -------------------------------------------------------------------------------

    def ce_for(self, ref: QueueRef) -> ComputingElement:
        key = f"{ref.site}/{ref.ce}"
        ce = self._ces.get(key)
        if ce is None:
            work_dir = self.settings.director.work_dir / "ce" / _safe(ref.site) / _safe(ref.ce)
            ce = ce_registry.make_ce(
                ref.entry.ce,
                renderer=self.renderer,
                work_dir=work_dir,
                credentials=self.credentials,
            )
            self._ces[key] = ce
        return ce

    @staticmethod
    def spec_for(ref: QueueRef) -> QueueSpec:
        q = ref.config
        return QueueSpec(
            name=ref.ce_queue,
            site=ref.site,
            ce=ref.ce,
            processors=q.processors,
            memory_mb=q.memory_mb,
            max_runtime_s=q.max_runtime_s,
            tags=tuple(q.tags),
            required_tags=tuple(q.required_tags),
            platform=q.platform,
            environment=dict(q.environment),
            extra_attributes=dict(q.extra_attributes),
        )

    def _find_template_file(self, name: str) -> Path:
        for folder in self._template_dirs:
            if (folder / name).is_file():
                return folder / name
        raise ConfigError(f"pilot.files: {name!r} not found in the template folders")

    def wrapper_options(self, ref: QueueRef) -> PilotOptions:
        """The queue's pilot options in the wrapper's terms (`director.wrapper.PilotOptions`)."""
        p = ref.pilot
        configured: list[tuple[str, str, bytes | None]] = []
        for item in p.files or []:
            content = None
            if item.path is not None:
                content = item.path.read_bytes()
            elif item.template is not None:
                content = self._find_template_file(item.template).read_bytes()
            configured.append((item.name, (item.sha512 or "").lower(), content))
        if p.manifest:  # the sums as DIRAC publishes them (a ManifestError fails this queue)
            manifest = self.manifests.get(p.manifest, self._manifest_ca(ref))
            configured = resolve_files(manifest, configured if p.files is not None else None)
        files = [PilotFile(name, sha512, content) for name, sha512, content in configured]
        ca_file = p.ca_file or self.settings.server.ca_bundle
        ca_pem = ca_file.read_text() if ca_file is not None and not p.ca_path else ""
        optional: dict[str, Any] = {}
        for name in (
            "diracx_url_option",
            "stamp_option",
            "token_file_option",
            "secret_option",
            "pilot_script",
            "work_dir_base",
        ):
            if getattr(p, name) is not None:
                optional[name] = getattr(p, name)
        if p.python_commands:
            optional["python_commands"] = tuple(p.python_commands)
        return PilotOptions(
            server_url=p.diracx_url or str(self.settings.server.url),
            vo=ref.vo,
            site=ref.site,
            ce=ref.ce,
            queue=ref.ce_queue,
            pilot_files=tuple(files),
            pilot_locations=tuple(
                download_locations(p.manifest, p.cvmfs_locations or [], p.locations or [])
            ),
            setup=p.setup or "",
            release=p.release or "",
            project=p.project or "",
            processors=ref.config.processors,
            tags=tuple(ref.config.tags),
            required_tags=tuple(ref.config.required_tags),
            extensions=tuple(p.extensions or ()),
            wn_vo=p.wn_vo or "",
            extra_options=tuple(p.extra_options or ()),
            ca_pem=ca_pem,
            ca_path=p.ca_path or "",
            environment=dict(p.environment or {}),
            **optional,
        )

    def _manifest_ca(self, ref: QueueRef) -> Path | None:
        return ref.pilot.ca_file or self.settings.server.ca_bundle

    def prepared(self, ref: QueueRef) -> PreparedWrapper:
        prepared = self._prepared.get(ref.key)
        manifest = ref.pilot.manifest
        if manifest:  # prepared again when the published files change; failed while unreadable
            path = f"sites.{ref.site}.ces.{ref.ce}.queues.{ref.queue}.pilot"
            try:
                digest = self.manifests.get(manifest, self._manifest_ca(ref)).digest
            except ConfigError as exc:
                raise ConfigError(f"{path}: {exc}") from exc
            if self._manifest_digest.get(ref.key) != digest:
                prepared = None
                self._manifest_digest[ref.key] = digest
        if prepared is None:
            path = f"sites.{ref.site}.ces.{ref.ce}.queues.{ref.queue}.pilot"
            try:
                prepared = self.wrappers.prepare(self.wrapper_options(ref))
            except ConfigError as exc:
                raise ConfigError(f"{path}: {exc}") from exc
            except OSError as exc:
                raise ConfigError(f"{path}: {exc}") from exc
            self._prepared[ref.key] = prepared
        return prepared

    def check(self) -> list[str]:
        """Problems found by preparing every enabled queue's wrapper (at start-up and reload)."""
        problems = []
        for ref in self.queues:
            if ref.enabled:
                try:
                    self.prepared(ref)
                except ConfigError as exc:
                    problems.append(str(exc))
        return problems

    async def close(self) -> None:
        for ce in self._ces.values():
            try:
                await ce.close()
            except Exception:
                log.exception("closing a CE failed")
        self._ces.clear()
        await self.credentials.aclose()
        await self.demand.aclose()

    # --- server helpers -----------------------------------------------------------------------

    def _server(self) -> ServerClient:
        if self.client is None:
            raise ServerUnavailable("no server configured")
        return self.client

    @staticmethod
    def _queue_search(ref: QueueRef) -> list[ScalarSearch | VectorSearch]:
        return [
            ScalarSearch(parameter="GridSite", operator="eq", value=ref.site),
            ScalarSearch(parameter="DestinationSite", operator="eq", value=ref.ce),
            ScalarSearch(parameter="Queue", operator="eq", value=ref.ce_queue),
            VectorSearch(parameter="Status", operator="in", values=list(LIVE)),
        ]

    async def live_pilots(self, ref: QueueRef) -> list[dict[str, Any]]:
        """The queue's pilots that are not final, from the server."""
        params = SearchParams(
            parameters=["PilotStamp", "PilotJobReference", "Status", "SubmissionTime"],
            search=self._queue_search(ref),
        )
        return await self._server().search(params)

    async def server_counts(self, ref: QueueRef) -> tuple[int, int]:
        rows = await self._server().summary(
            SummaryParams(grouping=["Status"], search=self._queue_search(ref))
        )
        by_status = {str(r.get("Status")): int(r.get("count", 0)) for r in rows}
        waiting = sum(by_status.get(s, 0) for s in ("Submitted", "Waiting", "Unknown"))
        return waiting, by_status.get("Running", 0)

    async def leases(self, refs: Sequence[QueueRef]) -> set[str]:
        """The queues this instance may work now (all of them without leases)."""
        keys = [r.key for r in refs]
        if not self.settings.director.leases or not keys:
            return set(keys)
        # No silent fallback when the server cannot grant leases: two directors would then
        # both submit to every queue. An operator who runs one director says `leases: false`.
        grant = await self._server().take_leases(
            self.settings.director.name, keys, self.settings.director.lease_ttl_seconds
        )
        return set(grant.granted)

    async def release_leases(self) -> None:
        if self.client is None or not self.settings.director.leases:
            return
        keys = [r.key for r in self.queues]  # monitoring leases disabled queues too
        if keys:
            try:
                await self.client.release_leases(self.settings.director.name, keys)
            except ServerError as exc:
                log.warning("releasing leases failed: %s", exc)

    # --- submission ---------------------------------------------------------------------------

    async def run_cycle(
        self,
        *,
        dry_run: bool = False,
        output: Path | None = None,
        only: str | None = None,
    ) -> list[QueueOutcome]:
        """One submission cycle over every queue (or the queue named `only`), in the phases
        the module docstring describes; one outcome per queue, in configuration order."""
        started = self.clock()
        refs = [r for r in self.queues if only is None or only in (r.key, r.queue)]
        if only is not None and not refs:
            raise ConfigError(f"--queue {only}: no such queue (site/ce/queue or queue name)")
        granted: set[str] = set()
        lease_error = ""
        if not dry_run:
            try:
                granted = await self.leases([r for r in refs if r.enabled])
            except ServerError as exc:
                lease_error = f"leases: {exc}"
                log.error("submission cycle: no queue can submit: %s", lease_error)
        await self.bans.refresh(self.client, self.queues, dry_run=dry_run)
        try:
            await self.demand.refresh()
        except DirectorError as exc:  # unknown demand: the source's demand() decides (0)
            log.warning("demand source: %s", exc)
        outcomes = [
            QueueOutcome(queue=r.key, ce=r.ce, kind=str(getattr(r.entry.ce, "kind", "?")))
            for r in refs
        ]
        todo = [
            (r, o)
            for r, o in zip(refs, outcomes, strict=True)
            if self._may_submit(r, o, granted, lease_error, dry_run)
        ]
        unreferenced: dict[QueueId, list[dict[str, Any]]] = {}
        if todo and not dry_run:
            try:
                unreferenced = await self.unreferenced_pilots([r for r, _ in todo])
            except Exception as exc:  # the server is down: no queue can submit this cycle
                _log_unexpected(exc, "reconciliation search")
                log.error("submission cycle: no queue can submit: %s", exc)
                for _, o in todo:
                    o.error = o.why = f"{type(exc).__name__}: {exc}"
                todo = []
        semaphore = asyncio.Semaphore(self.settings.director.concurrency)

        async def plan_one(ref: QueueRef, outcome: QueueOutcome) -> _Batch | None:
            pilots = unreferenced.get(queue_id(ref), [])
            return await self._guarded(
                semaphore, outcome, lambda: self._plan(ref, outcome, pilots, dry_run)
            )

        planned = await asyncio.gather(*(plan_one(r, o) for r, o in todo))
        batches = [b for b in planned if b is not None]
        if batches and self.stopping:
            for b in batches:
                b.outcome.why = "stopping"
            batches = []
        if not dry_run and batches:
            await self._register(batches)
        for b in batches:
            b.outcome.stamps = b.stamps

        async def submit_one(batch: _Batch) -> None:
            await self._guarded(
                semaphore, batch.outcome, lambda: self._submit(batch, dry_run, output)
            )

        await asyncio.gather(*(submit_one(b) for b in batches if b.outcome.error is None))
        if not dry_run and batches:
            await self._record(batches)
        for o in outcomes:
            self.metrics.backoff_seconds.labels(o.queue).set(self.backoff.remaining(o.queue))
            self._log("submission", o)
        self.metrics.cycle_seconds.labels("submission").observe(self.clock() - started)
        if not dry_run:
            await self.report_queues(started, outcomes)
            self._cycle_done("submission", not any(o.error or o.failed for o in outcomes))
        return outcomes

    def _cycle_done(self, cycle: str, ok: bool) -> None:
        """The metrics an operator alerts on: the last cycle without a failed queue, and when
        the director's token runs out (as of its last reading)."""
        if ok:
            self.metrics.last_success.labels(cycle).set(self.clock())
        if self.client is not None and self.client.token is not None:
            expires_at = self.client.token.expires_at
            if expires_at is not None:
                self.metrics.token_expiry.set(expires_at)

    async def report_queues(self, started: float, outcomes: Sequence[QueueOutcome]) -> None:
        """Tell the server every queue's limits, back-off and last cycle, for the monitor
        page. Best effort: a failed report is logged and the cycle goes on."""
        for o in outcomes:
            counted = o.counts_from in ("ce", "server")
            self._last_cycle[o.queue] = LastCycle(
                at=started,
                submitted=o.submitted,
                waiting=o.waiting if counted else None,
                running=o.running if counted else None,
                error=o.error,
            )
        if self.client is None:
            return
        try:
            body = build_report(self.queues, self.backoff, self._last_cycle, self.clock())
            await self.client.report_queues(body)
        except (DirectorError, OSError, ValueError) as exc:
            log.warning("report queues=%d error=%s", len(self.queues), _kv(str(exc)))
        except Exception:
            log.exception("report queues=%d: unexpected error", len(self.queues))

    def _may_submit(
        self,
        ref: QueueRef,
        outcome: QueueOutcome,
        granted: set[str],
        lease_error: str,
        dry_run: bool,
    ) -> bool:
        """Whether the queue takes part in this cycle; if not, `outcome.why` says why."""
        if not ref.enabled:
            outcome.why = "disabled"
        elif self.stopping:
            outcome.why = "stopping"
        elif self.backoff.blocked(ref.key):
            outcome.why = (
                f"backed off {self.backoff.remaining(ref.key):.0f}s: {self.backoff.reason(ref.key)}"
            )
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
        work: Callable[[], Awaitable[T]],
    ) -> T | None:
        """One queue's part of a phase, at most `director.concurrency` queues at once, bounded
        by `director.queue_timeout_seconds`: an error or a timeout becomes that queue's outcome
        (None here) and never holds up or fails the other queues."""
        timeout = self.settings.director.queue_timeout_seconds
        async with semaphore:
            t0 = self.clock()
            try:
                async with asyncio.timeout(timeout):
                    return await work()
            except TimeoutError:
                outcome.error = outcome.why = f"timed out after {timeout:g}s"
                self.backoff.failure(outcome.queue, outcome.error)
            except (ServerError, CEError, ConfigError, OSError) as exc:
                outcome.error = outcome.why = f"{type(exc).__name__}: {exc}"
                if isinstance(exc, CEError):
                    self.backoff.failure(outcome.queue, exc.reason)
            except Exception as exc:
                log.exception("queue %s: unexpected error", outcome.queue)
                outcome.error = outcome.why = f"{type(exc).__name__}: {exc}"
            finally:
                outcome.seconds += self.clock() - t0
        return None

    async def _counts(
        self, ref: QueueRef, ce: ComputingElement, dry_run: bool, outcome: QueueOutcome
    ) -> tuple[int, int]:
        try:
            load = await ce.load(self.spec_for(ref))
        except CEError as exc:
            log.info("queue %s: CE cannot count (%s); counting from the server", ref.key, exc)
        else:
            outcome.counts_from = "ce"
            return load.waiting, load.running
        try:
            counts = await self.server_counts(ref)
        except ServerUnavailable:
            if not dry_run:
                raise
            outcome.counts_from = "none (no CE count, no server)"
            return 0, 0
        outcome.counts_from = "server"
        return counts

    async def _plan(
        self,
        ref: QueueRef,
        outcome: QueueOutcome,
        unreferenced: Sequence[dict[str, Any]],
        dry_run: bool,
    ) -> _Batch | None:
        """Phase 1 for one queue: reconcile, count, plan; the batch to register and submit, or
        None when the queue wants no pilot now."""
        ce = self.ce_for(ref)
        spec = self.spec_for(ref)
        if ref.pilot.manifest:
            await self.manifests.refresh(ref.pilot.manifest, self._manifest_ca(ref))
        prepared = self.prepared(ref)
        if not dry_run:
            await self.reconcile(ref, ce, spec, unreferenced)
        waiting, running = await self._counts(ref, ce, dry_run, outcome)
        outcome.waiting, outcome.running = waiting, running
        demand = self.demand.demand(ref, waiting)
        q = ref.config
        result = plan(
            Limits(q.max_total_pilots, q.max_waiting_pilots, q.pilots_per_cycle),
            waiting,
            running,
            demand,
        )
        outcome.slots, outcome.demand, outcome.n, outcome.why = (
            result.slots,
            result.demand,
            result.n,
            result.why,
        )
        note = self.demand.explain(ref, detail=dry_run)  # which jobs the demand came from
        if note:
            outcome.why = f"{result.why}; {note}"
        if result.n == 0:
            return None
        if self.stopping:
            outcome.why = "stopping"
            return None
        stamps = [new_stamp() for _ in range(result.n)]
        return _Batch(ref, outcome, ce, spec, prepared, stamps)

    async def _register(self, batches: Sequence[_Batch]) -> None:
        """Phase 2: register every planned pilot and mint its secret, one call per VO (per
        `BULK_MAX` pilots). A failed call fails the queues it carried; the others go on."""
        client = self._server()
        cfg = self.settings.director.secret
        # one call per VO and use count (a queue that hands the secret to the pilot needs more)
        by_vo: dict[tuple[str, int | None], list[tuple[_Batch, str]]] = {}
        for b in batches:
            uses = b.prepared.secret_uses(cfg.use_count_max)
            by_vo.setdefault((b.ref.vo, uses), []).extend((b, s) for s in b.stamps)
        for (vo, uses), pilots in by_vo.items():
            constraints = SecretConstraints(
                expiration_minutes=cfg.expiration_minutes, pilot_secret_use_count_max=uses
            )
            for chunk in chunks(pilots, BULK_MAX):  # the models of one chunk at a time
                try:
                    registration = await client.register_bulk(
                        BulkRegistration(
                            vo=vo,
                            pilots=[
                                BulkPilot(
                                    pilot_stamp=s,
                                    grid_type=GRID_TYPES.get(b.outcome.kind, b.outcome.kind),
                                    grid_site=b.ref.site,
                                    destination_site=b.ref.ce,
                                    queue=b.ref.ce_queue,
                                )
                                for b, s in chunk
                            ],
                            mint_secrets=True,
                            secret_constraints=constraints,
                        )
                    )
                except Exception as exc:
                    _log_unexpected(exc, "registration")
                    for b, _ in chunk:
                        b.fail(f"{type(exc).__name__}: {exc}")
                    continue
                secret_of = {m.pilot_stamp: m.pilot_secret for m in registration.secrets}
                for b, s in chunk:
                    b.registered.append(s)
                    secret = secret_of.get(s)
                    if secret is None:
                        b.fail(f"ServerError: the server minted no secret for pilot {s}")
                    else:
                        b.secrets[s] = secret
                del secret_of

    async def _submit(self, batch: _Batch, dry_run: bool, output: Path | None) -> None:
        """Phase 3 for one queue: render its wrappers and submit them in one CE call (or write
        them out, in the dry run)."""
        if dry_run:
            self._write_dry_run(
                batch.ref, batch.ce, batch.spec, batch.prepared, batch.stamps, output
            )
            return
        submissions = [
            PilotSubmission(s, batch.prepared.render(s, batch.secrets[s])) for s in batch.stamps
        ]
        batch.secrets.clear()
        batch.submitting = True
        try:
            batch.results = await batch.ce.submit(batch.spec, submissions)
        except CEError as exc:
            batch.results = [
                SubmitResult(s, error=exc.reason, temporary=exc.temporary) for s in batch.stamps
            ]
        del submissions

    async def _record(self, batches: Sequence[_Batch]) -> None:
        """Phase 4: references patched on, failed pilots Aborted with their reason, their
        secrets revoked, all queues at once (per `BULK_MAX` pilots).

        Pilots registered for a queue that failed before its CE call are Aborted too; a queue
        that failed during its CE call (a timeout) is left to the next reconciliation, which
        finds out from the CE what it holds. Secrets are revoked before the Aborted status is
        patched on, so a pilot the server shows as Aborted never keeps a usable secret."""
        client = self._server()
        # (batch, stamp, reference, reason for Aborting): the models are made one chunk at a
        # time, 100,000 of them at once would be the director's largest allocation
        rows: list[tuple[_Batch, str, str | None, str | None]] = []
        for b in batches:
            if b.results is not None:
                for r in b.results:
                    if r.ok:
                        rows.append((b, r.stamp, r.reference, None))
                    else:
                        rows.append((b, r.stamp, None, (r.error or "submission failed")[:255]))
            elif not b.submitting:
                reason = f"not submitted: {b.outcome.error or 'unknown'}"[:255]
                rows.extend((b, stamp, None, reason) for stamp in b.registered)
        failed = [row for row in rows if row[3] is not None]
        unrevoked: set[str] = set()
        for chunk in chunks(failed, BULK_MAX):
            try:
                await client.revoke_secrets([stamp for _, stamp, _, _ in chunk])
            except Exception as exc:
                _log_unexpected(exc, "revoking secrets")
                for b, stamp, _, _ in chunk:  # left live: the reconciliation Aborts them later
                    unrevoked.add(stamp)
                    b.record_error(f"{type(exc).__name__}: {exc}")
        if unrevoked:
            rows = [row for row in rows if row[1] not in unrevoked]
        for chunk in chunks(rows, BULK_MAX):
            updates = {
                stamp: PilotMetadata(pilot_job_reference=reference)
                if reason is None
                else PilotMetadata(status=PilotStatus.ABORTED, status_reason=reason)
                for _, stamp, reference, reason in chunk
            }
            try:
                await client.patch_metadata(updates)
            except Exception as exc:
                _log_unexpected(exc, "patching references")
                for b, _, _, _ in chunk:
                    b.record_error(f"{type(exc).__name__}: {exc}")
            del updates
        for b in batches:
            if b.results is not None:
                self._count_submission(b)

    def _count_submission(self, batch: _Batch) -> None:
        """Counts, metrics and back-off of a queue whose CE call answered; a failed PATCH or
        revocation is the queue's error (the reconciliation finishes the job next cycle)."""
        assert batch.results is not None
        outcome, key = batch.outcome, batch.ref.key
        failed = [r for r in batch.results if not r.ok]
        outcome.submitted = len(batch.results) - len(failed)
        outcome.failed = len(failed)
        self.metrics.submitted.labels(key).inc(outcome.submitted)
        self.metrics.failed.labels(key).inc(outcome.failed)
        if failed:
            reason = (failed[0].error or "submission failed")[:255]
            rest = self.backoff.failure(key, reason)
            outcome.why = f"{len(failed)} failed ({reason}); backing off {rest:.0f}s"
        else:
            self.backoff.success(key)
        if batch.record_failure is not None:
            outcome.error = outcome.why = batch.record_failure

    def _write_dry_run(
        self,
        ref: QueueRef,
        ce: ComputingElement,
        spec: QueueSpec,
        prepared: PreparedWrapper,
        stamps: list[str],
        output: Path | None,
    ) -> None:
        if output is None:
            return
        folder = output / _safe(ref.site) / _safe(ref.ce) / _safe(ref.queue)
        folder.mkdir(parents=True, exist_ok=True)
        pilots = [PilotSubmission(s, prepared.render(s, DRY_RUN_SECRET)) for s in stamps]
        for pilot in pilots:
            path = folder / f"{pilot.stamp}.sh"
            path.write_text(pilot.wrapper)
            path.chmod(0o700)
        for name, text in ce.describe(spec, pilots).items():
            (folder / _safe(name)).write_text(text)

    # --- reconciliation -----------------------------------------------------------------------

    async def unreferenced_pilots(
        self, refs: Sequence[QueueRef]
    ) -> dict[QueueId, list[dict[str, Any]]]:
        """The live pilots without a CE reference of these queues, by `queue_id`: one search
        per `SEARCH_QUEUES` queues instead of one per queue. Only those pilots matter to the
        reconciliation, so the others are dropped page by page (a busy site has many)."""
        wanted = {queue_id(r) for r in refs}
        found: dict[QueueId, list[dict[str, Any]]] = {}
        for chunk in chunks(sorted(wanted), SEARCH_QUEUES):
            params = SearchParams(
                parameters=[
                    "PilotStamp",
                    "PilotJobReference",
                    "Status",
                    "SubmissionTime",
                    "GridSite",
                    "DestinationSite",
                    "Queue",
                ],
                search=[
                    VectorSearch(
                        parameter=name, operator="in", values=sorted({q[i] for q in chunk})
                    )
                    for i, name in enumerate(("GridSite", "DestinationSite", "Queue"))
                ]
                + [VectorSearch(parameter="Status", operator="in", values=list(LIVE))],
            )
            async for rows in self._server().search_pages(params, SEARCH_PAGE):
                for row in rows:
                    key = (
                        str(row.get("GridSite")),
                        str(row.get("DestinationSite")),
                        str(row.get("Queue")),
                    )
                    if key in wanted and ce_reference(row) is None:
                        found.setdefault(key, []).append(row)
        return found

    async def reconcile(
        self,
        ref: QueueRef,
        ce: ComputingElement,
        spec: QueueSpec,
        unreferenced: Sequence[dict[str, Any]],
    ) -> None:
        """CE jobs vs server records, by stamp: patch missing references on, Abort pilots that
        were registered but never reached the CE (after the grace period).

        `unreferenced` are the queue's live pilots without a reference, from
        `unreferenced_pilots` at the start of the cycle. No other director works this queue
        (the lease) and this one has not submitted to it yet this cycle, so they are still
        current."""
        if not unreferenced:
            return
        try:
            jobs = await ce.list_jobs(spec)
        except CEError as exc:
            log.info("queue %s: cannot list CE jobs for reconciliation: %s", ref.key, exc)
            return
        on_ce = {job.stamp: job for job in jobs}
        now = self.clock()
        grace = self.settings.director.submit_grace_seconds
        updates: dict[str, PilotMetadata] = {}
        never: list[str] = []
        for pilot in unreferenced:
            stamp = str(pilot.get("PilotStamp"))
            if ce_reference(pilot) is not None:
                continue
            job = on_ce.get(stamp)
            if job is not None:
                updates[stamp] = PilotMetadata(pilot_job_reference=job.reference)
                continue
            submitted = _parse_time(pilot.get("SubmissionTime"))
            if submitted is not None and now - submitted > grace:
                never.append(stamp)
                updates[stamp] = PilotMetadata(
                    status=PilotStatus.ABORTED,
                    status_reason="registered but never submitted to the CE",
                )
        if never:  # first: a pilot the server shows as Aborted never keeps a usable secret
            await self._server().revoke_secrets(never)
        if updates:
            await self._server().patch_metadata(updates)
            log.info(
                "reconcile queue=%s references=%d never_submitted=%d",
                ref.key,
                len(updates) - len(never),
                len(never),
            )
        if never:
            self.metrics.aborted.labels(ref.key).inc(len(never))

    # --- monitoring ---------------------------------------------------------------------------

    async def monitor_cycle(self, *, only: str | None = None) -> list[MonitorOutcome]:
        started = self.clock()
        # Disabled queues too: disabling stops submission, not the follow-up of live pilots.
        refs = [r for r in self.queues if only is None or only in (r.key, r.queue)]
        try:
            granted = await self.leases(refs)
        except ServerError as exc:
            log.error("monitoring cycle: no queue can be followed: leases: %s", exc)
            self._cycle_done("monitoring", False)
            return [MonitorOutcome(r.key, r.ce, error=str(exc)) for r in refs]
        semaphore = asyncio.Semaphore(self.settings.director.concurrency)

        async def one(ref: QueueRef) -> MonitorOutcome:
            outcome = MonitorOutcome(ref.key, ref.ce)
            t0 = self.clock()
            if ref.key not in granted:
                outcome.why = "lease held by another director"
                return outcome
            if self.stopping:
                outcome.why = "stopping"
                return outcome
            async with semaphore:
                try:
                    async with asyncio.timeout(self.settings.director.queue_timeout_seconds):
                        await self._monitor(ref, outcome)
                except (ServerError, CEError, OSError, TimeoutError) as exc:
                    outcome.error = outcome.why = f"{type(exc).__name__}: {exc}"
                except Exception as exc:
                    log.exception("queue %s: unexpected monitoring error", ref.key)
                    outcome.error = outcome.why = f"{type(exc).__name__}: {exc}"
            outcome.seconds = self.clock() - t0
            self._log("monitoring", outcome)
            return outcome

        outcomes = list(await asyncio.gather(*(one(r) for r in refs)))
        self.metrics.cycle_seconds.labels("monitoring").observe(self.clock() - started)
        self._cycle_done("monitoring", not any(o.error for o in outcomes))
        return outcomes

    def _stuck(self, trackers: dict[str, float], stamp: str, now: float, limit: float) -> bool:
        since = trackers.setdefault(stamp, now)
        return now - since > limit

    async def _monitor(self, ref: QueueRef, outcome: MonitorOutcome) -> None:
        live_pilots = await self.live_pilots(ref)
        by_reference = {
            reference: p for p in live_pilots if (reference := ce_reference(p)) is not None
        }
        if not by_reference and not ref.enabled:
            return  # nothing to follow, and a disabled CE may be gone: leave it alone
        ce = self.ce_for(ref)
        spec = self.spec_for(ref)
        results = await ce.status(list(by_reference)) if by_reference else []
        now = self.clock()
        cfg = self.settings.director
        updates: dict[str, PilotMetadata] = {}
        to_kill: list[str] = []
        ended: list[str] = []
        aborted_by_ce: list[str] = []
        live_counts: dict[str, int] = {}
        for result in results:
            pilot = by_reference.get(result.reference)
            if pilot is None or result.status is None:
                continue
            outcome.checked += 1
            stamp = str(pilot["PilotStamp"])
            try:
                current = PilotStatus(str(pilot.get("Status")))
            except ValueError:
                current = PilotStatus.UNKNOWN
            new = result.status
            # Held and still alive by the CE's map (ARC HELD, HTCondor spooling): wait, then
            # Abort. A hold the map already calls final (a failed HTCondor pilot) is recorded now.
            held = "HELD" in result.ce_state.upper() and new not in FINAL_STATUSES
            if new == PilotStatus.UNKNOWN or held:
                trackers = self._held_since if held else self._unknown_since
                limit = cfg.held_timeout_seconds if held else cfg.unknown_timeout_seconds
                if self._stuck(trackers, stamp, now, limit):
                    what = "held" if held else "in Unknown"
                    reason = f"{what} for more than {limit:.0f}s"
                    if result.reason:
                        reason += f": {result.reason}"
                    updates[stamp] = PilotMetadata(
                        status=PilotStatus.ABORTED, status_reason=reason[:255]
                    )
                    to_kill.append(result.reference)
                    trackers.pop(stamp, None)
                    outcome.aborted += 1
                    continue
                live_counts[current.value] = live_counts.get(current.value, 0) + 1
                if held or new == current:
                    continue
            else:
                self._unknown_since.pop(stamp, None)
                self._held_since.pop(stamp, None)
            if new in FINAL_STATUSES:
                meta: dict[str, Any] = {"status": new}
                if result.reason:
                    meta["status_reason"] = result.reason[:255]
                updates[stamp] = PilotMetadata(**meta)
                ended.append(result.reference)
                if new == PilotStatus.ABORTED:
                    aborted_by_ce.append(result.reason or result.ce_state)
                continue
            live_counts[new.value] = live_counts.get(new.value, 0) + 1
            if new != current and _RANK.get(new, 0) > _RANK.get(current, 0):
                updates[stamp] = PilotMetadata(status=new)
        if updates:
            await self._server().patch_metadata(updates)
        outcome.updated = len(updates)
        if to_kill:
            await ce.kill(to_kill)
            self.metrics.aborted.labels(ref.key).inc(len(to_kill))
        if aborted_by_ce:
            reason = f"pilots aborted on the CE: {aborted_by_ce[0]}"
            rest = self.backoff.failure(ref.key, reason)
            log.warning("queue %s: backing off %.0fs: %s", ref.key, rest, reason)
        for status in LIVE:
            self.metrics.live_pilots.labels(ref.key, status).set(live_counts.get(status, 0))
        if cfg.clean_finished:
            live_stamps = {str(p.get("PilotStamp")) for p in live_pilots}
            outcome.cleaned = await self._clean(
                ref, ce, spec, ended, set(by_reference), live_stamps
            )

    async def _clean(
        self,
        ref: QueueRef,
        ce: ComputingElement,
        spec: QueueSpec,
        ended: list[str],
        live: set[str],
        live_stamps: set[str],
    ) -> int:
        """Remove CE leftovers: jobs that ended now, and ended jobs the server has as final.

        An ended job whose pilot the server still has as live without its reference (a crash
        between submission and the references' PATCH) is left for the reconciliation to
        register: cleaning it first would make that pilot look never submitted."""
        leftovers = set(ended)
        try:
            for job in await ce.list_jobs(spec):
                if (
                    job.status in FINAL_STATUSES
                    and job.reference not in live
                    and job.stamp not in live_stamps
                ):
                    leftovers.add(job.reference)
        except CEError as exc:
            log.info("queue %s: cannot list CE jobs for cleaning: %s", ref.key, exc)
        if not leftovers:
            return 0
        results = await ce.clean(sorted(leftovers))
        return sum(1 for r in results if r.ok)

    # --- logging ------------------------------------------------------------------------------

    def _log(self, cycle: str, outcome: QueueOutcome | MonitorOutcome) -> None:
        """One line per queue and cycle; WARNING when the queue failed, had submissions fail
        or rests in back-off (so `journalctl -p warning` shows them), INFO otherwise. With
        `log_format: json` the values go to the JSON formatter as fields of their own."""
        failed = isinstance(outcome, QueueOutcome) and (
            outcome.failed > 0 or outcome.why.startswith("backed off")
        )
        level = logging.WARNING if outcome.error or failed else logging.INFO
        if not log.isEnabledFor(level):
            return  # a line per queue and cycle: 1,000 queues are worth not formatting them
        values = {f.name: getattr(outcome, f.name) for f in fields(outcome) if f.name != "stamps"}
        values = {"cycle": cycle, **values, "seconds": round(outcome.seconds, 3)}
        if self.settings.director.log_format == "json":
            log.log(level, "%s cycle of queue %s", cycle, outcome.queue, extra=values)
        else:
            log.log(
                level,
                "%s",
                " ".join(f"{k}={_kv(v)}" for k, v in values.items() if v not in (None, "")),
            )


def _kv(value: Any) -> str:
    text = str(value)
    if not text or any(c in text for c in ' "=\n'):
        return json.dumps(text)
    return text
