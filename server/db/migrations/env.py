"""Alembic environment: runs on the connection `server.db.migrate` hands over."""

from __future__ import annotations

from alembic import context

from server.db.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `site-director server db upgrade`")
context.configure(
    connection=connection, target_metadata=metadata, render_as_batch=True, compare_type=True
)
with context.begin_transaction():
    context.run_migrations()
