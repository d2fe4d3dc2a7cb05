"""The `diracx` demand source: waiting jobs per site from a job service's summary."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI, Header, HTTPException

from tests.conftest import LiveServer, free_port
from tests.director.conftest import queue_block, settings_for, write_config


class FakeDiracXJobs:
    """Stands in for DiracX's job service (`POST /api/jobs/summary`), which cannot run here:
    it answers the grouping by Site for Status = Waiting from `waiting`, and records calls."""

    def __init__(self) -> None:
        self.waiting: dict[str, int] = {}
        self.calls: list[dict[str, Any]] = []
        self.app = FastAPI()

        @self.app.post("/api/jobs/summary")
        async def summary(
            body: dict[str, Any], authorization: str = Header("")
        ) -> list[dict[str, Any]]:
            if not authorization.startswith("Bearer "):
                raise HTTPException(401)
            self.calls.append(body)
            assert body["grouping"] == ["Site"]
            return [{"Site": site, "count": n} for site, n in self.waiting.items()]


@pytest.fixture
def job_service() -> Iterator[tuple[FakeDiracXJobs, str]]:
    fake = FakeDiracXJobs()
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(fake.app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield fake, f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


async def test_demand_is_waiting_jobs_minus_waiting_pilots(
    live_server_tls: LiveServer,
    tmp_path: Path,
    make_director: Any,
    job_service: tuple[FakeDiracXJobs, str],
) -> None:
    fake, url = job_service
    path, site = write_config(
        tmp_path,
        server_url=live_server_tls.url,
        ca_file=live_server_tls.ca_file,
        token=live_server_tls.director_token,
        slots=1,
        director={"demand": {"source": "diracx", "url": url}},
        queues={
            "default": queue_block(
                max_total_pilots=10,
                max_waiting_pilots=10,
                pilots_per_cycle=10,
                environment={"TEST_PILOT_SLEEP": "60"},
            )
        },
    )
    director = make_director(settings_for(path))
    fake.waiting = {site: 3, "Other.Site.org": 50}
    [first] = await director.run_cycle()
    assert (first.slots, first.demand, first.n, first.submitted) == (10, 3, 3, 3)
    assert first.why == "demand 3"
    [second] = await director.run_cycle()  # 1 running, 2 waiting pilots cover 2 of 3 jobs
    assert (second.waiting, second.demand, second.submitted) == (2, 1, 1)
    fake.waiting = {}
    [third] = await director.run_cycle()
    assert third.n == 0
    assert fake.calls[0]["search"] == [
        {"parameter": "Status", "operator": "eq", "value": "Waiting"}
    ]


async def test_an_unreachable_job_service_means_no_demand(
    live_server_tls: LiveServer, tmp_path: Path, make_director: Any
) -> None:
    path, _ = write_config(
        tmp_path,
        server_url=live_server_tls.url,
        ca_file=live_server_tls.ca_file,
        token=live_server_tls.director_token,
        director={"demand": {"source": "diracx", "url": f"http://127.0.0.1:{free_port()}"}},
    )
    director = make_director(settings_for(path))
    [outcome] = await director.run_cycle()
    assert outcome.error is None
    assert outcome.n == 0
