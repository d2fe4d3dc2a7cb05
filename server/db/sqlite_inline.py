"""SQLite for the async engine without a thread hop per statement.

SQLAlchemy's aiosqlite dialect sends every call (cursor, execute, fetch, commit, close) to a
worker thread and back: about a dozen round trips for a small transaction, each a queue, a
future and an event-loop wake-up. Measured here, that was most of the server's CPU per request.
SQLite itself answers these calls in microseconds, so this adapter runs them inline on the
event loop: it gives SQLAlchemy's aiosqlite dialect an object with aiosqlite's coroutine
interface whose coroutines complete at once.

The price is that a statement blocks the loop while SQLite works. That is the right trade for
the embedded, one-process default: writes are already serialised by `Database`'s lock, readers
never wait in WAL mode, and pages are bounded. Several workers or hosts belong on MariaDB or
PostgreSQL, where nothing here applies.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from typing import Any


class _InlineCursor:
    """aiosqlite's Cursor interface over a sqlite3 cursor, completing at once."""

    __slots__ = ("_cursor",)

    def __init__(self, cursor: sqlite3.Cursor) -> None:
        self._cursor = cursor

    async def __aenter__(self) -> _InlineCursor:
        return self

    async def __aexit__(self, *_: object) -> None:
        self._cursor.close()

    async def execute(self, sql: str, parameters: Sequence[Any] = ()) -> _InlineCursor:
        self._cursor.execute(sql, parameters)
        return self

    async def executemany(self, sql: str, parameters: Iterable[Sequence[Any]]) -> _InlineCursor:
        self._cursor.executemany(sql, parameters)
        return self

    async def fetchall(self) -> list[Any]:
        return self._cursor.fetchall()

    async def fetchone(self) -> Any:
        return self._cursor.fetchone()

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        return self._cursor.fetchmany(size if size is not None else self._cursor.arraysize)

    async def close(self) -> None:
        self._cursor.close()

    @property
    def description(self) -> Any:
        return self._cursor.description

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    @property
    def lastrowid(self) -> int | None:
        return self._cursor.lastrowid

    @property
    def arraysize(self) -> int:
        return self._cursor.arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._cursor.arraysize = value


class _ImmediateQueue:
    """Stands in for aiosqlite's request queue, which SQLAlchemy uses to set the isolation
    level: runs the function now and resolves the future."""

    def put_nowait(self, item: tuple[asyncio.Future[Any], Callable[[], Any]]) -> None:
        future, function = item
        try:
            future.set_result(function())
        except Exception as exc:  # handed to the awaiting caller, as aiosqlite does
            future.set_exception(exc)


class InlineConnection:
    """aiosqlite's Connection interface over a sqlite3 connection, completing at once."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._conn = connection
        self._connection: sqlite3.Connection | None = connection
        self._tx = _ImmediateQueue()

    def cursor(self) -> _InlineCursor:
        return _InlineCursor(self._conn.cursor())

    async def execute(self, sql: str, parameters: Sequence[Any] = ()) -> _InlineCursor:
        return await self.cursor().execute(sql, parameters)

    async def commit(self) -> None:
        self._conn.commit()

    async def rollback(self) -> None:
        self._conn.rollback()

    async def close(self) -> None:
        if self._connection is not None:
            self._connection = None
            self._conn.close()

    def stop(self) -> None:
        if self._connection is not None:
            self._connection = None
            self._conn.close()

    async def create_function(self, *args: Any, **kwargs: Any) -> None:
        self._conn.create_function(*args, **kwargs)

    @property
    def isolation_level(self) -> str | None:
        return self._conn.isolation_level

    @isolation_level.setter
    def isolation_level(self, value: str | None) -> None:
        self._conn.isolation_level = value  # type: ignore[assignment]


def inline_creator(path: str) -> Callable[[], Any]:
    """An `async_creator` for `create_async_engine` opening `path` with the inline adapter."""

    async def connect() -> InlineConnection:
        # check_same_thread=False: the pool may hand a connection to another thread at
        # shutdown; every statement itself runs on the event loop's thread.
        return InlineConnection(sqlite3.connect(path, check_same_thread=False))

    return connect
