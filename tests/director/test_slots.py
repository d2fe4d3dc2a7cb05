from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from director.slots import Limits, demand_from_jobs, free_slots, plan


def test_slots_is_the_smallest_of_the_three_limits() -> None:
    limits = Limits(max_total=10, max_waiting=5, per_cycle=3)
    assert free_slots(limits, waiting=0, running=0) == 3
    assert free_slots(limits, waiting=4, running=0) == 1
    assert free_slots(limits, waiting=1, running=8) == 1
    assert free_slots(limits, waiting=5, running=0) == 0


def test_slots_never_negative_when_over_the_limits() -> None:
    limits = Limits(max_total=2, max_waiting=1, per_cycle=5)
    assert free_slots(limits, waiting=7, running=9) == 0


def test_plan_fill_takes_every_slot_and_says_why() -> None:
    result = plan(Limits(10, 5, 3), waiting=0, running=0, demand=None)
    assert (result.slots, result.demand, result.n) == (3, 3, 3)
    assert "per cycle" in result.why


def test_plan_demand_bounds_n() -> None:
    result = plan(Limits(10, 5, 3), waiting=0, running=0, demand=2)
    assert (result.slots, result.demand, result.n) == (3, 2, 2)
    assert result.why == "demand 2"


def test_plan_reports_the_waiting_limit() -> None:
    result = plan(Limits(10, 2, 3), waiting=2, running=0, demand=None)
    assert result.n == 0
    assert "max waiting" in result.why


def test_plan_reports_the_total_limit() -> None:
    result = plan(Limits(4, 2, 3), waiting=0, running=4, demand=None)
    assert result.n == 0
    assert "max total" in result.why


def test_demand_from_jobs_subtracts_waiting_pilots() -> None:
    assert demand_from_jobs(10, 3) == 7
    assert demand_from_jobs(2, 3) == 0


counts = st.integers(min_value=0, max_value=10_000)


@given(counts, counts, counts, counts, counts, st.none() | counts)
def test_plan_never_exceeds_any_limit(
    total: int, waiting_max: int, per_cycle: int, waiting: int, running: int, demand: int | None
) -> None:
    limits = Limits(total, waiting_max, per_cycle)
    result = plan(limits, waiting, running, demand)
    assert 0 <= result.n <= result.slots
    assert result.n <= per_cycle
    assert waiting + result.n <= max(waiting, waiting_max)
    assert waiting + running + result.n <= max(waiting + running, total)
    if demand is not None:
        assert result.n <= demand
