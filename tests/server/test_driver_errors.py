"""The database layer speaks the project's errors: driver errors are translated at its edge."""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DataError, DBAPIError, OperationalError

from server.db.driver_errors import domain_error, is_disk_full
from server.db.engine import Database
from server.errors import DatabaseUnavailable, InvalidValue, StorageFull, status_of


class _PgError(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(f"sqlstate {sqlstate}")
        self.sqlstate = sqlstate


def _wrapped(orig: BaseException) -> DBAPIError:
    return OperationalError("SELECT 1", {}, orig)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (DataError("SELECT 1", {}, ValueError("out of range")), InvalidValue),
        (DBAPIError("SELECT 1", {}, _PgError("22021")), InvalidValue),  # asyncpg: bad UTF-8
        (UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"), InvalidValue),
        (OverflowError("Python int too large to convert to SQLite INTEGER"), InvalidValue),
        (_wrapped(sqlite3.OperationalError("database or disk is full")), StorageFull),
        (_wrapped(_PgError("53100")), StorageFull),
        (_wrapped(Exception(1114, "The table 'PilotLogs' is full")), StorageFull),
        (OSError(errno.ENOSPC, "No space left on device"), StorageFull),
        (_wrapped(sqlite3.OperationalError("database is locked")), DatabaseUnavailable),
        (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), DatabaseUnavailable),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else v.__name__,
)
def test_classification(error: BaseException, expected: type[Exception]) -> None:
    translated = domain_error(error)
    assert type(translated) is expected
    assert int(status_of(translated)) in (400, 503, 507)


def test_disk_full_and_retry_after() -> None:
    assert is_disk_full(OSError(errno.ENOSPC, "full"))
    assert not is_disk_full(OSError(errno.EACCES, "denied"))
    assert DatabaseUnavailable("x").retry_after == 5
    assert StorageFull("x").retry_after == 30


async def test_connections_raise_domain_errors(tmp_path: Path) -> None:
    """What the logic gets from a connection: the project's errors, chained to the driver's."""
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'no-such-dir' / 'x.db'}")
    try:
        with pytest.raises(DatabaseUnavailable) as unavailable:
            async with db.read() as conn:
                await conn.execute(text("SELECT 1"))
        assert isinstance(unavailable.value.__cause__, DBAPIError)
    finally:
        await db.close()
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")
    try:
        for value in ("\ud800", 2**70):
            with pytest.raises(InvalidValue):
                async with db.transaction() as conn:
                    await conn.execute(text("SELECT :v"), {"v": value})
        async with db.read() as conn:  # and the database is still there
            assert (await conn.execute(text("SELECT 1"))).scalar() == 1
    finally:
        await db.close()
