"""The server killed (SIGKILL, then SIGTERM) and started again while wrapper-like clients send
log batches: every line that got a 204 is stored, and the clients carry on by themselves."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from pathlib import Path

import httpx

from tests.conftest import free_port
from tests.reliability.swarm import Pilot, ServerProc, Stats, register, run_pilot, stored_lines

PILOTS = 20
BATCH = 50


async def restart_under_load(
    server: ServerProc, *, pilots: int, batch: int, restarts: list[signal.Signals], gap: float
) -> tuple[Stats, int, list[str]]:
    """Start the swarm, kill and restart the server once per entry of `restarts` with `gap`
    seconds of load between, then let the swarm run for `gap` more; returns the stats, the
    number of lines acknowledged before the last restart and the stored line ids."""
    async with httpx.AsyncClient(base_url=server.url) as http:
        swarm = await register(http, server.director_token, pilots, "Restart.Test.org")
        stats = Stats()
        until = time.monotonic() + gap * (len(restarts) + 1) + 60  # ended by `stop` below

        async def pilot_task(p: Pilot) -> None:
            await run_pilot(
                http, p, server.director_token, stats, until=until, batch=batch, pause=0.05
            )

        tasks = [asyncio.create_task(pilot_task(p)) for p in swarm]
        acked_before_last = 0
        for sig in restarts:
            await asyncio.sleep(gap)
            await asyncio.to_thread(server.kill, sig)
            acked_before_last = len(stats.acked)
            await asyncio.sleep(0.5)  # clients meet a closed port
            await asyncio.to_thread(server.start)
        await asyncio.sleep(gap)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        stored = await stored_lines(http, server.admin_token, [p.stamp for p in swarm])
        return stats, acked_before_last, stored


async def test_no_acknowledged_line_is_lost_across_restarts(tmp_path: Path) -> None:
    server = ServerProc(tmp_path / "server", free_port())
    server.start()
    try:
        stats, acked_before_last, stored = await restart_under_load(
            server,
            pilots=PILOTS,
            batch=BATCH,
            restarts=[signal.SIGKILL, signal.SIGKILL, signal.SIGTERM],
            gap=3.0,
        )
    finally:
        server.kill()
    assert server.starts == 4
    assert stats.errors == []
    assert stats.retried > 0  # the clients did meet the dead server
    counts = Counter(stored)
    lost = stats.acked - set(counts)
    assert not lost, f"{len(lost)} acknowledged lines lost, e.g. {sorted(lost)[:3]}"
    assert len(stats.acked) > acked_before_last  # and they carried on after the last restart
