"""`site-director run`: the submission and monitoring cycles on APScheduler, with signals.

SIGTERM/SIGINT: no new cycle starts; the running one may finish its current step within
`director.shutdown_timeout_seconds`, then it is cancelled (the next start's reconciliation
heals whatever a cancellation left half-done); leases are released. SIGHUP: the configuration
is read again; a bad one is logged and the old one kept. Submission and monitoring never run
at the same time (one lock), so a reload always lands between cycles.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from director.client import ServerClient, make_client
from director.config import Settings
from director.errors import ConfigError
from director.loop import Director
from director.metrics import Metrics

log = logging.getLogger(__name__)


def client_for(settings: Settings) -> ServerClient:
    s = settings.server
    return make_client(
        str(s.url),
        token_file=s.token_file,
        token=s.token,
        ca_bundle=s.ca_bundle,
        timeout=s.timeout_seconds,
    )


def build_director(settings: Settings, metrics: Metrics | None = None) -> Director:
    """A director with its client; raises ConfigError when a queue's wrapper cannot be made."""
    director = Director(settings, client=client_for(settings), metrics=metrics)
    problems = director.check()
    if problems:
        raise ConfigError("\n".join(problems))
    return director


class Daemon:
    def __init__(self, load: Callable[[], Settings]) -> None:
        self._load = load
        self.settings = load()
        self.metrics = Metrics()
        self.director = build_director(self.settings, self.metrics)
        self._lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._running: set[asyncio.Task[Any]] = set()
        self._scheduler: AsyncIOScheduler | None = None

    def stop(self) -> None:
        self._stop.set()
        self.director.stopping = True

    async def _guarded(self, name: str, cycle: Callable[[], Any]) -> None:
        if self._stop.is_set():
            return
        task = asyncio.current_task()
        if task is not None:
            self._running.add(task)
        try:
            async with self._lock:
                if self._stop.is_set():
                    return
                await cycle()
        except asyncio.CancelledError:
            log.warning("%s cycle cancelled by shutdown", name)
            raise
        except Exception:
            log.exception("%s cycle crashed", name)
        finally:
            if task is not None:
                self._running.discard(task)

    async def submission(self) -> None:
        await self._guarded("submission", lambda: self.director.run_cycle())

    async def monitoring(self) -> None:
        await self._guarded("monitoring", lambda: self.director.monitor_cycle())

    def _schedule(self, scheduler: AsyncIOScheduler) -> None:
        d = self.settings.director
        now = datetime.now(UTC)
        for job_id, func, seconds in (
            ("submission", self.submission, d.submission_interval_seconds),
            ("monitoring", self.monitoring, d.monitoring_interval_seconds),
        ):
            if scheduler.get_job(job_id) is not None:
                scheduler.reschedule_job(job_id, trigger="interval", seconds=seconds)
            else:
                scheduler.add_job(
                    func,
                    "interval",
                    seconds=seconds,
                    id=job_id,
                    next_run_time=now,
                    max_instances=1,
                    coalesce=True,
                    misfire_grace_time=None,
                )

    async def reload(self) -> None:
        if self._stop.is_set():
            return
        try:
            settings = self._load()
        except ConfigError as exc:
            log.error(
                "reload refused, keeping the running configuration: %s",
                str(exc).replace("\n", "; "),
            )
            return
        async with self._lock:
            try:
                director = build_director(settings, self.metrics)
            except ConfigError as exc:
                log.error("reload refused: %s", str(exc).replace("\n", "; "))
                return
            director.backoff = self.director.backoff
            old = self.director
            self.director, self.settings = director, settings
            await old.close()
            if old.client is not None:
                await old.client.aclose()
            if self._scheduler is not None:
                self._schedule(self._scheduler)
        log.info("configuration reloaded: queues=%d", len(self.director.queues))

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self.reload()))
        d = self.settings.director
        if d.metrics_port is not None:
            self.metrics.serve(d.metrics_port, d.metrics_host)
        scheduler = AsyncIOScheduler(timezone=UTC)
        self._scheduler = scheduler
        self._schedule(scheduler)
        scheduler.start()
        log.info(
            "director started: name=%s queues=%d submission_interval=%s monitoring_interval=%s",
            d.name,
            len(self.director.queues),
            d.submission_interval_seconds,
            d.monitoring_interval_seconds,
        )
        try:
            await self._stop.wait()
        finally:
            # pause, drain, then shut down: APScheduler's shutdown cancels the running jobs,
            # which would cut the cycle's step short (and log a CancelledError traceback)
            scheduler.pause()
            await self._drain()
            scheduler.shutdown(wait=False)
            await self.director.release_leases()
            await self.director.close()
            if self.director.client is not None:
                await self.director.client.aclose()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            log.info("director stopped")
        return 0

    async def _drain(self) -> None:
        """Let the running cycle finish its step, within the shutdown timeout."""
        running = set(self._running)
        if not running:
            return
        _, pending = await asyncio.wait(
            running, timeout=self.settings.director.shutdown_timeout_seconds
        )
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
