"""`site-director run`: the submission and monitoring cycles on APScheduler, with signals.

Under systemd (`Type=notify`, director/notify.py): READY=1 once the configuration is loaded and
the server has answered (until then the daemon retries, saying why in STATUS=). A token file
that cannot be read is no reason to stop (issue [1/6]: one line per cycle, and the token is
picked up when it appears): the daemon says READY=1 at once, without asking the server, with
STATUS= naming the token problem, and every cycle's STATUS= says it again while it lasts.
WATCHDOG=1 every half WatchdogSec while no cycle has outlasted the timeouts that bound it
(`cycle_limit`), so a hung cycle or a blocked event loop stops the pings and systemd restarts
the service; STOPPING=1 when a signal asks it to stop.

SIGTERM/SIGINT: no new cycle starts; the running one may finish its current step within
`director.shutdown_timeout_seconds`, then it is cancelled (the next start's reconciliation
heals whatever a cancellation left half-done); leases are released. SIGHUP: the configuration
is read again; a bad one is logged and the old one kept. Submission and monitoring never run
at the same time (one lock), so a reload always lands between cycles.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import logging
import math
import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from director.client import ServerClient, make_client
from director.config import Settings
from director.errors import ConfigError, ServerError, ServerUnavailable, TokenUnavailable
from director.loop import Director
from director.metrics import Metrics
from director.notify import Notifier

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


#: Sequential server calls a cycle may make besides its per-queue work (leases, searches,
#: registration, patches, report, bans), each bounded by server.timeout_seconds.
SERVER_CALLS_PER_CYCLE = 20
#: Waits between two attempts to reach the server at start-up: from the first to the last.
CONTACT_RETRY_SECONDS = (1.0, 30.0)


def cycle_limit(settings: Settings) -> float:
    """Seconds past which a running cycle is hung: its queues go through `concurrency` at a
    time, each phase of a queue (plan, then submit) bounded by queue_timeout_seconds, plus the
    server calls between the phases. A cycle that outlasts every timeout it is bound by is
    stuck somewhere no timeout reaches."""
    d = settings.director
    rounds = max(1, math.ceil(len(list(settings.queues())) / d.concurrency))
    return 2 * rounds * d.queue_timeout_seconds + (
        SERVER_CALLS_PER_CYCLE * settings.server.timeout_seconds
    )


class Daemon:
    def __init__(
        self,
        load: Callable[[], Settings],
        *,
        notifier: Notifier | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._load = load
        self.settings = load()
        self.metrics = Metrics()
        self.director = build_director(self.settings, self.metrics)
        self.notifier = notifier if notifier is not None else Notifier()
        self._clock = clock
        self._lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._running: set[asyncio.Task[Any]] = set()
        self._scheduler: AsyncIOScheduler | None = None
        self._cycle_started: float | None = None  # the clock when the running cycle began

    def stop(self) -> None:
        if not self._stop.is_set():
            self.notifier.stopping()
        self._stop.set()
        self.director.stopping = True

    def alive(self) -> bool:
        """True while the loop makes progress: no cycle runs, or the running one is younger
        than the limit its timeouts set. What the watchdog pings are sent on."""
        started = self._cycle_started
        return started is None or self._clock() - started < cycle_limit(self.settings)

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
                self._cycle_started = self._clock()
                try:
                    await cycle()
                finally:
                    self._cycle_started = None
                ended = f"{name} cycle ended {datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ}"
                problem = self._token_problem()
                self.notifier.status(ended if problem is None else f"{ended}; {problem}")
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
        if not await self._first_contact():
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            await self._close()
            return 0
        d = self.settings.director
        if d.metrics_port is not None:
            self.metrics.serve(d.metrics_port, d.metrics_host)
        pings = None
        if self.notifier.watchdog_interval is not None:
            faulthandler.enable()  # systemd's SIGABRT prints every thread's stack: where it hung
            pings = asyncio.create_task(self._watchdog(self.notifier.watchdog_interval))
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
        ready = f"queues={len(self.director.queues)}, server {self.settings.server.url}"
        problem = self._token_problem()
        self.notifier.ready(ready if problem is None else f"{ready}; {problem}")
        try:
            await self._stop.wait()
        finally:
            if pings is not None:
                pings.cancel()
            # pause, drain, then shut down: APScheduler's shutdown cancels the running jobs,
            # which would cut the cycle's step short (and log a CancelledError traceback)
            scheduler.pause()
            await self._drain()
            scheduler.shutdown(wait=False)
            await self.director.release_leases()
            await self._close()
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

    async def _close(self) -> None:
        await self.director.close()
        if self.director.client is not None:
            await self.director.client.aclose()

    def _token_problem(self) -> str | None:
        """Why the director's token cannot be read now (the file is missing, unreadable or
        empty), None when it can."""
        client = self.director.client
        if client is None or client.token is None:
            return None
        try:
            client.token.get()
        except TokenUnavailable as exc:
            return str(exc)
        return None

    async def _first_contact(self) -> bool:
        """Wait until the server answers, retrying with a growing pause and saying why in
        STATUS=; False when asked to stop first. Without a readable token the server is not
        asked (every call would fail before it is sent): the loop starts at once, each cycle
        logging the token problem in one line until the file is back."""
        client = self.director.client
        if client is None:
            return True
        problem = self._token_problem()
        if problem is not None:
            log.error("%s: starting anyway, each cycle tries it again", problem)
            return True
        pause, longest = CONTACT_RETRY_SECONDS
        while not self._stop.is_set():
            try:
                await client.health()
                return True
            except ServerUnavailable as exc:
                reason = str(exc)
            except ServerError as exc:  # an answer (a DiracX without /api/health): contact
                log.info("server answered the health check with %s: %s", exc.status, exc)
                return True
            log.warning("waiting for the server: %s (next try in %.0f s)", reason, pause)
            self.notifier.status(f"waiting for the server: {reason}")
            self.notifier.watchdog()  # retrying is progress
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=pause)
            pause = min(pause * 2, longest)
        return False

    async def _watchdog(self, interval: float) -> None:
        """WATCHDOG=1 every `interval` while the loop makes progress (`alive`). Runs on the
        event loop: if the loop is blocked, no ping goes out either."""
        warned = False
        while True:
            if self.alive():
                self.notifier.watchdog()
                warned = False
            elif not warned:
                log.error(
                    "a cycle has run longer than %.0f s, the limit its timeouts set: "
                    "watchdog pings stop, systemd restarts the director",
                    cycle_limit(self.settings),
                )
                self.notifier.status("hung: a cycle outlasted its timeouts")
                warned = True
            await asyncio.sleep(interval)
