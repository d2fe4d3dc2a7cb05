"""The pool of a MariaDB or PostgreSQL database (`server.db.engine.Database`): connections that
the database server closed (a restart, an administrator's kill, an idle timeout) are replaced
at checkout, so the requests after it succeed (PostgreSQL by asyncpg's own flag, checked
without a round trip, `_drop_if_closed`; MariaDB by the pool's ping); its size is the
server's `db_pool_size`."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import event, text

from server.app import create_app
from server.db.engine import Database
from server.settings import ServerSettings
from tests.conftest import (
    BACKENDS,
    _drop_database,
    _make_database,
    async_wait_until,
    missing,
)

DB = f"sdtest_{os.getpid()}_closed"


@pytest.fixture(params=[b for b in ("postgres", "mariadb") if b in BACKENDS])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    try:
        url = await _make_database(request.param, tmp_path, DB)
    except (OSError, ConnectionError) as exc:
        missing(f"{request.param} is not reachable on 127.0.0.1: {exc}")
    database = Database(url)
    async with database.transaction() as conn:
        await conn.execute(text("CREATE TABLE t (x INTEGER)"))
    yield database
    await database.close()
    await _drop_database(request.param, DB)


async def session_ids(db: Database, conn_count: int) -> set[int]:
    """Take `conn_count` pooled connections at once and give them back: their session ids."""
    query = "SELECT pg_backend_pid()" if db.dialect == "postgresql" else "SELECT connection_id()"
    all_in = asyncio.Barrier(conn_count)

    async def one() -> int:
        async with db.read() as conn:
            session = (await conn.execute(text(query))).scalar_one()
            await all_in.wait()  # every connection is out of the pool at once
            return int(session)

    return set(await asyncio.gather(*(one() for _ in range(conn_count))))


async def kill(db: Database, sessions: set[int]) -> None:
    """End the sessions from another connection, as an administrator or a restart would, and
    wait until the server no longer lists them."""
    if db.dialect == "postgresql":
        import asyncpg

        admin = await asyncpg.connect(host="127.0.0.1", user="postgres", database="test")
        for pid in sessions:
            await admin.execute("SELECT pg_terminate_backend($1)", pid)

        async def gone() -> bool:
            rows = await admin.fetch("SELECT pid FROM pg_stat_activity")
            return not sessions & {r["pid"] for r in rows}

        assert await async_wait_until(gone, timeout=10)
        await admin.close()
    else:
        import asyncmy

        my = await asyncmy.connect(host="127.0.0.1", user="root", password="")
        async with my.cursor() as cur:
            for session in sessions:
                await cur.execute(f"KILL {session}")
        my.close()
    await asyncio.sleep(0.05)  # the loop reads each socket's end, as it would between requests


async def test_connections_the_server_closed_are_replaced_before_use(db: Database) -> None:
    before = await session_ids(db, 4)
    assert len(before) == 4
    await kill(db, before)
    opened = [0]

    def on_connect(*_: object) -> None:
        opened[0] += 1

    event.listen(db.engine.sync_engine, "connect", on_connect)

    async def request(i: int) -> None:  # every one succeeds: none is handed a dead connection
        async with db.transaction() as conn:
            await conn.execute(text("INSERT INTO t VALUES (:x)"), {"x": i})
        async with db.read() as conn:
            await conn.execute(text("SELECT count(*) FROM t"))

    await asyncio.gather(*(request(i) for i in range(4)))
    after = await session_ids(db, 4)
    assert not before & after
    assert opened[0] == 4
    async with db.read() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM t"))).scalar() == 4


async def test_the_pool_holds_db_pool_size_connections(db: Database, tmp_path: Path) -> None:
    url = db.engine.url.render_as_string(hide_password=False)
    settings = ServerSettings(
        db_url=url, db_pool_size=3, data_dir=tmp_path, auto_migrate=False, maintenance=False
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        pool = app.state.ctx.db.engine.pool
        assert pool.size() == 3
        all_in = asyncio.Barrier(6)

        async def hold() -> None:
            async with app.state.ctx.db.read() as conn:
                await conn.execute(text("SELECT 1"))
                await all_in.wait()
                assert pool.checkedout() == 6  # 3, and as many again at peak

        await asyncio.gather(*(hold() for _ in range(6)))
        assert pool.checkedin() == 3  # the overflow closed again
