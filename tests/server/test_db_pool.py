"""SQLite connections under concurrent requests (`server.db.engine.Database._connection`):
reused from the pool rather than opened and closed again, and always given back, whether the
block ends normally, fails or is cancelled."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import event, text

from server.db.engine import Database


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'pool.db'}")
    async with database.transaction() as conn:
        await conn.execute(text("CREATE TABLE t (x INTEGER)"))
    yield database
    await database.close()


def count_opened(db: Database) -> list[int]:
    """A one-item list counting the database connections the pool opens from now on."""
    opened = [0]

    def on_connect(*_: object) -> None:
        opened[0] += 1

    event.listen(db.engine.sync_engine, "connect", on_connect)
    return opened


async def one_request(db: Database, i: int) -> None:
    """What a request does: a read, a bounded read started inline, a write."""
    async with db.read() as conn:
        await conn.execute(text("SELECT count(*) FROM t"))
    async with db.bounded_read(5.0, inline_first=True) as conn:
        await conn.execute(text("SELECT count(*) FROM t"))
    async with db.transaction() as conn:
        await conn.execute(text("INSERT INTO t VALUES (:x)"), {"x": i})


async def test_concurrent_requests_reuse_one_connection(db: Database) -> None:
    # Before: SQLAlchemy closed each connection in a task of its own and waited a turn of the
    # loop, so 32 requests in flight held up to 15 connections and opened each anew.
    await db.engine.dispose()
    opened = count_opened(db)
    await asyncio.gather(*(one_request(db, i) for i in range(32)))
    assert opened[0] == 1
    async with db.read() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM t"))).scalar() == 32
    assert db.engine.pool.checkedout() == 0  # type: ignore[attr-defined]


async def test_a_cancelled_request_gives_its_connection_back(db: Database) -> None:
    entered = asyncio.Event()

    async def held() -> None:
        async with db.read() as conn:
            await conn.execute(text("SELECT 1"))
            entered.set()
            await asyncio.sleep(3600)

    task = asyncio.create_task(held())
    await entered.wait()
    assert db.engine.pool.checkedout() == 1  # type: ignore[attr-defined]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert db.engine.pool.checkedout() == 0  # type: ignore[attr-defined]


async def test_a_failed_transaction_is_rolled_back_and_its_connection_returned(
    db: Database,
) -> None:
    async def failing() -> None:
        async with db.transaction() as conn:
            await conn.execute(text("INSERT INTO t VALUES (1)"))
            raise RuntimeError("the logic failed after its first write")

    with pytest.raises(RuntimeError):
        await failing()
    assert db.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    async with db.read() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM t"))).scalar() == 0
