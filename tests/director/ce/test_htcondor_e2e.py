"""End to end through a real HTCondor pool with what only HTCondor does: the CE holds a job
whose pilot exits non-zero (`Held(3)`, the exit code in the reason: Aborted), and monitoring
leaves nothing held behind.

The director submits with spooling to the pool's schedd (addressed like an HTCondor-CE); the
startd runs each wrapper in the chroot as the `pilot` user; the wrapper reports to the real
server over TLS. Good, failing and killed pilots on every real CE (on the pool the killed one
is a job parked idle that an operator removes, `_pool_backend` in contract/conftest.py):
contract/test_director_e2e.py.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest

from server.models import FINAL_STATUSES, PilotStatus
from tests.conftest import LiveServer
from tests.director.ce.director_e2e import (
    PATH,
    PATIENCE_S,
    monitor_until,
    records,
    require_pilot_endpoints,
    running_director,
    settings_for,
)
from tests.director.ce.htcondor_infra import HTCondorPool, htcondor_pool

pytestmark = [pytest.mark.htcondor, pytest.mark.slow]
__all__ = ["htcondor_pool"]  # the fixture, imported so pytest finds it


async def test_the_pool_holds_a_failed_pilot_with_its_exit_code_until_cleaned(
    htcondor_pool: HTCondorPool, live_server_tls: LiveServer, tmp_path: Path
) -> None:
    require_pilot_endpoints(live_server_tls)
    tag = uuid.uuid4().hex[:6]  # a site of its own: reruns never mix
    limits = {"max_total_pilots": 2, "max_waiting_pilots": 2, "environment": {"PATH": PATH}}
    settings = settings_for(
        live_server_tls,
        tmp_path,
        name=f"htcondor-e2e-{tag}",
        site=f"LCG.Pool{tag}.test",
        ce=htcondor_pool.host,
        ce_block={
            "kind": "htcondor",
            "host": htcondor_pool.host,
            "port": htcondor_pool.port,
            "schedd_name": htcondor_pool.schedd_name,
            "idtoken_dir": str(htcondor_pool.token_dir),
        },
        queues={
            "failing": {
                **limits,
                "pilots_per_cycle": 1,
                "pilot": {"environment": {"SITE_DIRECTOR_DEMO_FAIL": "1"}},
            },
        },
    )
    async with running_director(settings) as director:
        assert director.check() == []
        (outcome,) = await director.run_cycle()
        assert (outcome.submitted, outcome.failed, outcome.error) == (1, 0, None)
        (failed,) = outcome.stamps
        reference = records(live_server_tls, [failed])[failed]["PilotJobReference"]
        ce = director.ce_for(director.queues[0])

        found = await monitor_until(
            director,
            live_server_tls,
            [failed],
            lambda f: f[failed]["Status"] in FINAL_STATUSES,
        )
        assert found[failed]["Status"] in (PilotStatus.FAILED, PilotStatus.ABORTED), found[failed]

        # the CE holds the failing pilot's job (non-zero exit), with its exit code (the wrapper
        # reports its end to the server first, then exits with the pilot's code)
        deadline = time.monotonic() + PATIENCE_S
        while True:
            (held,) = await ce.status([reference])
            if held.status in FINAL_STATUSES or time.monotonic() > deadline:
                break
            await asyncio.sleep(1.0)
        assert held.status is PilotStatus.ABORTED, held
        # held with the exit code, or already removed by the director's cleaning after that
        assert held.ce_state in ("Held(3)", "Removed"), held
        assert "pilot exited with code 2" in held.reason, held

        # monitoring cleans the ended job off the CE: in the end it is not held any more
        deadline = time.monotonic() + PATIENCE_S
        while True:
            await director.monitor_cycle()
            (last,) = await ce.status([reference])
            if not last.ce_state.startswith("Held") or time.monotonic() > deadline:
                break
            await asyncio.sleep(1.0)
        assert not last.ce_state.startswith("Held"), last
        assert last.status in FINAL_STATUSES, last
