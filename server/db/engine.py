"""The database connection: one async engine per process, the same code on every backend.

SQLite is tuned for a server (WAL so readers never wait for the writer, synchronous=NORMAL,
a short busy timeout) and runs its statements inline on the event loop (`sqlite_inline`).
Writes on SQLite go through one lock in this process: SQLite allows one writer, so queueing
here is cheaper than spinning on SQLITE_BUSY. Another process holding the write lock longer
than the busy timeout gives "database is locked", which the app answers with 503 (retry).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from server.db.sqlite_inline import inline_creator


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


class Database:
    """The engine plus the few dialect facts the data layer needs."""

    def __init__(self, url: str, *, pool_size: int = 10, echo: bool = False) -> None:
        parsed = make_url(url)
        self.dialect = parsed.get_backend_name()  # sqlite | mysql | mariadb | postgresql
        kwargs: dict[str, Any] = {"echo": echo}
        if self.dialect != "sqlite":
            kwargs.update(
                pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True, pool_recycle=3600
            )
        else:
            # closing a connection already ends its transaction; the pool's reset would be
            # one more rollback per request
            kwargs["pool_reset_on_return"] = None
            if parsed.database and parsed.database != ":memory:":
                kwargs["async_creator"] = inline_creator(parsed.database)
        if self.dialect in ("mysql", "mariadb"):
            kwargs["isolation_level"] = "READ COMMITTED"
        self.engine: AsyncEngine = create_async_engine(parsed, **kwargs)
        if self.dialect == "sqlite":
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self._write_lock = asyncio.Lock() if self.dialect == "sqlite" else None

    @property
    def is_mysql(self) -> bool:
        return self.dialect in ("mysql", "mariadb")

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.connect() as conn:
            yield conn

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """One transaction: committed when the block ends, rolled back on any exception."""
        if self._write_lock is None:
            async with self.engine.begin() as conn:
                yield conn
            return
        async with self._write_lock, self.engine.begin() as conn:
            yield conn

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def close(self) -> None:
        await self.engine.dispose()
