"""More of the loop: token renewal, lease hand-over, metrics, held pilots, a slow CE."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from director.ce.base import CELoad, QueueSpec, StatusResult
from director.ce.local import LocalCE, LocalCEConfig
from director.daemon import client_for
from director.errors import ServerError
from director.loop import Director
from director.render import default_renderer
from server.models import PilotStatus, SummaryParams
from tests.conftest import LiveServer, async_wait_until
from tests.director.conftest import ManualClock, queue_block, settings_for, write_config
from tests.director.test_loop import only_queue, pilots_of


async def test_the_token_file_is_read_again_when_it_changes(
    live_server_tls: LiveServer, tmp_path: Path
) -> None:
    path, _ = write_config(
        tmp_path, server_url=live_server_tls.url, ca_file=live_server_tls.ca_file, token="not-a-jwt"
    )
    async with client_for(settings_for(path)) as client:
        with pytest.raises(ServerError) as refused:
            await client.summary(SummaryParams(grouping=["Status"]))
        assert refused.value.status == 401
        (tmp_path / "director.token").write_text(live_server_tls.director_token + "\n")
        assert isinstance(await client.summary(SummaryParams(grouping=["Status"])), list)


async def test_a_stopping_director_hands_its_queues_over(
    live_server_tls: LiveServer, tmp_path: Path, make_director: Any
) -> None:
    path, _site = write_config(
        tmp_path,
        server_url=live_server_tls.url,
        ca_file=live_server_tls.ca_file,
        token=live_server_tls.director_token,
    )
    first = make_director(settings_for(path, director={"name": "host-a"}))
    second = make_director(settings_for(path, director={"name": "host-b"}))
    [a] = await first.run_cycle()
    [b] = await second.run_cycle()
    assert (a.submitted, b.submitted) == (2, 0)
    await first.release_leases()  # what `run` does on SIGTERM
    [b] = await second.run_cycle()
    assert b.why != "lease held by another director"
    assert b.submitted == 2
    [a] = await first.run_cycle()
    assert a.why == "lease held by another director"


async def test_metrics_count_submissions(
    live_server_tls: LiveServer, tmp_path: Path, make_director: Any
) -> None:
    path, _ = write_config(
        tmp_path,
        server_url=live_server_tls.url,
        ca_file=live_server_tls.ca_file,
        token=live_server_tls.director_token,
    )
    director = make_director(settings_for(path))
    await director.run_cycle()
    key = only_queue(director).key
    registry = director.metrics.registry
    assert registry.get_sample_value("site_director_pilots_submitted_total", {"queue": key}) == 2
    assert registry.get_sample_value("site_director_pilots_failed_total", {"queue": key}) == 0
    assert (
        registry.get_sample_value("site_director_cycle_seconds_count", {"cycle": "submission"}) == 1
    )


class FakeHeldCE(LocalCE):
    """The local CE, except that the references in `held` report HTCondor's Held state (a
    local process cannot be held)."""

    held: set[str]

    async def status(self, references: Sequence[str]) -> list[StatusResult]:
        results = await super().status(references)
        return [
            StatusResult(
                r.reference, PilotStatus.WAITING, ce_state="HELD", reason="test: held by policy"
            )
            if r.reference in self.held
            else r
            for r in results
        ]


async def test_a_pilot_held_too_long_is_aborted_and_killed(
    live_server_tls: LiveServer, tmp_path: Path, make_director: Any, clock: ManualClock
) -> None:
    path, site = write_config(
        tmp_path,
        server_url=live_server_tls.url,
        ca_file=live_server_tls.ca_file,
        token=live_server_tls.director_token,
        director={"held_timeout_seconds": 600},
        queues={"default": queue_block(pilots_per_cycle=2, environment={"TEST_PILOT_SLEEP": "60"})},
    )
    settings = settings_for(path)
    ce = FakeHeldCE(LocalCEConfig(), renderer=default_renderer(), work_dir=tmp_path / "ce")
    ce.held = set()
    director = Director(
        settings, client=client_for(settings), clock=clock, ces={f"{site}/localhost": ce}
    )
    try:
        [outcome] = await director.run_cycle()
        held, _fine = (f"local:{s}" for s in outcome.stamps)
        ce.held.add(held)
        await director.monitor_cycle()
        clock.advance(601)
        [monitored] = await director.monitor_cycle()
        assert monitored.aborted == 1
        pilots = await pilots_of(director, site)
        assert pilots[outcome.stamps[0]]["Status"] == "Aborted"
        assert (
            "held for more than 600s: test: held by policy"
            in (pilots[outcome.stamps[0]]["StatusReason"])
        )
        assert pilots[outcome.stamps[1]]["Status"] == "Running"
        [killed] = await LocalCE.status(ce, [held])
        assert killed.ce_state == "killed"
    finally:
        await ce.kill(
            [j.reference for j in await ce.list_jobs(director.spec_for(only_queue(director)))]
        )
        await director.close()
        assert director.client is not None
        await director.client.aclose()


class FakeSlowCE(LocalCE):
    """A CE that never answers, like an ARC endpoint whose TCP connection hangs."""

    async def load(self, queue: QueueSpec) -> CELoad:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_a_hanging_ce_holds_up_no_other_queue(
    live_server_tls: LiveServer, tmp_path: Path, clock: ManualClock
) -> None:
    path, site = write_config(
        tmp_path,
        server_url=live_server_tls.url,
        ca_file=live_server_tls.ca_file,
        token=live_server_tls.director_token,
        director={"queue_timeout_seconds": 0.5},
    )
    (tmp_path / "slow").mkdir()
    slow_path, _ = write_config(
        tmp_path / "slow",
        server_url=live_server_tls.url,
        ca_file=live_server_tls.ca_file,
        token="unused",
        site="Slow.Site.org",
        ce_name="hanging",
    )
    settings = settings_for(path)
    both = settings.model_copy(
        update={"sites": {**settings.sites, **settings_for(slow_path).sites}}
    )
    slow = FakeSlowCE(LocalCEConfig(), renderer=default_renderer(), work_dir=tmp_path / "slow")
    director = Director(
        both, client=client_for(both), clock=clock, ces={"Slow.Site.org/hanging": slow}
    )
    try:
        outcomes = {o.queue.split("/")[0]: o for o in await director.run_cycle()}
        assert outcomes[site].submitted == 2
        assert outcomes["Slow.Site.org"].error is not None
        assert "timed out" in outcomes["Slow.Site.org"].error
        assert director.backoff.blocked("Slow.Site.org/hanging/default")
    finally:
        for ref in director.queues:
            ce = director.ce_for(ref)
            if ce is not slow:
                await ce.kill([j.reference for j in await ce.list_jobs(director.spec_for(ref))])
        await director.close()
        assert director.client is not None
        await director.client.aclose()


async def test_a_stopping_director_registers_nothing_new(
    live_server_tls: LiveServer, tmp_path: Path, make_director: Any
) -> None:
    path, site = write_config(
        tmp_path,
        server_url=live_server_tls.url,
        ca_file=live_server_tls.ca_file,
        token=live_server_tls.director_token,
    )
    director = make_director(settings_for(path))
    director.stopping = True  # what SIGTERM sets
    [outcome] = await director.run_cycle()
    assert outcome.why == "stopping"
    assert await pilots_of(director, site) == {}


async def test_disabling_a_queue_stops_submission_not_monitoring(
    live_server_tls: LiveServer, tmp_path: Path, make_director: Any
) -> None:
    path, site = write_config(
        tmp_path,
        server_url=live_server_tls.url,
        ca_file=live_server_tls.ca_file,
        token=live_server_tls.director_token,
    )
    director = make_director(settings_for(path))
    [outcome] = await director.run_cycle()
    assert outcome.submitted == 2
    disabled = make_director(settings_for(path, sites={site: {"enabled": False}}))
    assert not only_queue(disabled).enabled

    async def ended() -> bool:
        await disabled.monitor_cycle()
        pilots = await pilots_of(disabled, site)
        return all(p["Status"] == "Done" for p in pilots.values())

    assert await async_wait_until(ended, timeout=30, interval=0.2)
    [skipped] = await disabled.run_cycle()
    assert skipped.why == "disabled"
