"""Alembic migrations, driven from code: `site-director server db upgrade` and server start-up.

The migration scripts live in `server/db/migrations` inside the package, so a plain
`pip install` carries them; no alembic.ini is needed.

Alembic (with Mako) weighs ~12 MB of resident memory once imported, for work done once at
start-up: it is imported only when an upgrade runs, and `site-director server` runs
it in a forked child (`upgrade_in_child`), so the long-running server never imports it.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from server.db.engine import Database

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy import Connection

_SCRIPTS = Path(__file__).resolve().parent / "migrations"


def alembic_config(connection: Connection | None = None) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(_SCRIPTS))
    cfg.attributes["connection"] = connection
    return cfg


def _upgrade(connection: Connection, revision: str) -> None:
    from alembic import command

    command.upgrade(alembic_config(connection), revision)


async def upgrade(db: Database, revision: str = "head") -> None:
    """Bring the schema to `revision`; safe to run on every start (a no-op when current)."""
    async with db.engine.begin() as conn:
        await conn.run_sync(_upgrade, revision)


class MigrationFailed(Exception):
    """The upgrade in the child process failed; the child printed why on stderr."""


def _upgrade_url(url: str) -> None:
    async def _run() -> None:
        db = Database(url)
        try:
            await upgrade(db)
        finally:
            await db.close()

    try:
        asyncio.run(_run())
    except Exception as exc:  # one line on stderr, as the command's own errors
        print(f"site-director: database upgrade: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(1)


def upgrade_in_child(url: str) -> None:
    """`upgrade` to head in a forked process, so that Alembic's memory leaves with it.

    Fork, not spawn: the child needs no fresh interpreter, and the URL (with its password)
    appears on no command line. Call it before any thread starts."""
    child = multiprocessing.get_context("fork").Process(
        target=_upgrade_url, args=(url,), name="site-director-migrate"
    )
    child.start()
    child.join()
    if child.exitcode != 0:
        raise MigrationFailed(f"the database upgrade failed (exit code {child.exitcode})")
