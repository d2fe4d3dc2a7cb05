"""Driver errors in the project's own terms: the database layer raises only domain errors.

Every connection the logic gets (`Database.read`, `transaction`, `bounded_read`) translates
what the driver or the pool raises inside it:

    a value the database cannot take       InvalidValue (400): SQLSTATE class 22 (data
                                           exception), an unpaired surrogate, an integer
                                           beyond 64 bits, a NUL in PostgreSQL text
    no space left for the database         StorageFull (507): SQLITE_FULL, ENOSPC,
                                           PostgreSQL 53100, MySQL 1114
    anything else from the driver or pool  DatabaseUnavailable (503): down, overloaded,
                                           "database is locked", a pool timeout

Errors the data layer handles itself (IntegrityError for a duplicate stamp, a statement time
budget spent) are caught inside the block, before they get here.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.exc import DataError, DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from server.errors import DatabaseUnavailable, InvalidValue, ServerDomainError, StorageFull

log = logging.getLogger("server")

#: What the driver, the pool or the socket under them raise (ConnectionError is an OSError).
DRIVER_ERRORS = (DBAPIError, PoolTimeout, OSError)
#: What Python raises for a value the driver cannot encode.
VALUE_ERRORS = (UnicodeEncodeError, OverflowError)


@contextmanager
def translated() -> Iterator[None]:
    """Run a block with the driver's errors turned into domain errors (chained with `from`)."""
    try:
        yield
    except (*DRIVER_ERRORS, *VALUE_ERRORS) as exc:
        raise domain_error(exc) from exc


def domain_error(exc: BaseException) -> ServerDomainError:
    """The domain error for a driver error, after one log line (the driver's words, no SQL)."""
    if isinstance(exc, VALUE_ERRORS) or is_bad_value(exc):
        log.info("refused a value: %s", type(exc).__name__)
        return InvalidValue("Invalid value in the request")
    if is_disk_full(exc):
        reason = str(getattr(exc, "orig", None) or exc)[:200]
        log.error("storage full, a write was refused: %s", reason)
        return StorageFull("Server storage full: no space left on the database's disk, retry later")
    log.warning("database unavailable: %s", type(exc).__name__)
    return DatabaseUnavailable("Database unavailable, retry later")


def is_bad_value(exc: BaseException) -> bool:
    """A driver error caused by a value (SQLSTATE class 22, data exception), not by the
    database being away: asyncpg reports those as a generic DBAPI error with the code."""
    if isinstance(exc, DataError):
        return True
    code = getattr(getattr(exc, "orig", None), "sqlstate", None)
    return isinstance(code, str) and code.startswith("22")


def is_disk_full(exc: BaseException) -> bool:
    """No space left for the database: SQLite's SQLITE_FULL ("database or disk is full"),
    ENOSPC, PostgreSQL's disk_full (SQLSTATE 53100), MySQL's "table is full" (1114)."""
    orig = getattr(exc, "orig", None)
    for error in (exc, orig, exc.__cause__, getattr(orig, "__cause__", None)):
        if error is None:
            continue
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return True
        if getattr(error, "sqlite_errorcode", None) == 13:  # sqlite3.SQLITE_FULL
            return True
        if getattr(error, "sqlstate", None) == "53100" or getattr(error, "pgcode", None) == "53100":
            return True
        text = str(error)
        if "database or disk is full" in text or "No space left on device" in text:
            return True
        args = getattr(error, "args", ())
        if args and args[0] == 1114:  # MySQL ER_RECORD_FILE_FULL
            return True
    return False
