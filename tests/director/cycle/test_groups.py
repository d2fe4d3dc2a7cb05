"""Phases 2-4 of a submission cycle per group of whole queues of at most `director.group_pilots`
pilots (`director.cycle.registration.form_groups`, `group_batches`): the groups, a cycle over
several groups submitting every pilot exactly once, and a failed registration of one group
failing only its queues. Real server over HTTPS on loopback, local CE running real processes."""

from __future__ import annotations

from collections import Counter
from typing import Any, cast

import pytest

from director.cycle.outcomes import QueueOutcome
from director.cycle.registration import Batch, form_groups, group_batches
from director.errors import ServerUnavailable
from tests.director.conftest import queue_block
from tests.director.cycle.conftest import DirectorOnSite, count_calls, pilots_of


@pytest.mark.parametrize(
    ("sizes", "limit", "groups"),
    [
        ([], 10, []),
        ([3], 10, [[0]]),
        ([3, 3, 3], 10, [[0, 1, 2]]),
        ([4, 3, 3], 10, [[0, 1, 2]]),  # exactly full
        ([4, 4, 3], 10, [[0, 1], [2]]),  # never split: the third queue starts a group
        ([10, 1], 10, [[0], [1]]),
        ([1, 25, 1], 10, [[0], [1], [2]]),  # more than a group: capped, a group of its own
        ([25, 25], 10, [[0], [1]]),
        ([2, 0, 8, 1], 10, [[0, 1, 2], [3]]),  # a queue planning none takes no place
        ([1, 1, 1], 1, [[0], [1], [2]]),
        ([5] * 5, 10, [[0, 1], [2, 3], [4]]),
    ],
)
def test_groups_are_whole_queues_in_order_of_at_most_the_limit(
    sizes: list[int], limit: int, groups: list[list[int]]
) -> None:
    assert form_groups(sizes, limit) == groups


def _batch(queue: str, pilots: int) -> Batch:
    outcome = QueueOutcome(queue=queue, ce="ce", kind="local")
    outcome.n, outcome.why = pilots, "planned"
    unused = cast(Any, None)
    return Batch(unused, outcome, unused, unused, unused, pilots)


def test_a_queue_planning_more_than_a_group_is_capped_at_it() -> None:
    small, big, last = _batch("a", 3), _batch("b", 25), _batch("c", 4)
    groups = group_batches([small, big, last], 10)
    assert groups == [[small], [big], [last]]
    assert big.n == big.outcome.n == 10
    assert big.outcome.why == "planned; capped at director.group_pilots 10"
    assert (small.n, small.outcome.n, small.outcome.why) == (3, 3, "planned")
    stamps = iter(f"s{i}" for i in range(100))
    big.stamp(lambda: next(stamps))
    assert big.stamps == [f"s{i}" for i in range(10)]  # the capped count, made at the group


FIVE_QUEUES = {
    "slots": 40,
    "director": {"group_pilots": 4},
    "queues": {
        name: queue_block(pilots_per_cycle=2, environment={"TEST_PILOT_SLEEP": "60"})
        for name in ("q1", "q2", "q3", "q4", "q5")
    },
}


async def test_a_cycle_over_several_groups_submits_every_pilot_exactly_once(
    director_on_site: DirectorOnSite,
) -> None:
    """Five queues of 2 pilots, groups of 4: three groups, a registration and a PATCH each;
    every pilot registered, submitted and referenced once, in its own queue."""
    director, site = director_on_site(**FIVE_QUEUES)
    calls = count_calls(director)
    outcomes = await director.run_cycle()
    assert [(o.error, o.n, o.submitted, len(o.stamps)) for o in outcomes] == [(None, 2, 2, 2)] * 5
    assert calls == Counter(search_page=1, register_bulk=3, patch_metadata=3)
    stamps = [stamp for o in outcomes for stamp in o.stamps]
    assert len(set(stamps)) == 10
    pilots = await pilots_of(director, site)
    assert set(pilots) == set(stamps)
    for o in outcomes:
        for stamp in o.stamps:
            assert pilots[stamp]["Queue"] == o.queue.rsplit("/", 1)[1]
            assert pilots[stamp]["PilotJobReference"] == f"local:{stamp}"
            assert pilots[stamp]["Status"] != "Aborted"
    jobs = []
    for ref in director.queues:
        jobs += [job.stamp for job in await director.ce_for(ref).list_jobs(director.spec_for(ref))]
    assert sorted(jobs) == sorted(stamps)


async def test_a_queue_planning_more_than_a_group_submits_a_group_and_the_rest_later(
    director_on_site: DirectorOnSite,
) -> None:
    director, site = director_on_site(
        slots=40,
        director={"group_pilots": 4},
        queues={"big": queue_block(pilots_per_cycle=6, max_waiting_pilots=6, max_total_pilots=6)},
    )
    (outcome,) = await director.run_cycle()
    assert (outcome.error, outcome.n, outcome.submitted) == (None, 4, 4)
    assert "capped at director.group_pilots 4" in outcome.why
    assert set(await pilots_of(director, site)) == set(outcome.stamps)


async def test_a_failed_registration_of_the_second_group_fails_only_its_queues(
    director_on_site: DirectorOnSite,
) -> None:
    director, site = director_on_site(**FIVE_QUEUES)
    client = director.client
    assert client is not None
    register = client.register_bulk
    calls = 0

    async def second_refused(body: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise ServerUnavailable("POST /api/pilots/bulk: 503 test: down")
        return await register(body)

    client.register_bulk = second_refused  # type: ignore[method-assign]
    outcomes = await director.run_cycle()
    assert calls == 3
    by_queue = {o.queue.rsplit("/", 1)[1]: o for o in outcomes}
    for name in ("q3", "q4"):
        assert "test: down" in (by_queue[name].error or "")
        assert by_queue[name].submitted == 0
        ref = next(ref for ref in director.queues if ref.queue == name)
        assert await director.ce_for(ref).list_jobs(director.spec_for(ref)) == []
    assert [(by_queue[n].error, by_queue[n].submitted) for n in ("q1", "q2", "q5")] == [
        (None, 2)
    ] * 3
    pilots = await pilots_of(director, site)
    assert set(pilots) == {s for n in ("q1", "q2", "q5") for s in by_queue[n].stamps}

    client.register_bulk = register  # type: ignore[method-assign]
    again = await director.run_cycle()
    assert [(o.error, o.submitted) for o in again] == [(None, 2)] * 5
