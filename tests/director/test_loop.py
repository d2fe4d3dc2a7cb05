"""The director's cycles against the real server (HTTPS on loopback) and the local CE running
real processes: submission, limits, back-off, monitoring, leases."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import httpx

from director.config import QueueRef
from director.loop import Director
from server.models import ScalarSearch, SearchParams
from tests.conftest import LiveServer, async_wait_until
from tests.director.conftest import ManualClock, queue_block, settings_for, write_config


async def pilots_of(director: Director, site: str) -> dict[str, dict[str, Any]]:
    assert director.client is not None
    rows = await director.client.search(
        SearchParams(search=[ScalarSearch(parameter="GridSite", operator="eq", value=site)])
    )
    return {r["PilotStamp"]: r for r in rows}


def only_queue(director: Director) -> QueueRef:
    assert len(director.queues) == 1
    return director.queues[0]


async def test_a_cycle_registers_submits_and_patches_references(
    live_server_tls: LiveServer, tmp_path: Path, make_director: Any
) -> None:
    path, site = write_config(
        tmp_path,
        server_url=live_server_tls.url,
        ca_file=live_server_tls.ca_file,
        token=live_server_tls.director_token,
        queues={"default": queue_block(pilots_per_cycle=3)},
    )
    director = make_director(settings_for(path))
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


async def test_limits_hold_over_cycles(
    live_server_tls: LiveServer, tmp_path: Path, make_director: Any
) -> None:
    """One slot on the CE, pilots that keep running: waiting and total never pass the limits."""
    path, site = write_config(
        tmp_path,
        server_url=live_server_tls.url,
        ca_file=live_server_tls.ca_file,
        token=live_server_tls.director_token,
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
    director = make_director(settings_for(path))
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
    live_server_tls: LiveServer, tmp_path: Path, make_director: Any, clock: ManualClock
) -> None:
    path, site = write_config(
        tmp_path,
        server_url=live_server_tls.url,
        ca_file=live_server_tls.ca_file,
        token=live_server_tls.director_token,
    )
    director = make_director(settings_for(path))
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
    async with httpx.AsyncClient(
        base_url=live_server_tls.url,
        verify=ssl.create_default_context(cafile=str(live_server_tls.ca_file)),
        headers={"Authorization": f"Bearer {live_server_tls.admin_token}"},
    ) as admin:
        response = await admin.get("/api/pilots/secrets")
    assert response.status_code == 200
    revoked = {s for info in response.json() if info["revoked"] for s in info["pilot_stamps"]}
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


async def test_monitoring_follows_pilots_to_their_end_and_cleans_up(
    live_server_tls: LiveServer, tmp_path: Path, make_director: Any
) -> None:
    path, site = write_config(
        tmp_path,
        server_url=live_server_tls.url,
        ca_file=live_server_tls.ca_file,
        token=live_server_tls.director_token,
        queues={
            "good": queue_block(pilots_per_cycle=2),
            "bad": queue_block(pilots_per_cycle=1, environment={"TEST_PILOT_EXIT": "3"}),
        },
    )
    director = make_director(settings_for(path))
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
    live_server_tls: LiveServer, tmp_path: Path, make_director: Any
) -> None:
    path, site = write_config(
        tmp_path,
        server_url=live_server_tls.url,
        ca_file=live_server_tls.ca_file,
        token=live_server_tls.director_token,
        queues={"default": queue_block(pilots_per_cycle=1, environment={"TEST_PILOT_SLEEP": "60"})},
    )
    director = make_director(settings_for(path))
    [outcome] = await director.run_cycle()
    ref = only_queue(director)
    ce = director.ce_for(ref)
    await ce.kill([f"local:{outcome.stamps[0]}"])
    await director.monitor_cycle()
    [pilot] = (await pilots_of(director, site)).values()
    assert pilot["Status"] == "Aborted"
    assert pilot["StatusReason"] == "killed"
    assert director.backoff.blocked(ref.key)


async def test_disabled_queues_are_skipped(
    live_server_tls: LiveServer, tmp_path: Path, make_director: Any
) -> None:
    path, _site = write_config(
        tmp_path,
        server_url=live_server_tls.url,
        ca_file=live_server_tls.ca_file,
        token=live_server_tls.director_token,
        queues={"on": queue_block(pilots_per_cycle=1), "off": queue_block(enabled=False)},
    )
    director = make_director(settings_for(path))
    outcomes = {o.queue.rsplit("/", 1)[1]: o for o in await director.run_cycle()}
    assert outcomes["off"].why == "disabled"
    assert outcomes["off"].submitted == 0
    assert outcomes["on"].submitted == 1


async def test_two_directors_never_work_the_same_queue(
    live_server_tls: LiveServer, tmp_path: Path, make_director: Any
) -> None:
    path, site = write_config(
        tmp_path,
        server_url=live_server_tls.url,
        ca_file=live_server_tls.ca_file,
        token=live_server_tls.director_token,
    )
    first = make_director(settings_for(path, director={"name": "host-a"}))
    second = make_director(settings_for(path, director={"name": "host-b"}))
    [a] = await first.run_cycle()
    [b] = await second.run_cycle()
    assert a.submitted == 2
    assert b.submitted == 0
    assert b.why == "lease held by another director"
    assert len(await pilots_of(first, site)) == 2
