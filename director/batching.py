"""Splitting long lists into bounded pieces: the director's one chunking helper.

The loop sends the server at most `BULK_MAX` pilots per call, and the CE backends send their
CEs at most a configured number of jobs per request; all of them cut their lists here. (The
server has its own, `server/db/batch.py`, for its IN-lists: the director imports nothing of the
server but its wire models.)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TypeVar

T = TypeVar("T")


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """`items` in order, `size` at a time (the last piece may be shorter); nothing for none."""
    if size < 1:
        raise ValueError(f"chunk size must be positive, not {size}")
    for start in range(0, len(items), size):
        yield items[start : start + size]
