"""The server's database unreachable for a while (a TCP proxy between the server and
PostgreSQL is cut, then restored): the director's cycles fail without submitting, it resumes
once the database is back, and no pilot is ever submitted twice or left unregistered, also
when the outage starts between the CE submission and the references' PATCH."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from director.client import ce_reference
from director.daemon import client_for
from director.loop import Director
from tests.conftest import TestCA as CAFiles
from tests.conftest import free_port, missing
from tests.director.conftest import ManualClock, queue_block, settings_for, write_config
from tests.director.cycle.conftest import pilots_of
from tests.reliability.crash_trials import ce_jobs
from tests.reliability.load import pg_create, pg_drop, pg_name, pg_url
from tests.reliability.proxy import TcpProxy
from tests.reliability.swarm import ServerProc

MAX_TOTAL = 6


@pytest.fixture
async def outage_db() -> AsyncIterator[str]:
    name = pg_name("outage")
    try:
        await pg_create(name)
    except OSError as exc:
        missing(f"PostgreSQL is not reachable on 127.0.0.1:5432: {exc}")
    yield name
    await pg_drop(name)


async def cycle_until_clean(director: Director, attempts: int = 5) -> Any:
    """Cycles as the daemon runs them, until one goes through (the server may need a
    request or two to notice its pool's connections died)."""
    for _ in range(attempts):
        [outcome] = await director.run_cycle()
        if outcome.error is None:
            return outcome
        await asyncio.sleep(0.5)
    raise AssertionError(f"the director did not resume: {outcome.error}")


async def test_director_resumes_after_a_database_outage_without_duplicates(
    outage_db: str, tmp_path: Path, test_ca: CAFiles, clock: ManualClock
) -> None:
    proxy = TcpProxy(5432)
    await proxy.start()
    server = ServerProc(
        tmp_path / "server",
        free_port(),
        db_url=pg_url(outage_db, proxy.port),
        tls=(test_ca.cert_file, test_ca.key_file),
    )
    verify = ssl.create_default_context(cafile=str(test_ca.ca_file))
    await asyncio.to_thread(server.start, verify=verify)
    path, site = write_config(
        tmp_path,
        server_url=server.url,
        ca_file=test_ca.ca_file,
        token=server.director_token,
        director={"submit_grace_seconds": 300},
        queues={
            "default": queue_block(
                max_total_pilots=MAX_TOTAL,
                max_waiting_pilots=MAX_TOTAL,
                pilots_per_cycle=2,
                environment={"TEST_PILOT_SLEEP": "120"},
            )
        },
    )
    settings = settings_for(path)
    director = Director(settings, client=client_for(settings), clock=clock)
    try:
        [first] = await director.run_cycle()
        assert first.submitted == 2, first.why

        # The database goes away before a cycle: it fails, nothing reaches the CE.
        await proxy.cut()
        for _ in range(2):
            [down] = await director.run_cycle()
            assert down.error is not None
            assert down.submitted == 0
        assert len(await ce_jobs(director)) == 2

        await proxy.start()  # back, on the same port
        resumed = await cycle_until_clean(director)
        assert resumed.submitted == 2
        assert len(await ce_jobs(director)) == 4

        # The database goes away after the CE took the pilots, before their references.
        assert director.client is not None
        patch = director.client.patch_metadata
        cut = {"done": False}

        async def cut_then_patch(updates: Any) -> None:
            if not cut["done"]:
                cut["done"] = True
                await proxy.cut()
            await patch(updates)

        director.client.patch_metadata = cut_then_patch  # type: ignore[method-assign]
        [broken] = await director.run_cycle()
        assert broken.error is not None
        assert len(await ce_jobs(director)) == MAX_TOTAL
        await proxy.start()
        again = await cycle_until_clean(director)
        assert again.n == 0, again.why  # the CE's count includes the unpatched pilots

        jobs = await ce_jobs(director)
        pilots = await pilots_of(director, site)
        assert len(jobs) == MAX_TOTAL
        assert set(pilots) == set(jobs)  # each CE job registered, no pilot twice
        for stamp, pilot in pilots.items():
            assert ce_reference(pilot) == jobs[stamp]
            assert pilot["Status"] != "Aborted"
    finally:
        for ref in director.queues:
            ce = director.ce_for(ref)
            await ce.kill([j.reference for j in await ce.list_jobs(director.spec_for(ref))])
        await director.close()
        assert director.client is not None
        await director.client.aclose()
        await asyncio.to_thread(server.kill)
        await proxy.cut()
