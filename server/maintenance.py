"""`site-director maintenance`: purge what can never be used again, and apply log retention.

Meant for cron or a systemd timer: expired, used-up and revoked secrets; expired refresh tokens
and old family revocations; log lines older than `--log-retention-days` and lines of deleted
pilots. Each part is its own transaction, so an interrupted run loses nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from dataclasses import dataclass

from server.context import ServerContext
from server.db.engine import Database
from server.installation import open_server_keys
from server.logic import auth as auth_logic
from server.logic import logs as logs_logic
from server.logic import secrets as secrets_logic
from server.settings import ServerSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MaintenanceReport:
    secrets: int
    refresh_tokens: int
    families: int
    log_lines: int

    def __str__(self) -> str:
        return (
            f"secrets={self.secrets} refresh_tokens={self.refresh_tokens} "
            f"revoked_families={self.families} log_lines={self.log_lines}"
        )


async def run_maintenance(ctx: ServerContext, log_retention_days: int | None) -> MaintenanceReport:
    secrets = await secrets_logic.purge(ctx)
    tokens, families = await auth_logic.purge(ctx)
    lines = await logs_logic.purge(ctx, log_retention_days)
    report = MaintenanceReport(secrets, tokens, families, lines)
    log.info("maintenance done: %s", report)
    return report


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    m = sub.add_parser("maintenance", help="purge dead secrets and tokens; apply log retention")
    m.add_argument("--db", help="database URL (default: SQLite under --data-dir)")
    m.add_argument("--data-dir", help="keys and the SQLite database (default: ./data)")
    m.add_argument(
        "--log-retention-days",
        type=int,
        default=None,
        help="delete log lines received more than N days ago (default: keep them)",
    )
    m.set_defaults(func=maintenance_command)


def maintenance_command(args: argparse.Namespace) -> int:
    from server.cli import _settings_from

    settings: ServerSettings = _settings_from(args)
    if args.log_retention_days is not None and args.log_retention_days < 0:
        print("--log-retention-days must be 0 or more", file=sys.stderr)
        return 2

    async def _run() -> MaintenanceReport:
        db = Database(settings.database_url)
        try:
            ctx = ServerContext(settings=settings, db=db, keys=open_server_keys(settings))
            return await run_maintenance(ctx, args.log_retention_days)
        finally:
            await db.close()

    print(asyncio.run(_run()))
    return 0
