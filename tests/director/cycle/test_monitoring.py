"""The monitoring cycle (`director.cycle.monitoring`): pilots followed to their end, killed,
held too long, and disabled queues still followed. Real server over HTTPS on loopback, local
CE running real processes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from director.ce.base import StatusResult
from director.ce.local import LocalCE, LocalCEConfig
from director.daemon import client_for
from director.loop import Director
from director.render import default_renderer
from server.models import PilotStatus
from tests.conftest import async_wait_until
from tests.director.conftest import ManualClock, queue_block, settings_for
from tests.director.cycle.conftest import DirectorOnSite, SiteConfig, only_queue, pilots_of


async def test_monitoring_follows_pilots_to_their_end_and_cleans_up(
    director_on_site: DirectorOnSite,
) -> None:
    director, site = director_on_site(
        queues={
            "good": queue_block(pilots_per_cycle=2),
            "bad": queue_block(pilots_per_cycle=1, environment={"TEST_PILOT_EXIT": "3"}),
        },
    )
    outcomes = await director.run_cycle()
    assert sum(o.submitted for o in outcomes) == 3

    async def all_final() -> bool:
        await director.monitor_cycle()
        pilots = await pilots_of(director, site)
        return all(p["Status"] in ("Done", "Failed") for p in pilots.values())

    assert await async_wait_until(all_final, timeout=30, interval=0.2)
    pilots = await pilots_of(director, site)
    by_queue: dict[str, set[str]] = {}
    for p in pilots.values():
        by_queue.setdefault(p["Queue"], set()).add(p["Status"])
    assert by_queue == {"good": {"Done"}, "bad": {"Failed"}}
    bad = next(p for p in pilots.values() if p["Queue"] == "bad")
    assert "exit code 3" in bad["StatusReason"]
    await director.monitor_cycle()
    for ref in director.queues:
        assert await director.ce_for(ref).list_jobs(director.spec_for(ref)) == []


async def test_a_pilot_killed_on_the_ce_becomes_aborted_and_backs_the_queue_off(
    director_on_site: DirectorOnSite,
) -> None:
    director, site = director_on_site(
        queues={"default": queue_block(pilots_per_cycle=1, environment={"TEST_PILOT_SLEEP": "60"})},
    )
    [outcome] = await director.run_cycle()
    ref = only_queue(director)
    ce = director.ce_for(ref)
    await ce.kill([f"local:{outcome.stamps[0]}"])
    await director.monitor_cycle()
    [pilot] = (await pilots_of(director, site)).values()
    assert pilot["Status"] == "Aborted"
    assert pilot["StatusReason"] == "killed"
    assert director.backoff.blocked(ref.key)


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
    site_config: SiteConfig, tmp_path: Path, clock: ManualClock
) -> None:
    path, site = site_config(
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


async def test_disabling_a_queue_stops_submission_not_monitoring(
    site_config: SiteConfig, make_director: Any
) -> None:
    path, site = site_config()
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
