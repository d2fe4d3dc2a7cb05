"""End to end through a real HTCondor pool: the director, the real server over TLS, real pilots.

The director submits pilots with spooling to the pool's schedd (addressed like an HTCondor-CE);
the startd runs each wrapper in the chroot as the `pilot` user; the wrapper exchanges its secret
with the server, ships its log lines and reports its end; the director's monitoring cycles follow
the jobs through the schedd and clean up after them. Three queues on the one CE: pilots that
succeed, a pilot that exits non-zero (held by the CE), and a pilot parked idle that an operator
removes.
"""

from __future__ import annotations

import asyncio
import ssl
import time
import uuid
from http import HTTPStatus
from pathlib import Path
from typing import Any

import httpx
import pytest

from director.config import load_config
from director.daemon import client_for
from director.loop import Director
from server.models import FINAL_STATUSES, PilotStatus
from tests.conftest import LiveServer, missing
from tests.director.ce.htcondor_infra import HTCondorPool, htcondor_pool

pytestmark = [pytest.mark.htcondor, pytest.mark.slow]
__all__ = ["htcondor_pool"]  # the fixture, imported so pytest finds it

PATH = "/usr/local/bin:/usr/bin:/bin"
"""HTCondor starts jobs with only the environment they are given: no PATH."""
PATIENCE_S = 180.0


def settings_for(pool: HTCondorPool, server: LiveServer, work: Path, site: str) -> Any:
    token_file = work / "director.token"
    token_file.write_text(server.director_token + "\n")
    token_file.chmod(0o600)
    ce_block = {
        "kind": "htcondor",
        "host": pool.host,
        "port": pool.port,
        "schedd_name": pool.schedd_name,
        "idtoken_dir": str(pool.token_dir),
    }
    limits = {"max_total_pilots": 2, "max_waiting_pilots": 2, "environment": {"PATH": PATH}}
    return load_config(
        None,
        {
            "server": {
                "url": server.url,
                "token_file": str(token_file),
                "ca_bundle": str(server.ca_file),
            },
            "director": {
                "name": "htcondor-e2e",
                "work_dir": str(work / "director"),
                "held_timeout_seconds": 3600,
                "submit_grace_seconds": 3600,
                "clean_finished": True,
            },
            "vos": ["lhcb"],
            "pilot": {
                "setup": "Test-Setup",
                "files": [{"name": "dirac-pilot.py", "template": "demo-pilot.py"}],
                "python_commands": ["python3"],
            },
            "sites": {
                site: {
                    "vo": "lhcb",
                    "ces": {
                        pool.host: {
                            "ce": ce_block,
                            "queues": {
                                "good": {**limits, "pilots_per_cycle": 2, "memory_mb": 64},
                                "failing": {
                                    **limits,
                                    "pilots_per_cycle": 1,
                                    "pilot": {"environment": {"SITE_DIRECTOR_DEMO_FAIL": "1"}},
                                },
                                "parked": {
                                    **limits,
                                    "pilots_per_cycle": 1,
                                    # matches no slot: the job stays idle until removed
                                    "extra_attributes": {"requirements": "False"},
                                },
                            },
                        }
                    },
                }
            },
        },
    )


def trust(server: LiveServer) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(server.ca_file))


def records(server: LiveServer, stamps: list[str]) -> dict[str, dict[str, Any]]:
    response = httpx.post(
        f"{server.url}/api/pilots/search",
        params={"page": 1, "per_page": 100},
        json={"search": [{"parameter": "PilotStamp", "operator": "in", "values": stamps}]},
        headers={"Authorization": f"Bearer {server.admin_token}"},
        verify=trust(server),
    )
    assert response.status_code in (200, 206), response.text
    return {r["PilotStamp"]: r for r in response.json()}


def log_messages(server: LiveServer, stamp: str) -> list[str]:
    response = httpx.post(
        f"{server.url}/api/pilots/search/logs",
        params={"page": 1, "per_page": 1000},
        json={"search": [{"parameter": "PilotStamp", "operator": "eq", "value": stamp}]},
        headers={"Authorization": f"Bearer {server.admin_token}"},
        verify=trust(server),
    )
    assert response.status_code in (200, 206), response.text
    return [line["Message"] for line in response.json()]


@pytest.fixture(autouse=True, scope="module")
def _server_has_the_pilot_endpoints(live_server_tls: LiveServer) -> None:
    """The wrapper needs the server's secret exchange and log endpoints (issue [2/7])."""
    for path in ("/api/auth/secret-exchange", "/api/pilots/search/logs"):
        response = httpx.post(
            f"{live_server_tls.url}{path}", json={}, verify=trust(live_server_tls)
        )
        if response.status_code == HTTPStatus.NOT_FOUND:
            missing(f"the server has no {path} yet: pilots cannot report through it")


async def monitor_until(
    director: Director, server: LiveServer, stamps: list[str], done: Any
) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + PATIENCE_S
    while True:
        await director.monitor_cycle()
        found = records(server, stamps)
        if done(found) or time.monotonic() > deadline:
            return found
        await asyncio.sleep(1.0)


async def test_pilots_through_the_pool_end_as_the_ce_says(
    htcondor_pool: HTCondorPool, live_server_tls: LiveServer, tmp_path: Path
) -> None:
    site = f"LCG.Pool{uuid.uuid4().hex[:6]}.test"  # a site of its own: reruns never mix
    settings = settings_for(htcondor_pool, live_server_tls, tmp_path, site)
    director = Director(settings, client=client_for(settings))
    try:
        assert director.check() == []
        outcomes = {o.queue.rsplit("/", 1)[-1]: o for o in await director.run_cycle()}
        assert {q: (o.submitted, o.failed, o.error) for q, o in outcomes.items()} == {
            "good": (2, 0, None),
            "failing": (1, 0, None),
            "parked": (1, 0, None),
        }
        good, failing, parked = (outcomes[q].stamps for q in ("good", "failing", "parked"))
        stamps = [*good, *failing, *parked]
        first = records(live_server_tls, stamps)
        assert all(r["PilotJobReference"].startswith("htcondorce://") for r in first.values())
        assert {r["GridType"] for r in first.values()} == {"HTCondorCE"}

        def ran(found: dict[str, dict[str, Any]]) -> bool:
            return all(found[s]["Status"] in FINAL_STATUSES for s in [*good, *failing]) and (
                found[parked[0]]["Status"] == PilotStatus.WAITING
            )

        found = await monitor_until(director, live_server_tls, stamps, ran)

        for stamp in good:
            assert found[stamp]["Status"] == PilotStatus.DONE, (
                found[stamp]["StatusReason"],
                log_messages(live_server_tls, stamp)[-5:],
            )
            # the wrapper sends its last lines around its final status: give them a moment
            deadline = time.monotonic() + 30
            while True:
                messages = log_messages(live_server_tls, stamp)
                seen = any("CheckCredentials: DiracX token present" in m for m in messages)
                if seen or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
            assert seen, messages
        (failed,) = failing
        assert found[failed]["Status"] in (PilotStatus.FAILED, PilotStatus.ABORTED), found[failed]
        assert found[parked[0]]["Status"] == PilotStatus.WAITING

        # the CE holds the failing pilot's job (non-zero exit), with its exit code
        ref_of = {s: found[s]["PilotJobReference"] for s in stamps}
        ce = director.ce_for(next(r for r in director.queues if r.queue == "failing"))
        # (the wrapper reports its end to the server first, then exits with the pilot's code)
        deadline = time.monotonic() + PATIENCE_S
        while True:
            (held,) = await ce.status([ref_of[failed]])
            if held.status in FINAL_STATUSES or time.monotonic() > deadline:
                break
            await asyncio.sleep(1.0)
        assert held.status is PilotStatus.ABORTED, held
        # held with the exit code, or already removed by the director's cleaning after that
        assert held.ce_state in ("Held(3)", "Removed"), held
        assert "pilot exited with code 2" in held.reason, held

        # an operator removes the parked job: the director records it Aborted with the reason
        assert all(r.ok for r in await ce.kill([ref_of[parked[0]]]))
        found = await monitor_until(
            director,
            live_server_tls,
            stamps,
            lambda f: f[parked[0]]["Status"] in FINAL_STATUSES,
        )
        assert found[parked[0]]["Status"] == PilotStatus.ABORTED
        assert "removed" in found[parked[0]]["StatusReason"]

        # monitoring cleans the ended jobs off the CE (a wrapper may still be finishing after
        # reporting its status): in the end nothing held or live is left
        deadline = time.monotonic() + PATIENCE_S
        while True:
            await director.monitor_cycle()
            left = [
                job
                for ref in director.queues
                for job in await director.ce_for(ref).list_jobs(director.spec_for(ref))
                if job.status not in FINAL_STATUSES
            ]
            statuses = await ce.status([ref_of[s] for s in stamps])
            still_held = [s for s in statuses if s.ce_state.startswith("Held")]
            if not (left or still_held) or time.monotonic() > deadline:
                break
            await asyncio.sleep(1.0)
        assert left == []
        assert still_held == []
        assert {s.status for s in statuses} <= FINAL_STATUSES, statuses
    finally:
        for ref in director.queues:  # leave nothing running in the pool
            ce = director.ce_for(ref)
            await ce.kill([j.reference for j in await ce.list_jobs(director.spec_for(ref))])
        await director.close()
        if director.client is not None:
            await director.client.aclose()
