"""The load run: N simulated pilots against one server on PostgreSQL for a while, and the
PostgreSQL databases of the reliability tests (one of their own each, dropped after).

Used by tests/reliability/test_load.py (~30 s, correctness only) and by
bench/reliability_report.py (2 minutes, with throughput and latency figures).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import httpx

from tests.reliability.swarm import (
    ServerProc,
    Stats,
    percentiles,
    register,
    run_pilot,
    stored_lines,
)

PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "database": "test"}


def pg_name(purpose: str) -> str:
    return f"sdrel_{purpose}_{os.getpid()}"


def pg_url(name: str, port: int = 5432) -> str:
    return f"postgresql+asyncpg://postgres@127.0.0.1:{port}/{name}"


async def pg_create(name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(**PG)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await conn.execute(f"CREATE DATABASE {name}")
    finally:
        await conn.close()


async def pg_drop(name: str) -> None:
    import asyncpg

    try:
        conn = await asyncpg.connect(**PG)
    except OSError:
        return
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await conn.close()


@dataclass
class LoadReport:
    pilots: int
    seconds: float
    batch: int
    acked_lines: int
    stored_lines: int
    lost_lines: int
    duplicate_lines: int
    requests: int
    throttled: int
    retried: int
    errors: list[str]
    latency_ms: dict[str, dict[str, float]]

    def figures(self) -> dict[str, Any]:
        return {
            "pilots": self.pilots,
            "seconds": round(self.seconds, 1),
            "batch_lines": self.batch,
            "requests": self.requests,
            "requests_per_s": round(self.requests / self.seconds, 1),
            "lines_acked": self.acked_lines,
            "lines_per_s": round(self.acked_lines / self.seconds, 1),
            "lines_stored": self.stored_lines,
            "lines_lost": self.lost_lines,
            "duplicates": self.duplicate_lines,
            "throttled_429": self.throttled,
            "retried": self.retried,
            "errors": len(self.errors),
            "latency_ms": self.latency_ms,
        }


async def run_load(
    server: ServerProc, *, pilots: int, seconds: float, batch: int = 250, connections: int = 200
) -> LoadReport:
    """Secrets minted in bulk first; then every pilot exchanges its secret and sends batches
    and status updates until the time is up; then what was acknowledged is compared with
    what is stored."""
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(base_url=server.url, limits=limits) as http:
        director = server.director_token
        swarm = await register(http, director, pilots, "Load.Test.org")
        stats = Stats()
        started = time.monotonic()
        until = started + seconds
        await asyncio.gather(
            *(run_pilot(http, p, director, stats, until=until, batch=batch) for p in swarm)
        )
        elapsed = time.monotonic() - started
        stored = await stored_lines(http, server.admin_token, [p.stamp for p in swarm])
    counts = Counter(stored)
    return LoadReport(
        pilots=pilots,
        seconds=elapsed,
        batch=batch,
        acked_lines=len(stats.acked),
        stored_lines=len(stored),
        lost_lines=len(stats.acked - set(counts)),
        duplicate_lines=sum(c - 1 for c in counts.values() if c > 1),
        requests=stats.requests,
        throttled=stats.throttled,
        retried=stats.retried,
        errors=stats.errors,
        latency_ms={kind: percentiles(v) for kind, v in sorted(stats.latencies.items())},
    )
