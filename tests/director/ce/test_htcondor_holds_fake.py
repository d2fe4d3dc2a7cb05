"""Held pilots on an HTCondor-CE (a FakeSchedd plays it): a transient hold is released, a few
times and not too eagerly; any other hold, or one held too often, is Aborted and left for the
loop to record and clean."""

from __future__ import annotations

from pathlib import Path

import pytest

from director.ce.base import QueueSpec
from director.ce.htcondor import HTCondorCE, HTCondorCEConfig, JobId, make_reference
from director.render import TemplateRenderer
from server.models import FINAL_STATUSES, PilotStatus

pytest.importorskip("htcondor2", reason="the htcondor bindings are absent")

from tests.director.ce.fake_schedd import FakeSchedd

HOST = "ce.example.org"
QUEUE = QueueSpec(name="grid", site="LCG.Example.org", ce=HOST)
NOW = 1_700_000_000
TRANSFER = "Transfer input files failure at execution point: Connection timed out"


def make_ce(fake: FakeSchedd, work_dir: Path, **config: object) -> HTCondorCE:
    return HTCondorCE(
        HTCondorCEConfig.model_validate({"host": HOST, **config}),
        renderer=TemplateRenderer(),
        work_dir=work_dir,
        schedd_factory=lambda: fake,
    )


def hold(
    fake: FakeSchedd,
    proc: int,
    code: int,
    reason: str,
    *,
    holds: int = 1,
    held_for: int = 3600,
    subcode: int = 0,
) -> str:
    """Job 30.<proc> held `holds` times by the system, the last `held_for` seconds ago."""
    fake.set_job(
        30,
        proc,
        JobStatus=5,
        HoldReasonCode=code,
        HoldReasonSubCode=subcode,
        HoldReason=reason,
        NumSystemHolds=holds,
        EnteredCurrentStatus=NOW - held_for,
        ServerTime=NOW,
        SiteDirectorStamp=f"stamp{proc}",
        SiteDirectorQueue=f"LCG.Example.org/{HOST}/grid",
    )
    return make_reference(HOST, JobId(30, proc))


async def test_a_transient_hold_is_released_and_the_pilot_waits(
    fake: FakeSchedd, tmp_path: Path
) -> None:
    ce = make_ce(fake, tmp_path)
    reference = hold(fake, 0, 13, TRANSFER, subcode=110)

    (result,) = await ce.status([reference])

    assert (result.status, result.ce_state) == (PilotStatus.WAITING, "Released(13)")
    assert "1/10" in result.reason
    assert TRANSFER in result.reason
    assert "HELD" not in result.ce_state.upper(), "the loop's held clock restarts at each hold"
    assert fake.queue[(30, 0)]["JobStatus"] == 1
    assert "act" in fake.calls


async def test_too_many_holds_abort_the_pilot_and_nothing_is_released(
    fake: FakeSchedd, tmp_path: Path
) -> None:
    ce = make_ce(fake, tmp_path, held_release={"max_releases": 2})
    reference = hold(fake, 0, 13, TRANSFER, holds=3)

    (result,) = await ce.status([reference])

    assert result.status is PilotStatus.ABORTED
    assert result.ce_state == "Held(13)"
    assert "after 2 releases" in result.reason
    assert TRANSFER in result.reason
    assert fake.queue[(30, 0)]["JobStatus"] == 5
    assert "act" not in fake.calls


async def test_a_recent_hold_waits_before_its_release(fake: FakeSchedd, tmp_path: Path) -> None:
    ce = make_ce(fake, tmp_path)
    reference = hold(fake, 0, 12, "Transfer output files failure", holds=3, held_for=600)

    (result,) = await ce.status([reference])

    # the third hold is released after 3 x 300 s
    assert (result.status, result.ce_state) == (PilotStatus.WAITING, "Held(12)")
    assert "released in 300s" in result.reason
    assert fake.queue[(30, 0)]["JobStatus"] == 5
    assert "act" not in fake.calls


async def test_other_holds_are_aborted_as_before(fake: FakeSchedd, tmp_path: Path) -> None:
    ce = make_ce(fake, tmp_path)
    failed = hold(fake, 0, 3, "pilot exited with code 2", subcode=2)
    memory = hold(fake, 1, 34, "Memory usage exceeds a memory limit")

    first, second = await ce.status([failed, memory])

    assert (first.status, first.ce_state, first.exit_code) == (PilotStatus.ABORTED, "Held(3)", 2)
    assert first.reason == "held: pilot exited with code 2"
    assert (second.status, second.reason) == (
        PilotStatus.ABORTED,
        "held: Memory usage exceeds a memory limit",
    )
    assert "act" not in fake.calls


async def test_a_refused_release_is_reported_held_and_tried_again(
    fake: FakeSchedd, tmp_path: Path
) -> None:
    ce = make_ce(fake, tmp_path)
    reference = hold(fake, 0, 13, TRANSFER)
    fake.release_refused.add((30, 0))

    (refused,) = await ce.status([reference])

    assert (refused.status, refused.ce_state) == (PilotStatus.WAITING, "Held(13)")
    fake.release_refused.clear()
    (released,) = await ce.status([reference])
    assert released.ce_state == "Released(13)"


async def test_listing_does_not_release_nor_call_a_transient_hold_final(
    fake: FakeSchedd, tmp_path: Path
) -> None:
    """The cleaning lists CE jobs: a pilot about to be released is not an ended one."""
    ce = make_ce(fake, tmp_path)
    hold(fake, 0, 13, TRANSFER)
    hold(fake, 1, 34, "Memory usage exceeds a memory limit")

    jobs = {job.stamp: job.status for job in await ce.list_jobs(QUEUE)}

    assert jobs["stamp0"] not in FINAL_STATUSES
    assert jobs["stamp1"] is PilotStatus.ABORTED
    assert "act" not in fake.calls


@pytest.fixture
def fake() -> FakeSchedd:
    return FakeSchedd()
