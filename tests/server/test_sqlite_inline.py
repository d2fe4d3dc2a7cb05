"""The inline SQLite adapter's bounded statements: where they run (the event loop or a worker
thread) and that the time budget holds either way (`server.db.sqlite_inline`)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.db.search import may_start_inline
from server.db.sqlite_inline import INLINE_SLICE, InlineConnection
from server.models import ScalarOperator, ScalarSearch, VectorOperator, VectorSearch

#: Counts to 2 million: ~100 ms or more of SQLite work, far past the inline slice.
SLOW = (
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 2000000) "
    "SELECT seen(count(*)) FROM c"
)


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[tuple[InlineConnection, set[int]]]:
    """An adapter on a file database, with `seen(x)`: x, noting the thread it ran on."""
    raw = sqlite3.connect(tmp_path / "t.db", check_same_thread=False)
    threads: set[int] = set()

    def seen(x: object) -> object:
        threads.add(threading.get_ident())
        return x

    raw.create_function("seen", 1, seen)
    yield InlineConnection(raw), threads
    raw.close()


async def fetch(inline: InlineConnection, sql: str) -> list[tuple[object, ...]]:
    cursor = inline.cursor()
    await cursor.execute(sql)
    return await cursor.fetchall()


async def test_a_cheap_statement_started_inline_stays_on_the_loop(
    conn: tuple[InlineConnection, set[int]],
) -> None:
    inline, threads = conn
    inline.limit_time(10.0, inline_first=True)
    assert await fetch(inline, "SELECT seen(1)") == [(1,)]
    assert threads == {threading.get_ident()}


async def test_without_inline_first_a_bounded_statement_runs_in_a_worker_thread(
    conn: tuple[InlineConnection, set[int]],
) -> None:
    inline, threads = conn
    inline.limit_time(10.0)
    assert await fetch(inline, "SELECT seen(1)") == [(1,)]
    assert threading.get_ident() not in threads


async def test_a_statement_past_the_slice_finishes_in_a_worker_thread(
    conn: tuple[InlineConnection, set[int]],
) -> None:
    inline, threads = conn
    inline.limit_time(10.0, inline_first=True)
    # `seen` runs once, on the last step: the inline attempt was stopped before it
    assert await fetch(inline, SLOW) == [(2000000,)]
    assert len(threads) == 1
    assert threading.get_ident() not in threads
    assert not inline.timed_out
    # the connection is usable inline again, without the progress handler of the attempt
    assert await fetch(inline, "SELECT 2") == [(2,)]


async def test_a_budget_shorter_than_the_slice_stops_the_statement_inline(
    conn: tuple[InlineConnection, set[int]],
) -> None:
    inline, threads = conn
    inline.limit_time(INLINE_SLICE / 4, inline_first=True)
    with pytest.raises(sqlite3.OperationalError, match="interrupted"):
        await fetch(inline, SLOW)
    assert inline.timed_out
    assert not threads


async def test_the_budget_holds_after_a_statement_moves_off_the_loop(
    conn: tuple[InlineConnection, set[int]],
) -> None:
    inline, _ = conn
    inline.limit_time(INLINE_SLICE * 5, inline_first=True)
    with pytest.raises(sqlite3.OperationalError, match="interrupted"):
        await fetch(inline, SLOW.replace("2000000", "200000000"))
    assert inline.timed_out


@pytest.mark.parametrize(
    ("operator", "inline"),
    [
        (ScalarOperator.EQ, True),
        (ScalarOperator.NEQ, True),
        (ScalarOperator.GT, True),
        (ScalarOperator.LT, True),
        (ScalarOperator.LIKE, False),
        (ScalarOperator.NOT_LIKE, False),
        (ScalarOperator.REGEX, False),
    ],
)
def test_only_searches_without_text_operators_may_start_inline(
    operator: ScalarOperator, inline: bool
) -> None:
    spec = ScalarSearch(parameter="Status", operator=operator, value="Running")
    vector = VectorSearch(parameter="GridSite", operator=VectorOperator.IN, values=["a", "b"])
    assert may_start_inline([vector, spec]) is inline
    assert may_start_inline([vector])
    assert may_start_inline([])
