"""After a submission cycle the server knows the director's queues (`director.cycle.report`):
limits, enabled, back-off and the last cycle, read back through `GET /api/director/queues`
(real server over HTTPS on loopback, local CE running real processes)."""

from __future__ import annotations

import ssl
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer
from tests.director.conftest import ManualClock, queue_block
from tests.director.cycle.conftest import DirectorOnSite


async def reported(live: LiveServer, site: str) -> dict[str, dict[str, Any]]:
    """The site's reported queues by name, as an operator of the VO reads them."""
    async with httpx.AsyncClient(
        base_url=live.url,
        verify=ssl.create_default_context(cafile=str(live.ca_file)),
        headers={"Authorization": f"Bearer {live.token('operator', 'lhcb')}"},
    ) as client:
        response = await client.get("/api/director/queues")
    assert response.status_code == 200, response.text
    return {row["Queue"]: row for row in response.json() if row["Site"] == site}


def utc(seconds: float) -> datetime:
    """Times come back in UTC with `Z`, as DiracX writes them: aware, so they compare."""
    return datetime.fromtimestamp(seconds, UTC)


async def test_one_cycle_reports_every_configured_queue(
    director_on_site: DirectorOnSite, live_server_tls: LiveServer, clock: ManualClock
) -> None:
    director, site = director_on_site(
        queues={
            "default": queue_block(max_total_pilots=6, max_waiting_pilots=3, pilots_per_cycle=2),
            "off": queue_block(enabled=False, max_total_pilots=1, max_waiting_pilots=1),
        },
    )
    outcomes = {o.queue.rsplit("/", 1)[1]: o for o in await director.run_cycle()}
    assert outcomes["default"].submitted == 2, outcomes["default"].why

    queues = await reported(live_server_tls, site)
    assert set(queues) == {"default", "off"}
    on, off = queues["default"], queues["off"]
    assert on["QueueKey"] == f"{site}/localhost/default"
    assert (on["VO"], on["CE"], on["CEKind"], on["Director"]) == (
        "lhcb",
        "localhost",
        "local",
        "director",
    )
    assert (on["MaxTotalPilots"], on["MaxWaitingPilots"], on["PilotsPerCycle"]) == (6, 3, 2)
    assert on["Enabled"] is True
    assert (on["Failures"], on["BackoffUntil"], on["LastError"]) == (0, None, None)
    assert on["LastSubmitted"] == 2
    assert on["LastWaiting"] is not None
    assert on["LastRunning"] is not None
    assert datetime.fromisoformat(on["LastCycleAt"]) - utc(clock()) < timedelta(seconds=1)
    assert off["Enabled"] is False
    assert off["MaxTotalPilots"] == 1
    assert off["LastSubmitted"] == 0
    assert (off["LastWaiting"], off["LastRunning"]) == (None, None)  # not counted: disabled


async def test_a_backed_off_queue_reports_its_failures_and_rest(
    director_on_site: DirectorOnSite, live_server_tls: LiveServer, clock: ManualClock
) -> None:
    director, site = director_on_site()
    [ref] = director.queues
    ce = director.ce_for(ref)
    # The CE cannot write its job folder: every submission fails, as on a full disk.
    ce.work_dir.mkdir(parents=True)
    (ce.work_dir / "jobs").write_text("not a folder")

    [outcome] = await director.run_cycle()
    assert outcome.failed == 2, outcome.why
    [row] = (await reported(live_server_tls, site)).values()
    assert row["Failures"] == 1
    until = datetime.fromisoformat(row["BackoffUntil"])
    assert until > utc(clock())
    assert abs(until - utc(clock() + 60)) < timedelta(seconds=1)  # initial_seconds: 60
    assert row["LastError"]
    assert row["LastSubmitted"] == 0

    clock.advance(30)  # still resting: the next cycle skips the queue and says so again
    [resting] = await director.run_cycle()
    assert resting.why.startswith("backed off")
    [row] = (await reported(live_server_tls, site)).values()
    assert row["Failures"] == 1
    assert abs(datetime.fromisoformat(row["BackoffUntil"]) - until) < timedelta(seconds=1)


async def test_a_failed_report_never_fails_the_cycle(
    director_on_site: DirectorOnSite, live_server_tls: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A token the server refuses for the report's VO: the cycle's outcome is untouched and
    the failure is one key=value warning."""
    director, site = director_on_site(queues={"default": queue_block(enabled=False)})
    [ref] = director.queues
    # Reported as a VO this director's token does not serve: the server answers 403.
    director.queues = [replace(ref, vo="dteam")]
    caplog.set_level("WARNING", logger="director.cycle.report")
    [outcome] = await director.run_cycle()
    assert outcome.error is None
    assert outcome.why == "disabled"
    [warning] = [r for r in caplog.records if r.getMessage().startswith("report ")]
    assert "queues=1" in warning.getMessage()
    assert "403" in warning.getMessage()
    assert await reported(live_server_tls, site) == {}
