"""The submission cycle (`director.cycle.submission`) against the real server (HTTPS on
loopback) and the local CE running real processes: registration, limits, back-off, disabled
and stopping queues, metrics, a hanging CE."""

from __future__ import annotations

import asyncio
from pathlib import Path

from director.ce.base import CELoad, QueueSpec
from director.ce.local import LocalCE, LocalCEConfig
from director.daemon import client_for
from director.loop import Director
from director.render import default_renderer
from tests.conftest import LiveServer
from tests.director.conftest import ManualClock, queue_block, revoked_stamps, settings_for
from tests.director.cycle.conftest import DirectorOnSite, SiteConfig, only_queue, pilots_of


async def test_a_cycle_registers_submits_and_patches_references(
    director_on_site: DirectorOnSite,
) -> None:
    director, site = director_on_site(queues={"default": queue_block(pilots_per_cycle=3)})
    [outcome] = await director.run_cycle()
    assert outcome.error is None, outcome.why
    assert (outcome.n, outcome.submitted, outcome.failed) == (3, 3, 0)
    pilots = await pilots_of(director, site)
    assert set(pilots) == set(outcome.stamps)
    for stamp, pilot in pilots.items():
        assert len(stamp) == 32
        assert pilot["PilotJobReference"] == f"local:{stamp}"
        assert pilot["DestinationSite"] == "localhost"
        assert pilot["Queue"] == "default"
        assert pilot["GridType"] == "Local"
    ref = only_queue(director)
    jobs = await director.ce_for(ref).list_jobs(director.spec_for(ref))
    assert sorted(j.stamp for j in jobs) == sorted(outcome.stamps)


async def test_limits_hold_over_cycles(director_on_site: DirectorOnSite) -> None:
    """One slot on the CE, pilots that keep running: waiting and total never pass the limits."""
    director, site = director_on_site(
        slots=1,
        queues={
            "default": queue_block(
                max_total_pilots=3,
                max_waiting_pilots=2,
                pilots_per_cycle=5,
                environment={"TEST_PILOT_SLEEP": "60"},
            )
        },
    )
    ref = only_queue(director)
    ce, spec = director.ce_for(ref), director.spec_for(ref)
    submitted = []
    for _ in range(4):
        [outcome] = await director.run_cycle()
        assert outcome.error is None, outcome.why
        submitted.append(outcome.submitted)
        load = await ce.load(spec)
        assert load.waiting <= 2
        assert load.waiting + load.running <= 3
    assert submitted[0] == 2  # max waiting, not pilots per cycle
    assert sum(submitted) == 3  # max total
    assert outcome.n == 0
    assert "max" in outcome.why
    assert len(await pilots_of(director, site)) == 3


async def test_failed_submission_aborts_revokes_and_backs_off(
    director_on_site: DirectorOnSite, live_server_tls: LiveServer, clock: ManualClock
) -> None:
    director, site = director_on_site()
    ref = only_queue(director)
    ce = director.ce_for(ref)
    # The CE cannot write its job folder: every submission fails, as on a full disk.
    ce.work_dir.mkdir(parents=True)
    (ce.work_dir / "jobs").write_text("not a folder")

    [outcome] = await director.run_cycle()
    assert (outcome.submitted, outcome.failed) == (0, 2)
    assert "backing off" in outcome.why
    pilots = await pilots_of(director, site)
    assert len(pilots) == 2
    assert {p["Status"] for p in pilots.values()} == {"Aborted"}
    assert all(p["StatusReason"] for p in pilots.values())
    revoked = await revoked_stamps(live_server_tls)
    assert set(pilots) <= revoked

    [resting] = await director.run_cycle()
    assert resting.n == 0
    assert resting.why.startswith("backed off")
    assert len(await pilots_of(director, site)) == 2

    (ce.work_dir / "jobs").unlink()
    clock.advance(61)
    [again] = await director.run_cycle()
    assert again.submitted == 2, again.why
    assert director.backoff.failures(ref.key) == 0


async def test_disabled_queues_are_skipped(director_on_site: DirectorOnSite) -> None:
    director, _site = director_on_site(
        queues={"on": queue_block(pilots_per_cycle=1), "off": queue_block(enabled=False)},
    )
    outcomes = {o.queue.rsplit("/", 1)[1]: o for o in await director.run_cycle()}
    assert outcomes["off"].why == "disabled"
    assert outcomes["off"].submitted == 0
    assert outcomes["on"].submitted == 1


async def test_metrics_count_submissions(director_on_site: DirectorOnSite) -> None:
    director, _ = director_on_site()
    await director.run_cycle()
    key = only_queue(director).key
    registry = director.metrics.registry
    assert registry.get_sample_value("site_director_pilots_submitted_total", {"queue": key}) == 2
    assert registry.get_sample_value("site_director_pilots_failed_total", {"queue": key}) == 0
    assert (
        registry.get_sample_value("site_director_cycle_seconds_count", {"cycle": "submission"}) == 1
    )


class FakeSlowCE(LocalCE):
    """A CE that never answers, like an ARC endpoint whose TCP connection hangs."""

    async def load(self, queue: QueueSpec) -> CELoad:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_a_hanging_ce_holds_up_no_other_queue(
    site_config: SiteConfig, tmp_path: Path, clock: ManualClock
) -> None:
    path, site = site_config(director={"queue_timeout_seconds": 0.5})
    (tmp_path / "slow").mkdir()
    slow_path, _ = site_config(
        tmp_path / "slow", token="unused", site="Slow.Site.org", ce_name="hanging"
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


async def test_a_stopping_director_registers_nothing_new(director_on_site: DirectorOnSite) -> None:
    director, site = director_on_site()
    director.stopping = True  # what SIGTERM sets
    [outcome] = await director.run_cycle()
    assert outcome.why == "stopping"
    assert await pilots_of(director, site) == {}
