"""What the director-level end-to-end tests share: a director configured for one site on one
real CE and the real server over TLS, the server's pilot records and log lines as an admin
reads them, and monitoring cycles until the records say what a test waits for.

Used by the shared case (contract/test_director_e2e.py) and by what only one backend does
(test_arc_e2e.py, test_htcondor_e2e.py).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from http import HTTPStatus
from pathlib import Path
from typing import Any

import httpx

from director.config import load_config
from director.daemon import client_for
from director.loop import Director
from server.models import PilotStatus
from tests.conftest import LiveServer, missing

PATH = "/usr/local/bin:/usr/bin:/bin"
"""Batch systems start jobs with only the environment they are given: no PATH."""
PATIENCE_S = 180.0
Records = dict[str, dict[str, Any]]


def trust(server: LiveServer) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(server.ca_file))


def require_pilot_endpoints(server: LiveServer) -> None:
    """The wrapper needs the server's secret exchange and log endpoints (issue [2/7])."""
    for path in ("/api/auth/secret-exchange", "/api/pilots/search/logs"):
        response = httpx.post(f"{server.url}{path}", json={}, verify=trust(server))
        if response.status_code == HTTPStatus.NOT_FOUND:
            missing(f"the server has no {path}: pilots cannot report through it")


def settings_for(
    server: LiveServer,
    work: Path,
    *,
    name: str,
    site: str,
    ce: str,
    ce_block: dict[str, Any],
    queues: dict[str, dict[str, Any]],
) -> Any:
    """One site with one CE and these queues; pilots run the demo pilot and clean up after."""
    token_file = work / "director.token"
    token_file.write_text(server.director_token + "\n")
    token_file.chmod(0o600)
    return load_config(
        None,
        {
            "server": {
                "url": server.url,
                "token_file": str(token_file),
                "ca_bundle": str(server.ca_file),
            },
            "director": {
                "name": name,
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
            "sites": {site: {"vo": "lhcb", "ces": {ce: {"ce": ce_block, "queues": queues}}}},
        },
    )


@asynccontextmanager
async def running_director(settings: Any) -> AsyncIterator[Director]:
    """A director on these settings; on the way out it leaves nothing running on the CE."""
    director = Director(settings, client=client_for(settings))
    try:
        yield director
    finally:
        try:
            for ref in director.queues:
                ce = director.ce_for(ref)
                jobs = [j.reference for j in await ce.list_jobs(director.spec_for(ref))]
                if jobs:
                    await ce.kill(jobs)
                    await ce.clean(jobs)
        finally:
            await director.close()
            if director.client is not None:
                await director.client.aclose()


def records(server: LiveServer, stamps: list[str]) -> Records:
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
    director: Director, server: LiveServer, stamps: list[str], done: Callable[[Records], bool]
) -> Records:
    """Monitoring cycles until the server's records satisfy `done`; the CE's pace decides."""
    deadline = time.monotonic() + PATIENCE_S
    while True:
        await director.monitor_cycle()
        found = records(server, stamps)
        if done(found) or time.monotonic() > deadline:
            return found
        await asyncio.sleep(1.0)


async def assert_reported_done(server: LiveServer, found: Records, stamp: str) -> None:
    """Done, and the pilot's own log lines reached the server (the wrapper sends its last
    lines around its final status: they may trail it a little)."""
    assert found[stamp]["Status"] == PilotStatus.DONE, (
        found[stamp]["StatusReason"],
        log_messages(server, stamp)[-5:],
    )
    deadline = time.monotonic() + 30
    while True:
        messages = log_messages(server, stamp)
        seen = any("CheckCredentials: DiracX token present" in m for m in messages)
        if seen or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    assert seen, messages
