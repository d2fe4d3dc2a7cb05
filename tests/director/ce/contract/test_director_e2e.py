"""The director end to end on every real CE (conftest.py's `director_backend`): one director
cycle with the real server over TLS, real pilots, monitoring until they are final, cleaning.

Three queues on the one CE: pilots that succeed (Done, their log lines on the server), a pilot
whose payload fails (non-zero exit: Failed, or the backend's documented mapping), and a pilot
an operator kills on the CE (Aborted, with the CE's word for it). Then the monitoring cycles
clean the ended jobs off the CE. What only one backend does stays in its own file
(test_arc_e2e.py: the server-issued CE token; test_htcondor_e2e.py: the held exit code).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

from server.models import FINAL_STATUSES, PilotStatus
from tests.director.ce.contract.conftest import DirectorBackend
from tests.director.ce.director_e2e import (
    PATH,
    PATIENCE_S,
    assert_reported_done,
    monitor_until,
    records,
    require_pilot_endpoints,
    running_director,
    settings_for,
)


async def test_a_director_cycle_ends_pilots_as_the_ce_says_and_cleans_up(
    director_backend: DirectorBackend, tmp_path: Path
) -> None:
    backend = director_backend
    server = backend.server
    require_pilot_endpoints(server)
    tag = uuid.uuid4().hex[:6]  # a site of its own: reruns never mix

    def queue(pilots: int, **options: Any) -> dict[str, Any]:
        return {
            "max_total_pilots": 2,
            "max_waiting_pilots": 2,
            "environment": {"PATH": PATH},
            **backend.queue_options,
            "pilots_per_cycle": pilots,
            **options,
        }

    settings = settings_for(
        server,
        tmp_path,
        name=f"e2e-{backend.name}-{tag}",
        site=f"LCG.E2e{tag}.test",
        ce=backend.ce,
        ce_block=backend.ce_block,
        queues={
            "good": queue(2),
            "failing": queue(1, pilot={"environment": {"SITE_DIRECTOR_DEMO_FAIL": "1"}}),
            "killed": queue(1, **backend.killed_options),
        },
    )
    async with running_director(settings) as director:
        assert director.check() == []
        outcomes = {o.queue.rsplit("/", 1)[-1]: o for o in await director.run_cycle()}
        assert {q: (o.submitted, o.failed, o.error) for q, o in outcomes.items()} == {
            "good": (2, 0, None),
            "failing": (1, 0, None),
            "killed": (1, 0, None),
        }
        good, (failed,), (killed,) = (outcomes[q].stamps for q in ("good", "failing", "killed"))
        stamps = [*good, failed, killed]
        first = records(server, stamps)
        assert all(
            r["PilotJobReference"].startswith(backend.reference_prefix) for r in first.values()
        )
        assert {r["GridType"] for r in first.values()} == {backend.grid_type}
        ref_of = {s: first[s]["PilotJobReference"] for s in stamps}

        # an operator kills the killed queue's pilot on the CE
        ce = director.ce_for(next(r for r in director.queues if r.queue == "killed"))
        deadline = time.monotonic() + PATIENCE_S
        while True:
            (victim,) = await ce.status([ref_of[killed]])
            if victim.status is backend.kill_when or time.monotonic() > deadline:
                break
            await asyncio.sleep(1.0)
        assert victim.status is backend.kill_when, victim
        assert all(r.ok for r in await ce.kill([ref_of[killed]]))

        found = await monitor_until(
            director,
            server,
            stamps,
            lambda f: all(f[s]["Status"] in FINAL_STATUSES for s in stamps),
        )
        for stamp in good:
            await assert_reported_done(server, found, stamp)
        assert found[failed]["Status"] in backend.failed_statuses, found[failed]
        assert found[killed]["Status"] == PilotStatus.ABORTED, found[killed]
        assert backend.kill_word in found[killed]["StatusReason"].lower(), found[killed]

        # monitoring cleans the ended jobs off the CE: none left, the CE knows none of them
        deadline = time.monotonic() + PATIENCE_S
        while True:
            await director.monitor_cycle()
            left = [
                job
                for ref in director.queues
                for job in await director.ce_for(ref).list_jobs(director.spec_for(ref))
            ]
            if not left or time.monotonic() > deadline:
                break
            await asyncio.sleep(1.0)
        assert left == []
