"""The server killed (SIGKILL, then SIGTERM) and started again while wrapper-like clients send
log batches: every line that got a 204 is stored, and the clients carry on by themselves; and
a director whose server dies in the middle of a cycle resumes without submitting twice."""

from __future__ import annotations

import asyncio
import signal
import ssl
from collections import Counter
from pathlib import Path
from typing import Any

from director.client import ce_reference
from director.daemon import client_for
from director.loop import Director
from tests.conftest import TestCA as CAFiles
from tests.conftest import free_port
from tests.director.conftest import ManualClock, queue_block, settings_for, write_config
from tests.director.cycle.conftest import pilots_of
from tests.reliability.crash_trials import ce_jobs
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


async def test_the_director_rides_out_a_server_restart(
    tmp_path: Path, test_ca: CAFiles, clock: ManualClock
) -> None:
    """SIGKILL the server between the CE submission and the references' PATCH, and keep it
    down for a cycle: the director's cycles fail, then resume; nothing is submitted twice."""
    server = ServerProc(tmp_path / "server", free_port(), tls=(test_ca.cert_file, test_ca.key_file))
    verify = ssl.create_default_context(cafile=str(test_ca.ca_file))
    await asyncio.to_thread(server.start, verify=verify)
    path, site = write_config(
        tmp_path,
        server_url=server.url,
        ca_file=test_ca.ca_file,
        token=server.director_token,
        queues={
            "default": queue_block(
                max_total_pilots=4,
                max_waiting_pilots=4,
                pilots_per_cycle=2,
                environment={"TEST_PILOT_SLEEP": "120"},
            )
        },
    )
    settings = settings_for(path)
    director = Director(settings, client=client_for(settings), clock=clock)
    assert director.client is not None
    patch = director.client.patch_metadata
    killed = {"done": False}

    async def kill_then_patch(updates: Any) -> None:
        if not killed["done"]:
            killed["done"] = True
            await asyncio.to_thread(server.kill)
        await patch(updates)

    director.client.patch_metadata = kill_then_patch  # type: ignore[method-assign]
    try:
        [broken] = await director.run_cycle()
        assert broken.error is not None
        [down] = await director.run_cycle()
        assert down.error is not None
        assert down.submitted == 0
        assert len(await ce_jobs(director)) == 2

        await asyncio.to_thread(server.start, verify=verify)
        [resumed] = await director.run_cycle()
        assert resumed.error is None, resumed.why
        assert resumed.submitted == 2  # the reconciliation counted the first two
        jobs = await ce_jobs(director)
        pilots = await pilots_of(director, site)
        assert len(jobs) == 4
        assert set(pilots) == set(jobs)
        assert all(ce_reference(p) == jobs[s] for s, p in pilots.items())
    finally:
        for ref in director.queues:
            ce = director.ce_for(ref)
            await ce.kill([j.reference for j in await ce.list_jobs(director.spec_for(ref))])
        await director.close()
        await director.client.aclose()
        await asyncio.to_thread(server.kill)
