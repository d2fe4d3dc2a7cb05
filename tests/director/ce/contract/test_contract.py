"""The CE contract (director/ce/base.py), run unchanged against every backend (conftest.py).

What a backend owes the loop: bulk results that line up one-to-one with their input, in order;
a job it no longer knows reported as ended, not as an error; another CE's reference as an item
error, never an exception; a whole call that fails raising CETemporaryError or
CEPermanentError; `describe` that writes nothing; `load` and `list_jobs` that see the jobs it
made, with their stamps.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Sequence

import pytest

from director.ce.base import PilotSubmission, StatusResult
from director.errors import CEPermanentError, CETemporaryError
from server.models import FINAL_STATUSES, PilotStatus
from tests.director.ce.contract.conftest import Harness

OK_PILOT = '#!/bin/sh\necho "a pilot says hello"\nexit 0\n'
SLEEPING_PILOT = "#!/bin/sh\nsleep 120\n"  # lives until killed


def stamp() -> str:
    return uuid.uuid4().hex


async def wait_for(
    harness: Harness, references: Sequence[str], done: Callable[[StatusResult], bool]
) -> list[StatusResult]:
    """Poll until every job satisfies `done`; the CE's own pace decides, not the test."""
    deadline = time.monotonic() + harness.patience_s
    while True:
        results = await harness.ce.status(references)
        if all(done(r) for r in results) or time.monotonic() > deadline:
            return results
        await asyncio.sleep(0.5)


async def clean_all(harness: Harness, references: Sequence[str]) -> None:
    """Clean until done: a job still winding down is a temporary item error, retried, as the
    monitoring cycle retries it."""
    deadline = time.monotonic() + harness.patience_s
    while True:
        cleaned = await harness.ce.clean(references)
        assert [c.reference for c in cleaned] == list(references)
        failed = [c for c in cleaned if not c.ok]
        assert all(c.temporary for c in failed), failed
        if not failed or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    assert not failed, failed


async def test_submit_n_results_line_up_and_the_ce_sees_the_jobs(harness: Harness) -> None:
    pilots = [PilotSubmission(stamp(), SLEEPING_PILOT) for _ in range(3)]
    results = await harness.ce.submit(harness.queue, pilots)

    assert [r.stamp for r in results] == [p.stamp for p in pilots]
    assert all(r.ok for r in results), results
    references = [r.reference for r in results if r.reference]
    assert len(set(references)) == 3

    listed = {j.reference: j for j in await harness.ce.list_jobs(harness.queue)}
    assert {listed[r].stamp for r in references} == {p.stamp for p in pilots}
    assert {listed[r].status for r in references} <= {PilotStatus.WAITING, PilotStatus.RUNNING}
    load = await harness.ce.load(harness.queue)
    assert load.running + load.waiting >= 3, load

    statuses = await harness.ce.status(references)
    assert [s.reference for s in statuses] == references
    assert all(s.error is None for s in statuses), statuses

    killed = await harness.ce.kill(list(reversed(references)))
    assert [k.reference for k in killed] == list(reversed(references))
    assert all(k.ok for k in killed), killed
    ended = await wait_for(harness, references, lambda s: s.status in FINAL_STATUSES)
    assert {s.status for s in ended} == {PilotStatus.ABORTED}, ended
    assert all(s.reason for s in ended), ended

    await clean_all(harness, references)

    async def gone() -> bool:
        return not {j.reference for j in await harness.ce.list_jobs(harness.queue)} & set(
            references
        )

    deadline = time.monotonic() + harness.patience_s
    while not await gone() and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
    assert await gone()


async def test_a_pilot_runs_to_its_end_and_its_output_is_read(harness: Harness) -> None:
    name = stamp()
    pilot = PilotSubmission(name, f'#!/bin/sh\necho "pilot {name} says hello"\nexit 0\n')
    (result,) = await harness.ce.submit(harness.queue, [pilot])
    assert result.reference is not None, result
    if harness.settle is not None:
        await harness.settle([result.reference], 0, f"pilot {pilot.stamp} says hello\n")

    (done,) = await wait_for(harness, [result.reference], lambda s: s.status in FINAL_STATUSES)
    assert done.status is PilotStatus.DONE, done
    output = await harness.ce.output(result.reference)
    assert output.reference == result.reference
    assert f"pilot {pilot.stamp} says hello" in output.stdout

    await clean_all(harness, [result.reference])
    (after,) = await harness.ce.status([result.reference])
    assert after.error is None, after  # a cleaned job is ended, not an error
    assert after.status in FINAL_STATUSES, after


async def test_unknown_and_foreign_references_are_item_results(harness: Harness) -> None:
    references = [harness.unknown_reference, harness.foreign_reference, "not-a-reference"]

    unknown, foreign, garbage = await harness.ce.status(references)
    assert [unknown.reference, foreign.reference, garbage.reference] == references
    assert unknown.error is None, unknown
    assert unknown.status in (PilotStatus.ABORTED, PilotStatus.DONE), unknown
    assert unknown.reason, unknown
    for item in (foreign, garbage):
        assert item.status is None, item
        assert item.error, item

    for action in (harness.ce.kill, harness.ce.clean):
        gone, other, bad = await action(references)
        assert [gone.reference, other.reference, bad.reference] == references
        assert gone.ok, gone  # not there: what kill and clean want
        assert not other.ok, other
        assert not bad.ok, bad

    with pytest.raises(CEPermanentError):
        await harness.ce.output(harness.foreign_reference)


async def test_one_bad_stamp_fails_alone(harness: Harness) -> None:
    good, bad = stamp(), "../" + stamp()
    results = await harness.ce.submit(
        harness.queue, [PilotSubmission(good, OK_PILOT), PilotSubmission(bad, OK_PILOT)]
    )
    assert [r.stamp for r in results] == [good, bad]
    assert results[0].ok, results[0]
    assert not results[1].ok, results[1]
    assert results[1].error, results[1]


async def test_describe_names_every_pilot_and_writes_nothing(harness: Harness) -> None:
    pilots = [PilotSubmission(stamp(), OK_PILOT) for _ in range(2)]
    before = await harness.ce.list_jobs(harness.queue)
    files = harness.ce.describe(harness.queue, pilots)
    assert files, files
    assert all(isinstance(name, str) and text for name, text in files.items())
    text = "".join(files.values())
    assert all(p.stamp in text for p in pilots)
    assert OK_PILOT not in text  # the wrapper (and its secret) stays in its own file
    assert await harness.ce.list_jobs(harness.queue) == before


async def test_empty_calls_answer_empty(harness: Harness) -> None:
    assert await harness.ce.submit(harness.queue, []) == []
    assert await harness.ce.status([]) == []
    assert await harness.ce.kill([]) == []
    assert await harness.ce.clean([]) == []


async def test_a_ce_that_cannot_be_used_now_is_a_temporary_error(harness: Harness) -> None:
    if harness.temporary_failure is None:
        pytest.skip(f"{harness.name} has no temporary whole-call failure")
    broken = harness.temporary_failure()
    try:
        with pytest.raises(CETemporaryError) as caught:
            await broken.submit(harness.queue, [PilotSubmission(stamp(), OK_PILOT)])
        assert caught.value.temporary
    finally:
        await broken.close()


async def test_a_description_the_ce_cannot_take_is_a_permanent_error(harness: Harness) -> None:
    if harness.permanent_queue is None:
        pytest.skip(f"{harness.name} takes every description (it ignores extra attributes)")
    with pytest.raises(CEPermanentError) as caught:
        await harness.ce.submit(harness.permanent_queue, [PilotSubmission(stamp(), OK_PILOT)])
    assert not caught.value.temporary
    assert caught.value.category == "rejected"
