"""End to end through a real ARC CE: the director, the real server over TLS as the CE's token
issuer, and real pilots run by A-REX's fork back-end.

The director buys a CE token from the server with its service token, submits pilots to A-REX
(which verifies the token through the server's discovery documents over HTTPS), uploads each
wrapper into its session directory; the wrapper, run as `nobody`, exchanges its secret with the
server, ships its log lines and reports its end; the monitoring cycles follow the jobs through
A-REX and clean them up. Three sites share the one CE (so each has its own queue key): pilots
that succeed, a pilot whose payload fails, and a pilot an operator kills on the CE.
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
from tests.director.ce.arc_infra import ARCInfra, arc_infra, arc_issuer

pytestmark = [pytest.mark.arc, pytest.mark.slow]
__all__ = ["arc_infra", "arc_issuer"]  # the fixtures, imported so pytest finds them

PATH = "/usr/local/bin:/usr/bin:/bin"
PATIENCE_S = 180.0
# A-REX's fork back-end kills only the job's top process (cancel-fork-job): the wrapper and
# this pilot live on and report their own end later, so it must come after the test's checks.
SLEEPY_PILOT = """import sys, time
print("sleepy pilot: runs until someone kills it")
sys.stdout.flush()
time.sleep(150)
"""


def settings_for(infra: ARCInfra, server: LiveServer, work: Path, tag: str) -> Any:
    token_file = work / "director.token"
    token_file.write_text(server.director_token + "\n")
    token_file.chmod(0o600)
    sleepy = work / "sleepy-pilot.py"
    sleepy.write_text(SLEEPY_PILOT)
    ce_block = {
        "kind": "arc",
        "url": infra.url,
        "ca_file": str(infra.ca_file),
        "ce_token": {},  # bought from the director's own server with its service token
    }
    limits = {
        "ce_queue": infra.queue,
        "max_total_pilots": 2,
        "max_waiting_pilots": 2,
        "environment": {"PATH": PATH},
    }

    def site(pilots: int, **queue: Any) -> dict[str, Any]:
        return {
            "vo": "lhcb",
            "ces": {
                "localhost": {
                    "ce": ce_block,
                    "queues": {"fork": {**limits, "pilots_per_cycle": pilots, **queue}},
                }
            },
        }

    return load_config(
        None,
        {
            "server": {
                "url": server.url,
                "token_file": str(token_file),
                "ca_bundle": str(infra.ca_file),
            },
            "director": {
                "name": f"arc-e2e-{tag}",
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
                f"LCG.ArcGood{tag}.test": site(2),
                f"LCG.ArcFail{tag}.test": site(
                    1, pilot={"environment": {"SITE_DIRECTOR_DEMO_FAIL": "1"}}
                ),
                f"LCG.ArcKill{tag}.test": site(
                    1, pilot={"files": [{"name": "dirac-pilot.py", "path": str(sleepy)}]}
                ),
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
    assert response.status_code in (HTTPStatus.OK, HTTPStatus.PARTIAL_CONTENT), response.text
    return {r["PilotStamp"]: r for r in response.json()}


def log_messages(server: LiveServer, stamp: str) -> list[str]:
    response = httpx.post(
        f"{server.url}/api/pilots/search/logs",
        params={"page": 1, "per_page": 1000},
        json={"search": [{"parameter": "PilotStamp", "operator": "eq", "value": stamp}]},
        headers={"Authorization": f"Bearer {server.admin_token}"},
        verify=trust(server),
    )
    assert response.status_code in (HTTPStatus.OK, HTTPStatus.PARTIAL_CONTENT), response.text
    return [line["Message"] for line in response.json()]


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


async def test_pilots_through_arc_with_a_server_issued_token(
    arc_infra: ARCInfra, arc_issuer: LiveServer, tmp_path: Path
) -> None:
    for path in ("/api/auth/secret-exchange", "/api/pilots/search/logs"):
        answer = httpx.post(f"{arc_issuer.url}{path}", json={}, verify=trust(arc_issuer))
        if answer.status_code == HTTPStatus.NOT_FOUND:
            missing(f"the server has no {path}: pilots cannot report through it")
    tag = uuid.uuid4().hex[:6]  # sites of their own: reruns never mix
    settings = settings_for(arc_infra, arc_issuer, tmp_path, tag)
    director = Director(settings, client=client_for(settings))
    try:
        assert director.check() == []
        outcomes = {o.queue.split("/", 1)[0]: o for o in await director.run_cycle()}
        by_kind = {site.split(".")[1].removesuffix(tag): o for site, o in outcomes.items()}
        assert {k: (o.submitted, o.failed, o.error) for k, o in by_kind.items()} == {
            "ArcGood": (2, 0, None),
            "ArcFail": (1, 0, None),
            "ArcKill": (1, 0, None),
        }
        good, failing, killed = (by_kind[k].stamps for k in ("ArcGood", "ArcFail", "ArcKill"))
        stamps = [*good, *failing, *killed]
        first = records(arc_issuer, stamps)
        assert all(r["PilotJobReference"].startswith("arc://") for r in first.values())
        assert {r["GridType"] for r in first.values()} == {"ARC"}
        ref_of = {s: first[s]["PilotJobReference"] for s in stamps}

        # an operator kills the sleepy pilot on the CE once it runs
        kill_ref = next(r for r in director.queues if r.site.startswith("LCG.ArcKill"))
        ce = director.ce_for(kill_ref)
        deadline = time.monotonic() + PATIENCE_S
        while True:
            (sleeper,) = await ce.status([ref_of[killed[0]]])
            if sleeper.status is PilotStatus.RUNNING or time.monotonic() > deadline:
                break
            await asyncio.sleep(1.0)
        assert sleeper.status is PilotStatus.RUNNING, sleeper
        assert all(r.ok for r in await ce.kill([ref_of[killed[0]]]))

        found = await monitor_until(
            director,
            arc_issuer,
            stamps,
            lambda f: all(f[s]["Status"] in FINAL_STATUSES for s in stamps),
        )
        for stamp in good:
            assert found[stamp]["Status"] == PilotStatus.DONE, (
                found[stamp]["StatusReason"],
                log_messages(arc_issuer, stamp)[-5:],
            )
            deadline = time.monotonic() + 30
            while True:
                messages = log_messages(arc_issuer, stamp)
                seen = any("CheckCredentials: DiracX token present" in m for m in messages)
                if seen or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
            assert seen, messages
        (failed,) = failing
        assert found[failed]["Status"] == PilotStatus.FAILED, found[failed]
        assert found[killed[0]]["Status"] == PilotStatus.ABORTED, found[killed[0]]
        assert "killed" in found[killed[0]]["StatusReason"].lower(), found[killed[0]]

        # monitoring cleans the ended jobs off the CE
        deadline = time.monotonic() + PATIENCE_S
        while True:
            await director.monitor_cycle()
            left = [
                job
                for ref in director.queues
                for job in await director.ce_for(ref).list_jobs(director.spec_for(ref))
            ]
            gone = await ce.status([ref_of[s] for s in stamps])
            cleaned = all("no longer knows" in s.reason for s in gone)
            if (cleaned and not left) or time.monotonic() > deadline:
                break
            await asyncio.sleep(1.0)
        assert left == []
        assert cleaned, gone
    finally:
        for ref in director.queues:  # leave nothing running on the CE
            ce = director.ce_for(ref)
            jobs = await ce.list_jobs(director.spec_for(ref))
            await ce.kill([j.reference for j in jobs])
            await ce.clean([j.reference for j in jobs])
        await director.close()
        if director.client is not None:
            await director.client.aclose()
