"""Alembic migrations, driven from code: `site-director server db upgrade` and server start-up.

The migration scripts live in `server/db/migrations` inside the package, so a plain
`pip install` carries them; no alembic.ini is needed.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection

from server.db.engine import Database

_SCRIPTS = Path(__file__).resolve().parent / "migrations"


def alembic_config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(_SCRIPTS))
    cfg.attributes["connection"] = connection
    return cfg


def _upgrade(connection: Connection, revision: str) -> None:
    command.upgrade(alembic_config(connection), revision)


async def upgrade(db: Database, revision: str = "head") -> None:
    """Bring the schema to `revision`; safe to run on every start (a no-op when current)."""
    async with db.engine.begin() as conn:
        await conn.run_sync(_upgrade, revision)
