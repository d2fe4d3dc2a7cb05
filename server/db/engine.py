"""The database connection: one async engine per process, the same code on every backend.

SQLite is tuned for a server (WAL so readers never wait for the writer, synchronous=NORMAL,
a short busy timeout) and runs its statements inline on the event loop (`sqlite_inline`).
Writes on SQLite go through one lock in this process: SQLite allows one writer, so queueing
here is cheaper than spinning on SQLITE_BUSY. Another process holding the write lock longer
than the busy timeout gives "database is locked", a DatabaseUnavailable (503, retry).

Every connection handed out (`read`, `transaction`, `bounded_read`) translates the driver's
errors into the project's own (`server.db.driver_errors`): nothing above this layer sees a
SQLAlchemy or driver exception.

Searches run on `bounded_read` connections: each statement has a time budget on every backend
(SQLite: in a worker thread, interrupted at the deadline, or first on the event loop for a
2 ms slice when the caller says no row is costly to test; MariaDB: `max_statement_time`;
PostgreSQL: `statement_timeout`), and one that runs past it is a `SearchTimeout`, not an outage.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, nullcontext
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from server.db.driver_errors import translated
from server.db.regex import sqlite_regexp
from server.db.sqlite_inline import InlineConnection, inline_creator
from server.errors import SearchTimeout

#: MariaDB's ER_STATEMENT_TIMEOUT, MySQL's ER_QUERY_TIMEOUT; PostgreSQL's query_canceled.
_MYSQL_TIMEOUTS = (1969, 3024)
_PG_TIMEOUT = "57014"


def _drop_if_closed(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
    """asyncpg's check at checkout that a pooled PostgreSQL connection still lives, made
    without a round trip: asyncpg sees the server close the socket (a restart,
    `pg_terminate_backend`, an idle timeout) while the connection waits in the pool, and
    `is_closed()` reads that flag. SQLAlchemy's `pool_pre_ping` asks the server instead:
    BEGIN, an empty query and ROLLBACK, three round trips, as many as a registration's own
    (BEGIN, INSERT, COMMIT). Raising DisconnectionError makes the pool discard the connection
    and hand out a fresh one."""
    if dbapi_conn.driver_connection.is_closed():
        raise DisconnectionError("the database server closed this pooled connection")


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
    # after SQLAlchemy's own `regexp` (Python's backtracking `re`), which this replaces
    dbapi_conn.create_function("regexp", 2, sqlite_regexp, deterministic=True)


#: dialect -> the extra of this distribution that installs its async driver
_DRIVER_EXTRAS = {"postgresql": "postgres", "mysql": "mysql", "mariadb": "mysql"}


class DatabaseUnusable(Exception):
    """The database cannot be used at all: its driver is not installed, or it does not
    answer. The message is one line naming the database (without its password)."""


class Database:
    """The engine plus the few dialect facts the data layer needs."""

    def __init__(self, url: str, *, pool_size: int = 10, echo: bool = False) -> None:
        parsed = make_url(url)
        self.dialect = parsed.get_backend_name()  # sqlite | mysql | mariadb | postgresql
        kwargs: dict[str, Any] = {"echo": echo}
        #: asyncpg tells a closed connection without a round trip (`_drop_if_closed`);
        #: MariaDB's driver does not until it reads from it, so there the pool asks the server
        #: (one COM_PING round trip)
        local_liveness = parsed.get_driver_name() == "asyncpg"
        if self.dialect != "sqlite":
            kwargs.update(
                pool_size=pool_size,
                max_overflow=pool_size,
                pool_pre_ping=not local_liveness,
                pool_recycle=3600,
            )
        else:
            # closing a connection already ends its transaction; the pool's reset would be
            # one more rollback per request
            kwargs["pool_reset_on_return"] = None
            if parsed.database and parsed.database != ":memory:":
                kwargs["async_creator"] = inline_creator(parsed.database)
        #: whether every call on a connection completes without suspending (`sqlite_inline`)
        self._inline = "async_creator" in kwargs
        if self.dialect in ("mysql", "mariadb"):
            kwargs["isolation_level"] = "READ COMMITTED"
        self.name = parsed.render_as_string(hide_password=True)
        try:
            self.engine: AsyncEngine = create_async_engine(parsed, **kwargs)
        except ImportError as exc:
            extra = _DRIVER_EXTRAS.get(self.dialect)
            hint = f": pip install 'site-director[{extra}]'" if extra else ""
            raise DatabaseUnusable(
                f"{self.name}: its driver {parsed.get_driver_name()} is not installed{hint}"
            ) from exc
        if self.dialect == "sqlite":
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        if local_liveness:
            event.listen(self.engine.sync_engine, "checkout", _drop_if_closed)
        self._write_lock = asyncio.Lock() if self.dialect == "sqlite" else None

    @property
    def is_mysql(self) -> bool:
        return self.dialect in ("mysql", "mariadb")

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[AsyncConnection]:
        """A pooled connection, given back to the pool when the block ends.

        SQLAlchemy's own `async with engine.connect()` closes the connection in a task of its
        own and waits for it behind `asyncio.shield`, so that a cancelled request cannot
        abandon a close halfway through its network round trip. That costs a task and a turn
        of the event loop per request, and during that turn other requests take connections
        from the pool: with more requests in flight than the pool holds (5), SQLite
        connections were opened (with their PRAGMAs) and closed again on every request, 15 %
        of a summary's server CPU under 16 concurrent clients. With the inline SQLite adapter,
        closing never suspends, so no cancellation can land in the middle of it: the
        connection is closed in place."""
        if not self._inline:
            async with self.engine.connect() as conn:
                yield conn
            return
        conn = await self.engine.connect()
        try:
            yield conn
        finally:
            await conn.close()

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        with translated():
            async with self._connection() as conn:
                yield conn

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """One transaction: committed when the block ends, rolled back on any exception."""
        lock = self._write_lock or nullcontext()  # SQLite's one writer, queued here
        with translated():
            async with lock, self._connection() as conn, conn.begin():
                yield conn

    @asynccontextmanager
    async def bounded_read(
        self, seconds: float, *, inline_first: bool = False
    ) -> AsyncIterator[AsyncConnection]:
        """A read connection on which each statement may run `seconds` at most: past that it
        is stopped and the block raises SearchTimeout. On SQLite its statements also leave
        the event loop for a worker thread, so one search never holds up other requests.

        `inline_first` (SQLite; the caller's promise that no row is costly to test, see
        `server.db.search.may_start_inline`): each statement first runs on the event loop for
        up to `sqlite_inline.INLINE_SLICE` and leaves for the worker thread only past that, so
        a cheap search does not pay the trip to the thread and back."""
        with translated():
            async with self._connection() as conn:
                inline = await self._limit_time(conn, seconds, inline_first)
                try:
                    yield conn
                except DBAPIError as exc:
                    if self._timed_out(exc, inline):
                        raise SearchTimeout(
                            f"The search ran past this server's time budget of {seconds:g} s per "
                            "statement and was stopped: narrow the conditions or simplify the "
                            "regular expression"
                        ) from exc
                    raise
                finally:
                    await self._unlimit_time(conn, inline)

    async def _limit_time(
        self, conn: AsyncConnection, seconds: float, inline_first: bool
    ) -> InlineConnection | None:
        if self.dialect == "sqlite":
            raw: Any = (await conn.get_raw_connection()).driver_connection
            if isinstance(raw, InlineConnection):
                raw.limit_time(seconds, inline_first=inline_first)
                return raw
            # an in-memory database on aiosqlite proper: already off the loop; one deadline
            deadline = time.monotonic() + seconds
            await raw.set_progress_handler(lambda: int(time.monotonic() > deadline), 1000)
        elif self.is_mysql:
            if conn.dialect.is_mariadb:  # type: ignore[attr-defined]
                await conn.exec_driver_sql(f"SET SESSION max_statement_time={seconds:.6f}")
            else:
                await conn.exec_driver_sql(f"SET SESSION max_execution_time={_ms(seconds)}")
        else:  # PostgreSQL: for this transaction only, which ends with the connection
            await conn.exec_driver_sql(f"SET LOCAL statement_timeout={_ms(seconds)}")
        return None

    async def _unlimit_time(self, conn: AsyncConnection, inline: InlineConnection | None) -> None:
        if inline is not None:
            inline.limit_time(None)
        elif self.dialect == "sqlite":
            aiosqlite_conn: Any = (await conn.get_raw_connection()).driver_connection
            await aiosqlite_conn.set_progress_handler(None, 0)
        elif self.is_mysql:
            variable = (
                "max_statement_time"
                if conn.dialect.is_mariadb  # type: ignore[attr-defined]
                else "max_execution_time"
            )
            try:
                await conn.exec_driver_sql(f"SET SESSION {variable}=DEFAULT")
            except DBAPIError:
                # a connection that cannot be reset must not go back to the pool limited
                await conn.invalidate()

    def _timed_out(self, exc: DBAPIError, inline: InlineConnection | None) -> bool:
        orig = exc.orig
        if self.dialect == "sqlite":
            return inline.timed_out if inline is not None else "interrupted" in str(orig)
        if self.is_mysql:
            args: tuple[Any, ...] = getattr(orig, "args", ())
            return bool(args) and args[0] in _MYSQL_TIMEOUTS
        return getattr(orig, "sqlstate", None) == _PG_TIMEOUT

    async def ping(self) -> None:
        """One round trip, with the driver's own errors (for `check_database` and health)."""
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def close(self) -> None:
        await self.engine.dispose()


async def check_database(url: str) -> None:
    """Connect once and close, before the server starts: a database that is down is then one
    line (DatabaseUnusable) rather than the traceback of a failed application start-up."""
    db = Database(url)
    try:
        await db.ping()
    except (DBAPIError, OSError) as exc:
        cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
        reason = " ".join(str(cause).split()) or type(cause).__name__
        raise DatabaseUnusable(f"{db.name}: cannot connect: {reason}") from exc
    finally:
        await db.close()


def _ms(seconds: float) -> int:
    """Milliseconds, at least 1 (0 would mean no limit at all)."""
    return max(1, round(seconds * 1000))
