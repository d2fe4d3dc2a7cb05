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

Searches are the exception: their cost depends on what a client asks (a regular expression over
every log line), so `limit_time` moves a connection's statements to a worker thread (SQLite
releases the GIL while it works; the RE2 `regexp` function too) and interrupts any statement
that runs past its budget. The event loop keeps answering other requests meanwhile.

The trip to the thread and back costs more CPU than a small search itself (a future, a queue,
two thread switches and a loop wake-up per statement). A search whose conditions cannot make a
row costly (no text operator: see `server.db.search.may_start_inline`) therefore *starts*
inline (`limit_time(..., inline_first=True)`): a progress handler stops it once it has spent
`INLINE_SLICE` of CPU time on the loop, and it is then run again in the worker thread under
what is left of its budget. No statement does more than the slice's work on the loop (plus
one step of the SQLite VM): a sort or a grouping step only orders the rows the statement
produced within the slice (each row is steps of its own), and a condition without a text
operator costs a few steps per row. So a cheap search (the usual dashboard page) never
leaves the loop, and a heavy one costs the loop one slice, then behaves as before:
interrupted at its budget (wall time, counted from the statement's start), a 422.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

R = TypeVar("R")

#: CPU seconds a bounded statement started inline may spend on the event loop before it is
#: stopped and run again in a worker thread.
INLINE_SLICE = 0.002
#: SQLite VM steps between two looks at the clock while a statement runs inline (a step is tens
#: of nanoseconds; a look, a Python call, a fraction of a microsecond).
_PROGRESS_STEPS = 4000


class _Moved:
    """The result of `InlineConnection.try_inline` for a statement stopped at its slice."""


MOVED = _Moved()


class _InlineCursor:
    """aiosqlite's Cursor interface over a sqlite3 cursor, completing at once (or, while the
    connection's time is limited, in a worker thread)."""

    __slots__ = ("_cursor", "_owner", "_rows")

    def __init__(self, cursor: sqlite3.Cursor, owner: InlineConnection) -> None:
        self._cursor = cursor
        self._owner = owner
        #: rows fetched in the worker thread together with the statement (see `execute`)
        self._rows: list[Any] | None = None

    async def __aenter__(self) -> _InlineCursor:
        return self

    async def __aexit__(self, *_: object) -> None:
        self._cursor.close()

    async def execute(self, sql: str, parameters: Sequence[Any] = ()) -> _InlineCursor:
        self._rows = None
        if self._owner.budget is None:
            self._cursor.execute(sql, parameters)
        else:
            # SQLAlchemy fetches every row right after executing (its async cursors are not
            # server-side): one trip to the worker thread for both, not two (each trip is a
            # future, a queue and an event-loop wake-up: most of a small search's CPU)
            owner = self._owner
            owner.start_statement()
            if owner.inline_first:
                rows = owner.try_inline(self._execute_and_fetch, sql, parameters)
                if not isinstance(rows, _Moved):
                    self._rows = rows
                    return self
            self._rows = await owner.off_loop(self._execute_and_fetch, sql, parameters)
        return self

    def _execute_and_fetch(self, sql: str, parameters: Sequence[Any]) -> list[Any] | None:
        self._cursor.execute(sql, parameters)
        return self._cursor.fetchall() if self._cursor.description is not None else None

    async def executemany(self, sql: str, parameters: Iterable[Sequence[Any]]) -> _InlineCursor:
        self._rows = None
        self._cursor.executemany(sql, parameters)
        return self

    async def fetchall(self) -> list[Any]:
        if self._rows is not None:
            rows, self._rows = self._rows, []
            return rows
        # fetching steps the statement further: the same thread and deadline as execute
        if self._owner.budget is None:
            return self._cursor.fetchall()
        return await self._owner.off_loop(self._cursor.fetchall)

    async def fetchone(self) -> Any:
        if self._rows is not None:
            return self._rows.pop(0) if self._rows else None
        if self._owner.budget is None:
            return self._cursor.fetchone()
        return await self._owner.off_loop(self._cursor.fetchone)

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        n = size if size is not None else self._cursor.arraysize
        if self._rows is not None:
            rows, self._rows = self._rows[:n], self._rows[n:]
            return rows
        if self._owner.budget is None:
            return self._cursor.fetchmany(n)
        return await self._owner.off_loop(self._cursor.fetchmany, n)

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
        #: Seconds each statement may run (see `limit_time`); None: inline, unbounded.
        self.budget: float | None = None
        #: Whether the last statement was interrupted for running past its budget.
        self.timed_out = False
        #: Whether each bounded statement first runs inline for up to `INLINE_SLICE`.
        self.inline_first = False
        self._deadline = 0.0
        self._slice_wall_end = 0.0
        self._slice_end = 0.0
        self._sliced = False

    def cursor(self) -> _InlineCursor:
        return _InlineCursor(self._conn.cursor(), self)

    def limit_time(self, seconds: float | None, *, inline_first: bool = False) -> None:
        """From now on, run each statement in a worker thread and interrupt it once it has run
        `seconds` (sqlite3.OperationalError "interrupted", with `timed_out` set); None goes
        back to inline, unbounded statements (before the pool hands the connection on).

        With `inline_first`, each statement first runs inline for up to `INLINE_SLICE` (see
        the module's docstring): only for statements whose every row is cheap to test.

        The interrupt comes from a timer on the event loop (sqlite3_interrupt may be called
        from any thread), which costs nothing per row, where a progress handler would take
        the GIL every few hundred instructions and still miss a scan whose rows are few but
        slow."""
        self.budget = seconds
        self.timed_out = False
        self.inline_first = inline_first and seconds is not None

    def start_statement(self) -> None:
        assert self.budget is not None
        self._deadline = time.monotonic() + self.budget

    def _progress(self) -> int:
        now = time.monotonic()
        if now > self._deadline:
            self.timed_out = True
            return 1
        # the thread's CPU time (a system call, where the wall clock is not) cannot have
        # passed the slice before the wall clock has
        if now > self._slice_wall_end and time.thread_time() > self._slice_end:
            self._sliced = True
            return 1
        return 0

    def try_inline(self, function: Callable[..., R], *args: Any) -> R | _Moved:
        """`function(*args)` on the event loop, stopped once it has used `INLINE_SLICE` of
        this thread's CPU time (then MOVED: the caller runs it again in the worker thread) or
        at the statement's deadline if that comes first (then sqlite3.OperationalError, with
        `timed_out` set).

        The slice is CPU time, not wall time: on a loaded machine a statement may be
        preempted for a scheduler quantum (several ms) in the middle of its 0.1 ms of work,
        and moving it for that would redo the work and pay the trip as well. The loop does at
        most a slice of the statement's work either way; the budget is wall time, as off the
        loop."""
        self._slice_wall_end = time.monotonic() + INLINE_SLICE
        self._slice_end = time.thread_time() + INLINE_SLICE
        self._sliced = False
        self._conn.set_progress_handler(self._progress, _PROGRESS_STEPS)
        try:
            return function(*args)
        except sqlite3.OperationalError:
            if self._sliced and not self.timed_out:
                return MOVED
            raise
        finally:
            self._conn.set_progress_handler(None, 0)

    def _interrupt(self) -> None:
        self.timed_out = True
        self._conn.interrupt()

    async def off_loop(self, function: Callable[..., R], *args: Any) -> R:
        """`function(*args)` in a worker thread, interrupted at the statement's deadline. If
        the caller is cancelled (a client went away), the statement is interrupted and waited
        for, so the connection is never used by two threads at once."""
        loop = asyncio.get_running_loop()
        timer = loop.call_at(
            loop.time() + max(0.0, self._deadline - time.monotonic()), self._interrupt
        )
        future = loop.run_in_executor(None, function, *args)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            self._conn.interrupt()
            await asyncio.wait([future])
            raise
        finally:
            timer.cancel()

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
