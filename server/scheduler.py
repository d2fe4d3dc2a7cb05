"""The server's maintenance on a schedule, run by one process among all workers and hosts.

Every `maintenance_interval` seconds each server process (a uvicorn worker, another host) tries
to take or renew one row of the lease table the directors' per-queue leases live in; the process
holding it runs `run_maintenance`, the others skip their turn. The lease lasts two intervals: a
runner that dies stops renewing it, and the first process to tick after it expired takes over.
A process that stops cleanly gives the lease up, so another takes over at its next tick.

Directors' lease keys are `<vo>/<queue>`; this key has no slash, so it can never be a queue's.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from server.clock import utcnow
from server.context import ServerContext
from server.db import leases as leases_db
from server.maintenance import MaintenanceReport, run_maintenance

log = logging.getLogger(__name__)

LEASE_KEY = "server:maintenance"
JOB_ID = "maintenance"


def default_holder() -> str:
    """Unique per process and app: host, pid, and a random tail (tests run two apps in one)."""
    return f"{socket.gethostname()[:80]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class MaintenanceRunner:
    """Ticks on an APScheduler interval; runs the maintenance while it holds the lease."""

    def __init__(
        self,
        ctx: ServerContext,
        *,
        holder: str | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.ctx = ctx
        self.holder = holder or default_holder()
        self.clock = clock
        self.interval = ctx.settings.maintenance_interval
        self.lease_seconds = 2 * self.interval
        self.leading = False
        self.runs = 0
        self.last_report: MaintenanceReport | None = None
        self._scheduler: AsyncIOScheduler | None = None

    async def tick(self) -> MaintenanceReport | None:
        """Take or renew the lease; run the maintenance if it is ours. None: another runs it."""
        now = self.clock()
        async with self.ctx.db.transaction() as conn:
            held = await leases_db.acquire(
                conn,
                self.ctx.db.dialect,
                holder=self.holder,
                queues=[LEASE_KEY],
                now=now,
                expires_at=now + timedelta(seconds=self.lease_seconds),
            )
        if LEASE_KEY not in held:
            if self.leading:
                log.warning("maintenance: another server took the lease; %s stops", self.holder)
            self.leading = False
            return None
        if not self.leading:
            log.info("maintenance: %s runs it, every %gs", self.holder, self.interval)
        self.leading = True
        report = await run_maintenance(self.ctx, now=now)
        self.runs += 1
        self.last_report = report
        return report

    async def _scheduled_tick(self) -> None:
        try:
            await self.tick()
        except Exception as exc:  # the database away, a bad row: the next tick tries again
            log.warning("maintenance: run failed: %s: %s", type(exc).__name__, exc)

    def start(self) -> None:
        """Schedule the ticks on the running event loop; the first one after one interval."""
        scheduler = AsyncIOScheduler(timezone="UTC")
        scheduler.add_job(
            self._scheduled_tick,
            "interval",
            seconds=self.interval,
            id=JOB_ID,
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,
        )
        scheduler.start()
        self._scheduler = scheduler

    async def stop(self) -> None:
        """No more ticks; give the lease up if we hold it, so another takes over at once."""
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
            self._scheduler = None
        if not self.leading:
            return
        self.leading = False
        try:
            async with self.ctx.db.transaction() as conn:
                await leases_db.release(conn, holder=self.holder, queues=[LEASE_KEY])
        except Exception as exc:  # it expires on its own
            log.warning("maintenance: lease not released: %s: %s", type(exc).__name__, exc)
