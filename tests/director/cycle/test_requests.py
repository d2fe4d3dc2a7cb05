"""Operators' kill and output requests carried out by the monitoring step
(`director.cycle.requests`), and failed pilots' output uploaded before they are cleaned. Real
server over HTTPS on loopback, local CE running real processes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from pydantic import SecretStr

from director.ce.base import ActionResult
from director.client import ServerClient, make_client
from director.errors import CETemporaryError
from director.loop import Director
from server.models import (
    KillRequest,
    OutputFetchRequest,
    PilotMetadata,
    PilotRequest,
    PilotStatus,
    RequestOutcome,
    RequestOutcomes,
)
from tests.conftest import LiveServer, async_wait_until
from tests.director.conftest import queue_block
from tests.director.cycle.conftest import DirectorOnSite, only_queue, pilots_of

SLEEPY = {"TEST_PILOT_SLEEP": "60"}


@pytest.fixture
async def operator(live_server_tls: LiveServer) -> AsyncIterator[ServerClient]:
    """A client with an administrator's token: it may ask for kills and outputs."""
    client = make_client(
        live_server_tls.url,
        token_file=None,
        token=SecretStr(live_server_tls.admin_token),
        ca_bundle=live_server_tls.ca_file,
        timeout=30.0,
    )
    yield client
    await client.aclose()


async def request_of(operator: ServerClient, kind: str, stamp: str) -> PilotRequest:
    [request] = await operator.list_requests(kind, pilot_stamp=stamp)
    return request


async def started(director: Director) -> str:
    """Submit one pilot, monitor once; its stamp."""
    [outcome] = await director.run_cycle()
    [stamp] = outcome.stamps
    await director.monitor_cycle()
    return stamp


async def test_a_kill_request_kills_the_running_pilot_and_ends_it_aborted(
    director_on_site: DirectorOnSite, operator: ServerClient
) -> None:
    director, site = director_on_site(
        queues={"default": queue_block(pilots_per_cycle=1, environment=SLEEPY)}
    )
    stamp = await started(director)
    await operator.request_kills(KillRequest(pilot_stamps=[stamp], reason="draining the site"))
    [monitored] = await director.monitor_cycle()
    assert monitored.aborted == 1
    pilot = (await pilots_of(director, site))[stamp]
    assert pilot["Status"] == "Aborted"
    assert pilot["StatusReason"] == "killed by admin: draining the site"
    assert (await request_of(operator, "kill", stamp)).state == "done"
    ce = director.ce_for(only_queue(director))
    [status] = await ce.status([f"local:{stamp}"])
    assert status.ce_state == "killed"
    # the next step leaves the pilot's record as the kill left it
    await director.monitor_cycle()
    assert (await pilots_of(director, site))[stamp]["StatusReason"] == (
        "killed by admin: draining the site"
    )


async def _cleaned(director: Director) -> bool:
    ref = only_queue(director)
    return await director.ce_for(ref).list_jobs(director.spec_for(ref)) == []


async def test_a_kill_of_a_pilot_the_ce_has_ended_is_already_ended(
    director_on_site: DirectorOnSite, operator: ServerClient
) -> None:
    director, site = director_on_site(queues={"default": queue_block(pilots_per_cycle=1)})
    [outcome] = await director.run_cycle()
    [stamp] = outcome.stamps
    await operator.request_kills(KillRequest(pilot_stamps=[stamp], reason="not wanted"))
    ref = only_queue(director)
    ce = director.ce_for(ref)

    async def ended() -> bool:
        [status] = await ce.status([f"local:{stamp}"])
        return status.status is not None and status.status.value == "Done"

    assert await async_wait_until(ended, timeout=30, interval=0.1)
    await director.monitor_cycle()
    pilot = (await pilots_of(director, site))[stamp]
    assert pilot["Status"] == "Done"
    assert (await request_of(operator, "kill", stamp)).state == "already_ended"


async def test_a_kill_sent_before_a_crash_is_done_at_the_next_step(
    director_on_site: DirectorOnSite, operator: ServerClient
) -> None:
    """The director killed the job and died before recording it: the request is still
    `in_progress`; the next monitoring step kills again (the job is gone: a success) and
    records `done`, without patching the pilot as ended by the CE."""
    director, site = director_on_site(
        queues={"default": queue_block(pilots_per_cycle=1, environment=SLEEPY)}
    )
    stamp = await started(director)
    [request] = await operator.request_kills(KillRequest(pilot_stamps=[stamp], reason="crash"))
    assert director.client is not None
    await director.client.record_outcomes(
        "kill",
        RequestOutcomes(
            outcomes=[RequestOutcome(request_id=request.request_id, outcome="in_progress")]
        ),
    )
    ce = director.ce_for(only_queue(director))
    await ce.kill([f"local:{stamp}"])

    async def dead() -> bool:
        [status] = await ce.status([f"local:{stamp}"])
        return status.status is not None and status.status.value == "Aborted"

    assert await async_wait_until(dead, timeout=30, interval=0.1)
    await director.monitor_cycle()
    pilot = (await pilots_of(director, site))[stamp]
    assert pilot["StatusReason"] == "killed by admin: crash"
    assert (await request_of(operator, "kill", stamp)).state == "done"


async def test_a_ce_that_cannot_kill_now_makes_the_request_retry(
    director_on_site: DirectorOnSite, operator: ServerClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    director, site = director_on_site(
        queues={"default": queue_block(pilots_per_cycle=1, environment=SLEEPY)}
    )
    stamp = await started(director)
    ce = director.ce_for(only_queue(director))

    async def unreachable(references: Sequence[str]) -> list[ActionResult]:
        raise CETemporaryError("CE unreachable: connection refused", "unreachable")

    monkeypatch.setattr(ce, "kill", unreachable)
    await operator.request_kills(KillRequest(pilot_stamps=[stamp], reason="later"))
    await director.monitor_cycle()
    request = await request_of(operator, "kill", stamp)
    assert request.state == "in_progress"
    assert request.attempts == 1
    assert request.last_error is not None
    assert "connection refused" in request.last_error
    assert request.next_attempt_at is not None
    assert (await pilots_of(director, site))[stamp]["Status"] != "Aborted"
    # not due yet: the next step leaves it alone
    await director.monitor_cycle()
    assert (await request_of(operator, "kill", stamp)).attempts == 1


async def test_a_failed_pilots_output_is_uploaded_before_it_is_cleaned(
    director_on_site: DirectorOnSite, operator: ServerClient
) -> None:
    director, site = director_on_site(
        queues={"default": queue_block(pilots_per_cycle=1, environment={"TEST_PILOT_EXIT": "3"})}
    )
    [outcome] = await director.run_cycle()
    [stamp] = outcome.stamps

    async def failed() -> bool:
        await director.monitor_cycle()
        return bool((await pilots_of(director, site))[stamp]["Status"] == "Failed")

    assert await async_wait_until(failed, timeout=30, interval=0.2)
    output = await operator.pilot_output(stamp)
    assert output is not None
    assert output.std_output is not None
    assert f"test pilot {stamp} ending with 3" in output.std_output
    assert output.not_available is None
    assert await _cleaned(director)


async def test_a_pilot_that_reported_failed_itself_has_its_output_fetched_before_cleaning(
    director_on_site: DirectorOnSite, operator: ServerClient
) -> None:
    """The real wrapper reports Failed before its job ends on the CE, so the pilot is no
    longer followed when its job ends: the output is fetched on the way to cleaning it."""
    director, site = director_on_site(
        queues={"default": queue_block(pilots_per_cycle=1, environment={"TEST_PILOT_EXIT": "3"})}
    )
    [outcome] = await director.run_cycle()
    [stamp] = outcome.stamps
    client = director.client
    assert client is not None
    await client.patch_metadata(
        {stamp: PilotMetadata(status=PilotStatus.FAILED, status_reason="pilot exited with 3")}
    )

    async def cleaned() -> bool:
        await director.monitor_cycle()
        return await _cleaned(director)

    assert await async_wait_until(cleaned, timeout=30, interval=0.2)
    output = await operator.pilot_output(stamp)
    assert output is not None
    assert output.std_output is not None
    assert f"test pilot {stamp} ending with 3" in output.std_output
    assert (await pilots_of(director, site))[stamp]["Status"] == "Failed"


async def test_an_output_the_ce_no_longer_has_is_recorded_unavailable_once(
    director_on_site: DirectorOnSite, operator: ServerClient
) -> None:
    director, site = director_on_site(queues={"default": queue_block(pilots_per_cycle=1)})
    [outcome] = await director.run_cycle()
    [stamp] = outcome.stamps

    async def done_and_cleaned() -> bool:
        await director.monitor_cycle()
        pilot = (await pilots_of(director, site))[stamp]
        return pilot["Status"] == "Done" and await _cleaned(director)

    assert await async_wait_until(done_and_cleaned, timeout=30, interval=0.2)
    assert await operator.pilot_output(stamp) is None  # a Done pilot's output is not fetched
    client = director.client
    assert client is not None
    uploads: list[Any] = []
    upload = client.upload_output

    async def counted(body: Any) -> Any:
        uploads.append(body)
        return await upload(body)

    client.upload_output = counted  # type: ignore[method-assign]
    await operator.request_outputs(OutputFetchRequest(pilot_stamps=[stamp], reason="why?"))
    await director.monitor_cycle()
    await director.monitor_cycle()
    assert len(uploads) == 1
    output = await operator.pilot_output(stamp)
    assert output is not None
    assert output.not_available is not None
    request = await request_of(operator, "output", stamp)
    assert request.state == "failed"
    assert request.last_error is not None
    assert request.last_error.startswith("not available")
