"""End to end through a real ARC CE with what only ARC does: a CE token the director buys from
its own server (the real one over TLS, which A-REX trusts as a token issuer).

The director buys the token with its service token and submits a pilot to A-REX, which verifies
the token through the server's discovery documents over HTTPS; the pilot runs, reports its end
and its log lines, and the monitoring cycles clean its job off the CE. Good, failing and killed
pilots on every real CE: contract/test_director_e2e.py.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest

from server.models import FINAL_STATUSES
from tests.conftest import LiveServer
from tests.director.ce.arc_infra import ARCInfra
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

pytestmark = [pytest.mark.arc, pytest.mark.slow]


async def test_a_pilot_through_arc_with_a_server_issued_token(
    arc_infra: ARCInfra, arc_issuer: LiveServer, tmp_path: Path
) -> None:
    require_pilot_endpoints(arc_issuer)
    tag = uuid.uuid4().hex[:6]  # a site of its own: reruns never mix
    settings = settings_for(
        arc_issuer,
        tmp_path,
        name=f"arc-e2e-{tag}",
        site=f"LCG.ArcToken{tag}.test",
        ce="localhost",
        ce_block={
            "kind": "arc",
            "url": arc_infra.url,
            "ca_file": str(arc_infra.ca_file),
            "ce_token": {},  # bought from the director's own server with its service token
        },
        queues={
            "token": {
                "ce_queue": arc_infra.queue,
                # GLUE2 counts every job on the shared queue, leftovers of other tests too
                "max_total_pilots": 10_000,
                "max_waiting_pilots": 10_000,
                "pilots_per_cycle": 1,
                "environment": {"PATH": PATH},
            }
        },
    )
    async with running_director(settings) as director:
        assert director.check() == []
        (outcome,) = await director.run_cycle()
        assert (outcome.submitted, outcome.failed, outcome.error) == (1, 0, None)
        (stamp,) = outcome.stamps
        reference = records(arc_issuer, [stamp])[stamp]["PilotJobReference"]
        assert reference.startswith("arc://")

        found = await monitor_until(
            director, arc_issuer, [stamp], lambda f: f[stamp]["Status"] in FINAL_STATUSES
        )
        await assert_reported_done(arc_issuer, found, stamp)

        # the token also serves the monitoring, which cleans the job off the CE
        ce = director.ce_for(director.queues[0])
        deadline = time.monotonic() + PATIENCE_S
        while True:
            await director.monitor_cycle()
            (gone,) = await ce.status([reference])
            if "no longer knows" in gone.reason or time.monotonic() > deadline:
                break
            await asyncio.sleep(1.0)
        assert "no longer knows" in gone.reason, gone
