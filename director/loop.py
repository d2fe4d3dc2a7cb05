"""`Director`: the director's cycles behind one object, what lives across cycles kept in one
place. A facade only: each cycle's work is in `director.cycle` (its docstring maps the
modules). One `run_cycle()` serves `run`, `once` and the dry run; `monitor_cycle()` follows
live pilots."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from director.backoff import Backoff
from director.bans import BanList
from director.ce.base import ComputingElement, QueueSpec
from director.ce.credentials import CredentialSource
from director.client import ServerClient
from director.config import QueueRef, Settings
from director.cycle.context import CycleContext
from director.cycle.leases import Leases
from director.cycle.monitoring import Monitoring
from director.cycle.outcomes import MonitorOutcome, QueueOutcome
from director.cycle.queues import QueueFactory, spec_for
from director.cycle.submission import Submission
from director.demand import DemandSource, make_demand_source
from director.metrics import Metrics
from director.pilot_files import ManifestCache
from director.wrapper import PreparedWrapper, WrapperOptions


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
        cfg = settings.director.backoff
        self.context = CycleContext(
            settings=settings,
            client=client,
            clock=clock,
            metrics=metrics or Metrics(),
            backoff=Backoff(cfg.initial_seconds, cfg.max_seconds, cfg.factor, clock=clock),
            queues=list(settings.queues()),
        )
        self.factory = QueueFactory(settings, client, ces)
        self.leases = Leases(self.context)
        self.submission = Submission(
            self.context, self.factory, self.leases, demand or make_demand_source(settings)
        )
        self.monitoring = Monitoring(self.context, self.factory, self.leases)

    # --- the shared state, as the daemon, the commands and the tests see it -------------------

    @property
    def settings(self) -> Settings:
        return self.context.settings

    @property
    def client(self) -> ServerClient | None:
        return self.context.client

    @property
    def clock(self) -> Callable[[], float]:
        return self.context.clock

    @property
    def metrics(self) -> Metrics:
        return self.context.metrics

    @property
    def backoff(self) -> Backoff:
        return self.context.backoff

    @backoff.setter
    def backoff(self, backoff: Backoff) -> None:
        """The daemon keeps the back-off across a reload."""
        self.context.backoff = backoff

    @property
    def queues(self) -> list[QueueRef]:
        return self.context.queues

    @queues.setter
    def queues(self, queues: list[QueueRef]) -> None:
        self.context.queues = queues

    @property
    def stopping(self) -> bool:
        return self.context.stopping

    @stopping.setter
    def stopping(self, stopping: bool) -> None:
        """Set on SIGTERM: queues not yet started are skipped, and a queue stops before its
        next registration; a batch already registered is still submitted and recorded."""
        self.context.stopping = stopping

    @property
    def demand(self) -> DemandSource:
        return self.submission.demand

    @property
    def bans(self) -> BanList:
        return self.submission.bans

    @property
    def manifests(self) -> ManifestCache:
        return self.factory.manifests

    @property
    def credentials(self) -> CredentialSource:
        return self.factory.credentials

    # --- queues -------------------------------------------------------------------------------

    def ce_for(self, ref: QueueRef) -> ComputingElement:
        return self.factory.ce_for(ref)

    @staticmethod
    def spec_for(ref: QueueRef) -> QueueSpec:
        return spec_for(ref)

    def wrapper_options(self, ref: QueueRef) -> WrapperOptions:
        return self.factory.wrapper_options(ref)

    def prepared(self, ref: QueueRef) -> PreparedWrapper:
        return self.factory.prepared(ref)

    def check(self) -> list[str]:
        """Problems found by preparing every enabled queue's wrapper (at start-up and reload)."""
        return self.factory.check(self.queues)

    # --- cycles -------------------------------------------------------------------------------

    async def run_cycle(
        self, *, dry_run: bool = False, output: Path | None = None, only: str | None = None
    ) -> list[QueueOutcome]:
        """One submission cycle over every queue (or the queue named `only`); one outcome per
        queue, in configuration order (`director.cycle.submission`)."""
        return await self.submission.run(dry_run=dry_run, output=output, only=only)

    async def monitor_cycle(self, *, only: str | None = None) -> list[MonitorOutcome]:
        """One monitoring cycle (`director.cycle.monitoring`)."""
        return await self.monitoring.run(only=only)

    async def release_leases(self) -> None:
        await self.leases.release()

    async def close(self) -> None:
        await self.factory.close()
        await self.demand.aclose()
