"""Operators' actions carried out by the director end to end on every real CE
(conftest.py's `director_backend`), through the real server over TLS with operators' tokens:
a ban on the CE stops submission and allowing it resumes it (SiteManager); a kill request ends
a running pilot Aborted, "killed by <who>: <why>", and the CE no longer runs it (Operator); an
output request fetches a failed pilot's output before the CE job is cleaned (Operator).

The local CE's side of the same requests is tests/director/cycle/test_requests.py.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from director.ce.base import ComputingElement
from director.client import ServerClient, make_client
from director.loop import Director
from server.identity import OPERATOR, SITE_MANAGER
from server.models import (
    FINAL_STATUSES,
    BanRequest,
    BanTarget,
    KillRequest,
    OutputFetchRequest,
    PilotRequest,
    PilotStatus,
)
from tests.conftest import LiveServer
from tests.director.ce.contract.conftest import SLEEPY_PILOT, DirectorBackend
from tests.director.ce.director_e2e import (
    PATH,
    PATIENCE_S,
    monitor_until,
    records,
    require_pilot_endpoints,
    running_director,
    settings_for,
)


@asynccontextmanager
async def client_as(server: LiveServer, sub: str, prop: str) -> AsyncIterator[ServerClient]:
    """A client with a token of the VO carrying one DIRAC property."""
    client = make_client(
        server.url,
        token_file=None,
        token=SecretStr(server.token(sub, "lhcb", [prop])),
        ca_bundle=server.ca_file,
        timeout=30.0,
    )
    try:
        yield client
    finally:
        await client.aclose()


async def until(check: Callable[[], Awaitable[bool]]) -> bool:
    """Poll `check` until it holds or the CE's patience runs out."""
    deadline = time.monotonic() + PATIENCE_S
    while not await check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(1.0)
    return True


async def request_of(operator: ServerClient, kind: str, stamp: str) -> PilotRequest:
    [request] = await operator.list_requests(kind, pilot_stamp=stamp)
    return request


def ce_of(director: Director, queue: str) -> ComputingElement:
    return director.ce_for(next(r for r in director.queues if r.queue == queue))


async def test_operators_ban_kill_and_fetch_output_through_the_director(
    director_backend: DirectorBackend, tmp_path: Path
) -> None:
    backend = director_backend
    server = backend.server
    require_pilot_endpoints(server)
    tag = uuid.uuid4().hex[:6]  # a site of its own: reruns never mix
    site = f"LCG.Ops{tag}.test"
    sleepy = tmp_path / "sleepy-pilot.py"
    sleepy.write_text(SLEEPY_PILOT)

    def queue(**options: Any) -> dict[str, Any]:
        return {
            "max_total_pilots": 2,
            "max_waiting_pilots": 2,
            "environment": {"PATH": PATH},
            **backend.queue_options,
            "pilots_per_cycle": 1,
            **options,
        }

    settings = settings_for(
        server,
        tmp_path,
        name=f"ops-{backend.name}-{tag}",
        site=site,
        ce=backend.ce,
        ce_block=backend.ce_block,
        queues={
            # HTCondor signals a removed job's wrapper, which would report its own end
            # ("stopped by signal") before the director records the kill: SIGKILL leaves
            # it no word. A-REX's fork back-end kills only the job's top process (conftest).
            "sleepy": queue(
                pilot={"files": [{"name": "dirac-pilot.py", "path": str(sleepy)}]},
                **(
                    {"extra_attributes": {"kill_sig": "SIGKILL"}}
                    if backend.name == "htcondor-pool"
                    else {}
                ),
            ),
            "failing": queue(pilot={"environment": {"SITE_DIRECTOR_DEMO_FAIL": "1"}}),
        },
    )
    async with (
        running_director(settings) as director,
        client_as(server, "site-manager", SITE_MANAGER) as manager,
        client_as(server, "operator", OPERATOR) as operator,
    ):
        assert director.check() == []

        # 3. a ban on the CE: the cycle submits nothing and says why; allowed, it submits
        ban = await manager.ban(BanRequest(site=site, ce=backend.ce, reason="CE upgrade"))
        assert ban.active
        outcomes = {o.queue.rsplit("/", 1)[-1]: o for o in await director.run_cycle()}
        assert {q: o.submitted for q, o in outcomes.items()} == {"sleepy": 0, "failing": 0}
        assert all(o.why.startswith("banned") and "CE upgrade" in o.why for o in outcomes.values())
        assert [b.ban_id for b in await manager.allow(BanTarget(site=site, ce=backend.ce))] == [
            ban.ban_id
        ]
        outcomes = {o.queue.rsplit("/", 1)[-1]: o for o in await director.run_cycle()}
        assert {q: (o.submitted, o.failed, o.error) for q, o in outcomes.items()} == {
            "sleepy": (1, 0, None),
            "failing": (1, 0, None),
        }
        (victim,), (failed,) = (outcomes[q].stamps for q in ("sleepy", "failing"))
        ref_of = {s: r["PilotJobReference"] for s, r in records(server, [victim, failed]).items()}

        # 2. the failing pilot ends (its wrapper says so, the CE too); an operator asks for
        # its output before any monitoring step cleans the job (the operator's action under
        # test; the automatic fetch before cleaning is tests/director/cycle/test_requests.py's).
        failing_ce = ce_of(director, "failing")

        async def failing_ended() -> bool:
            [status] = await failing_ce.status([ref_of[failed]])
            found = records(server, [failed])[failed]
            return status.status in FINAL_STATUSES and found["Status"] in FINAL_STATUSES

        assert await until(failing_ended), records(server, [failed])
        assert records(server, [failed])[failed]["Status"] in backend.failed_statuses
        await operator.request_outputs(
            OutputFetchRequest(pilot_stamps=[failed], reason="why did it fail?")
        )

        # 1. the sleepy pilot runs; an operator asks for it to be killed
        sleepy_ce = ce_of(director, "sleepy")

        async def running() -> bool:
            [status] = await sleepy_ce.status([ref_of[victim]])
            return status.status is PilotStatus.RUNNING

        assert await until(running), await sleepy_ce.status([ref_of[victim]])
        await operator.request_kills(KillRequest(pilot_stamps=[victim], reason="draining"))

        found = await monitor_until(
            director,
            server,
            [victim, failed],
            lambda f: f[victim]["Status"] in FINAL_STATUSES,
        )
        assert found[victim]["Status"] == PilotStatus.ABORTED, found[victim]
        assert found[victim]["StatusReason"] == "killed by operator: draining", found[victim]
        assert (await request_of(operator, "kill", victim)).state == "done"

        async def not_running() -> bool:
            [status] = await sleepy_ce.status([ref_of[victim]])
            return status.status is None or status.status in FINAL_STATUSES

        assert await until(not_running), await sleepy_ce.status([ref_of[victim]])

        output = await operator.pilot_output(failed)
        assert output is not None
        assert output.not_available is None, output
        assert output.std_output is not None
        assert "CheckCredentials" in output.std_output, output.std_output[-2000:]
        assert (await request_of(operator, "output", failed)).state == "done"
