"""The server killed (SIGKILL, then SIGTERM) and started again while wrapper-like clients send
log batches: every line that got a 204 is stored, and the clients carry on by themselves."""

from __future__ import annotations

import signal
from collections import Counter
from pathlib import Path

from tests.conftest import free_port
from tests.reliability.swarm import ServerProc, restart_under_load

PILOTS = 20
BATCH = 50


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
