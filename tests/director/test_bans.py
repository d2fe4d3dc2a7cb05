"""The director and bans, against the real server (HTTPS on loopback) and the local CE: a
banned site, CE or queue gets no new pilot from the next cycle on, its live pilots are still
followed, each ban is logged once, and an allowed target submits again. A ban list the
server cannot give means no submission that cycle."""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from director.cycle.outcomes import QueueOutcome
from director.errors import ServerUnavailable
from director.loop import Director
from server.identity import SITE_MANAGER
from tests.conftest import LiveServer
from tests.director.conftest import queue_block, settings_for, write_config


@pytest.fixture
async def manager(live_server_tls: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    """An lhcb operator with DIRAC's SiteManager property."""
    token = live_server_tls.token("site-admin", "lhcb", [SITE_MANAGER])
    async with httpx.AsyncClient(
        base_url=live_server_tls.url,
        verify=ssl.create_default_context(cafile=str(live_server_tls.ca_file)),
        headers={"Authorization": f"Bearer {token}"},
    ) as client:
        yield client


async def ban(manager: httpx.AsyncClient, **target: Any) -> None:
    r = await manager.post("/api/bans", json={"reason": "CE upgrade", **target})
    assert r.status_code == 201, r.text


async def allow(manager: httpx.AsyncClient, **target: Any) -> None:
    r = await manager.post("/api/bans/allow", json=target)
    assert r.status_code == 200, r.text


def by_name(outcomes: list[QueueOutcome]) -> dict[str, QueueOutcome]:
    return {o.queue.rsplit("/", 1)[1]: o for o in outcomes}


def two_queues(live: LiveServer, folder: Path, **block: Any) -> tuple[Path, str]:
    return write_config(
        folder,
        server_url=live.url,
        ca_file=live.ca_file,
        token=live.director_token,
        queues={
            "a": queue_block(pilots_per_cycle=1, **block),
            "b": queue_block(pilots_per_cycle=1, ce_queue="long", **block),
        },
    )


def ban_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "director.bans" and r.levelno == logging.WARNING
    ]


async def test_a_banned_queue_is_skipped_until_allowed(
    live_server_tls: LiveServer,
    tmp_path: Path,
    make_director: Any,
    manager: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    path, site = two_queues(live_server_tls, tmp_path)
    director: Director = make_director(settings_for(path))
    # a queue ban names the CE-side queue name (queue "b" is "long" on the CE)
    await ban(manager, site=site, ce="localhost", queue="long")
    caplog.set_level(logging.INFO, logger="director")
    for _ in range(2):
        outcomes = by_name(await director.run_cycle())
        assert outcomes["a"].submitted == 1, outcomes["a"].why
        assert outcomes["b"].submitted == 0
        assert outcomes["b"].why == f"banned ({site}/localhost/long): CE upgrade"
        assert outcomes["b"].error is None
    [warning] = ban_warnings(caplog)  # once, not once per cycle
    assert f"{site}/localhost/long" in warning
    assert "CE upgrade" in warning
    assert f"{site}/localhost/b" in warning
    assert "by site-admin" in warning

    await allow(manager, site=site, ce="localhost", queue="long")
    outcomes = by_name(await director.run_cycle())
    assert outcomes["b"].submitted == 1, outcomes["b"].why
    assert any(
        "no longer in force" in r.getMessage() for r in caplog.records if r.name == "director.bans"
    )


@pytest.mark.parametrize("level", ["site", "ce"])
async def test_a_banned_site_or_ce_stops_every_queue_but_its_pilots_are_followed(
    live_server_tls: LiveServer,
    tmp_path: Path,
    make_director: Any,
    manager: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
    level: str,
) -> None:
    path, site = two_queues(live_server_tls, tmp_path, environment={"TEST_PILOT_SLEEP": "60"})
    director: Director = make_director(settings_for(path))
    first = by_name(await director.run_cycle())
    assert sum(o.submitted for o in first.values()) == 2
    target = {"site": site} if level == "site" else {"site": site, "ce": "localhost"}
    await ban(manager, **target)
    caplog.set_level(logging.INFO, logger="director")
    outcomes = by_name(await director.run_cycle())
    for name in ("a", "b"):
        assert outcomes[name].submitted == 0
        assert outcomes[name].why.startswith("banned ("), outcomes[name].why
    [warning] = ban_warnings(caplog)  # one line for the ban, naming both queues
    assert f"{site}/localhost/a" in warning
    assert f"{site}/localhost/b" in warning
    # the pilots already submitted are still followed
    monitored = await director.monitor_cycle()
    assert sum(m.checked for m in monitored) == 2
    assert all(m.error is None for m in monitored)
    await allow(manager, **target)
    outcomes = by_name(await director.run_cycle())
    assert sum(o.submitted for o in outcomes.values()) == 2


async def test_another_vos_ban_does_not_stop_us(
    live_server_tls: LiveServer, tmp_path: Path, make_director: Any
) -> None:
    path, site = two_queues(live_server_tls, tmp_path)
    director: Director = make_director(settings_for(path))
    admin = {"Authorization": f"Bearer {live_server_tls.admin_token}"}
    async with httpx.AsyncClient(
        base_url=live_server_tls.url,
        verify=ssl.create_default_context(cafile=str(live_server_tls.ca_file)),
        headers=admin,
    ) as client:
        r = await client.post("/api/bans", json={"vo": "dteam", "site": site, "reason": "dteam"})
        assert r.status_code == 201, r.text
    outcomes = by_name(await director.run_cycle())
    assert sum(o.submitted for o in outcomes.values()) == 2


async def test_no_ban_list_no_submission(
    live_server_tls: LiveServer,
    tmp_path: Path,
    make_director: Any,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path, _site = two_queues(live_server_tls, tmp_path)
    director: Director = make_director(settings_for(path))
    assert director.client is not None

    async def unavailable(*args: Any, **kwargs: Any) -> Any:
        raise ServerUnavailable("GET https://server/api/bans: 503 Database unavailable")

    monkeypatch.setattr(director.client, "list_bans", unavailable)
    caplog.set_level(logging.INFO, logger="director")
    outcomes = by_name(await director.run_cycle())
    for o in outcomes.values():
        assert o.submitted == 0
        assert (o.error or "").startswith("bans: "), o.error
    assert any(
        r.levelno == logging.ERROR and "no queue can submit" in r.getMessage()
        for r in caplog.records
    )
    # a dry run goes on without the list (it submits nothing anyway)
    dry = by_name(await director.run_cycle(dry_run=True, output=tmp_path / "dry"))
    assert all(o.error is None for o in dry.values())
    monkeypatch.undo()
    outcomes = by_name(await director.run_cycle())
    assert sum(o.submitted for o in outcomes.values()) == 2
