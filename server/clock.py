"""The one place the server reads the time, so tests can reason about it."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    """Naive UTC with microseconds: what every datetime column stores."""
    return datetime.now(UTC).replace(tzinfo=None)
