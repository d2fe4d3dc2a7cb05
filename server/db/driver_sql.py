"""Helpers for statements sent straight to the SQLite driver as fixed SQL text.

On SQLite, the embedded default where one core does all the work, the bulk write paths (log
lines, pilot registration and metadata, minted secrets) skip SQLAlchemy's statement
compilation and per-row parameter handling: for an executemany of 10,000 rows those cost more
than SQLite's own work. The values must then be given as SQLAlchemy would have stored them.
"""

from __future__ import annotations

from datetime import datetime


def sqlite_time(value: datetime) -> str:
    """SQLAlchemy's storage text for DateTime on SQLite (`2026-01-02 03:04:05.000000`, the
    microseconds always written, so text order is time order), by the C `isoformat`: a third of
    the cost of `strftime`, and a 4-digit year below 1000 as SQLAlchemy writes it."""
    return value.isoformat(" ", "microseconds")


def marks(n: int) -> str:
    """`?, ?, ...` for `n` positional parameters."""
    return ", ".join("?" * n)


def quoted(name: str) -> str:
    """A column or table name as the schema spells it (case kept)."""
    return f'"{name}"'
