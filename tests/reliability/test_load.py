"""500 simulated pilots against one server on PostgreSQL: secret exchange, log batches of
250 lines and status updates for ~30 s. Correctness only: no error but the designed 429s, no
acknowledged line lost. (The figures come from bench/reliability_report.py.)"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import free_port, missing
from tests.reliability.load import pg_create, pg_drop, pg_name, pg_url, run_load
from tests.reliability.swarm import ServerProc

SECONDS = float(os.environ.get("SITE_DIRECTOR_LOAD_SECONDS", "30"))


@pytest.fixture
async def pg_database() -> AsyncIterator[str]:
    name = pg_name("load")
    try:
        await pg_create(name)
    except OSError as exc:
        missing(f"PostgreSQL is not reachable on 127.0.0.1:5432: {exc}")
    yield name
    await pg_drop(name)


async def test_five_hundred_pilots_lose_nothing(pg_database: str, tmp_path: Path) -> None:
    # A lowish per-pilot rate (4 batches a minute), so that a fast machine meets the designed
    # 429 (with Retry-After) and the clients honour it.
    server = ServerProc(
        tmp_path / "server",
        free_port(),
        db_url=pg_url(pg_database),
        env={"SITE_DIRECTOR_LOG_RATE_LINES_PER_MINUTE": "1000"},
    )
    server.start()
    try:
        report = await run_load(server, pilots=500, seconds=SECONDS)
    finally:
        server.kill()
    assert report.errors == []
    assert report.lost_lines == 0
    assert report.acked_lines >= 250
    assert report.stored_lines >= report.acked_lines


async def test_throttled_pilots_wait_and_lose_nothing(tmp_path: Path) -> None:
    """The designed 429: pilots over their per-minute line rate are told to wait (Retry-After),
    do, and nothing they got acknowledged is missing."""
    server = ServerProc(
        tmp_path / "server",
        free_port(),
        env={"SITE_DIRECTOR_LOG_RATE_LINES_PER_MINUTE": "300"},  # one 250-line batch a minute
    )
    server.start()
    try:
        report = await run_load(server, pilots=5, seconds=8)
    finally:
        server.kill()
    assert report.throttled > 0
    assert report.errors == []
    assert report.lost_lines == 0
    assert report.acked_lines == 5 * 250  # the first batch of each, then only 429s
