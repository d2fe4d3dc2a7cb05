"""Crash reconciliation: a director killed in the middle of a cycle, then restarted."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from director.client import ce_reference
from tests.conftest import LiveServer
from tests.director.conftest import (
    ManualClock,
    queue_block,
    revoked_stamps,
    settings_for,
    write_config,
)
from tests.director.cycle.conftest import only_queue, pilots_of

ROOT = Path(__file__).resolve().parents[2]


def crash(config: Path, point: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tests.director.crash_director", str(config), point],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]


async def test_killed_between_submit_and_references_loses_nothing_counts_nothing_twice(
    live_server_tls: LiveServer, tmp_path: Path, make_director: Any
) -> None:
    path, site = write_config(
        tmp_path,
        server_url=live_server_tls.url,
        ca_file=live_server_tls.ca_file,
        token=live_server_tls.director_token,
        queues={
            "default": queue_block(
                max_total_pilots=4,
                max_waiting_pilots=4,
                pilots_per_cycle=2,
                environment={"TEST_PILOT_SLEEP": "60"},
            )
        },
    )
    crash(path, "after-submit")
    director = make_director(settings_for(path))
    ref = only_queue(director)
    ce, spec = director.ce_for(ref), director.spec_for(ref)
    before = await pilots_of(director, site)
    jobs = await ce.list_jobs(spec)
    assert len(before) == 2
    assert all(ce_reference(p) is None for p in before.values())
    assert {j.stamp for j in jobs} == set(before)

    [outcome] = await director.run_cycle()  # the restarted director
    assert outcome.error is None, outcome.why
    assert (outcome.waiting + outcome.running, outcome.submitted) == (2, 2)
    after = await pilots_of(director, site)
    jobs = await ce.list_jobs(spec)
    assert len(after) == 4
    assert {j.stamp for j in jobs} == set(after)
    for stamp, pilot in after.items():
        assert pilot["PilotJobReference"] == f"local:{stamp}"
        assert pilot["Status"] != "Aborted"

    [full] = await director.run_cycle()
    assert full.n == 0
    assert len(await pilots_of(director, site)) == 4


async def test_registered_but_never_submitted_pilots_are_aborted_after_the_grace(
    live_server_tls: LiveServer, tmp_path: Path, make_director: Any, clock: ManualClock
) -> None:
    path, site = write_config(
        tmp_path,
        server_url=live_server_tls.url,
        ca_file=live_server_tls.ca_file,
        token=live_server_tls.director_token,
        director={"submit_grace_seconds": 300},
        queues={"default": queue_block(pilots_per_cycle=2)},
    )
    crash(path, "before-submit")
    director = make_director(settings_for(path))
    orphans = await pilots_of(director, site)
    assert len(orphans) == 2

    [first] = await director.run_cycle()  # within the grace: left alone
    assert first.error is None, first.why
    pilots = await pilots_of(director, site)
    assert all(pilots[s]["Status"] == "Submitted" for s in orphans)

    clock.advance(3600)  # the clock started before the crashed run registered its pilots
    await director.run_cycle()
    pilots = await pilots_of(director, site)
    for stamp in orphans:
        assert pilots[stamp]["Status"] == "Aborted"
        assert "never submitted" in pilots[stamp]["StatusReason"]
    assert all(ce_reference(p) for s, p in pilots.items() if s not in orphans)
    revoked = await revoked_stamps(live_server_tls)
    assert set(orphans) <= revoked
    assert not (set(pilots) - set(orphans)) & revoked
