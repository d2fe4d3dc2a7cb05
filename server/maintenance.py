"""Maintenance: purge what can never be used again, and apply the retention periods.

One run removes: pilots by age and status with DIRAC's PilotStatusAgent defaults (submitted
more than `pilot_retention_days` ago whatever their status, Aborted ones after
`aborted_pilot_retention_days`), expired, used-up and revoked secrets, expired refresh tokens
and old family revocations, log lines older than `log_retention_days` and those of deleted
pilots. Each part is its own transaction, so an interrupted run loses nothing. On PostgreSQL it
first makes the log table's daily partitions `log_partition_days_ahead` days ahead, and the log
retention drops whole days' partitions (server.db.log_partitions).

The server runs it on a schedule (`server.scheduler`); `site-director maintenance` runs the same
`run_maintenance` once, for cron or a systemd timer (the command is in `server.cli`). Each run
logs one line with what it removed and feeds the Prometheus figures below.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

from prometheus_client import Counter, Gauge

from server.clock import utcnow
from server.context import ServerContext
from server.db import pilots as pilots_db
from server.logic import auth as auth_logic
from server.logic import logs as logs_logic
from server.logic import secrets as secrets_logic
from server.models import PilotStatus

log = logging.getLogger(__name__)

REMOVED = Counter(
    "site_director_server_maintenance_removed_total",
    "Rows removed by the maintenance, by kind",
    ["what"],
)
LAST_RUN = Gauge(
    "site_director_server_maintenance_last_run_timestamp_seconds",
    "When this process last finished a maintenance run (Unix time)",
)


@dataclass(frozen=True)
class MaintenanceReport:
    pilots: int
    aborted_pilots: int
    secrets: int
    refresh_tokens: int
    families: int
    log_lines: int

    def __str__(self) -> str:
        return (
            f"pilots={self.pilots} aborted_pilots={self.aborted_pilots} "
            f"secrets={self.secrets} refresh_tokens={self.refresh_tokens} "
            f"revoked_families={self.families} log_lines={self.log_lines}"
        )


async def purge_pilots(
    ctx: ServerContext, days: int, *, statuses: list[str] | None = None, now: datetime
) -> int:
    """Pilots submitted more than `days` ago (with one of `statuses`, if given); 0 keeps all.

    The age is the submission time, as DIRAC's PilotAgentsDB.clearPilots counts it."""
    if days <= 0:
        return 0
    async with ctx.db.transaction() as conn:
        return await pilots_db.delete_pilots(
            conn, older_than=now - timedelta(days=days), statuses=statuses
        )


async def run_maintenance(
    ctx: ServerContext,
    log_retention_days: int | None = None,
    *,
    pilot_retention_days: int | None = None,
    aborted_pilot_retention_days: int | None = None,
    now: datetime | None = None,
) -> MaintenanceReport:
    """One maintenance run; a retention left None is taken from the settings."""
    settings = ctx.settings
    now = now or utcnow()
    if pilot_retention_days is None:
        pilot_retention_days = settings.pilot_retention_days
    if aborted_pilot_retention_days is None:
        aborted_pilot_retention_days = settings.aborted_pilot_retention_days
    if log_retention_days is None:
        log_retention_days = settings.log_retention_days
    # first, so that today's and the coming days' lines have their partitions (PostgreSQL)
    await logs_logic.make_partitions(ctx, now)
    # Aborted first: counted apart, as DIRAC's two clearPilots queries are
    aborted = await purge_pilots(
        ctx, aborted_pilot_retention_days, statuses=[PilotStatus.ABORTED.value], now=now
    )
    pilots = await purge_pilots(ctx, pilot_retention_days, now=now)
    secrets = await secrets_logic.purge(ctx, now)
    tokens, families = await auth_logic.purge(ctx, now)
    lines = await logs_logic.purge(ctx, log_retention_days, now)  # after the pilots: their lines
    report = MaintenanceReport(pilots, aborted, secrets, tokens, families, lines)
    for what, count in asdict(report).items():
        REMOVED.labels(what).inc(count)
    LAST_RUN.set_to_current_time()
    log.info("maintenance done: %s", report)
    return report
