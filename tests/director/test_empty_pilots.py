"""The empty-pilot arithmetic: a queue's submission factor from its recent ended pilots."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from director.backoff import Backoff
from director.empty_pilots import (
    EmptyPilotCounts,
    EmptyPilotPolicy,
    QueueThrottle,
    apply_factor,
    counts_by_queue,
    next_factor,
    update_factors,
)
from director.queue_report import build_report
from server.models import QueueEmptyPilots
from tests.director.conftest import ManualClock
from tests.director.test_queue_report import ref

POLICY = EmptyPilotPolicy()  # 10 samples, lower above 0.8, recover below 0.5, halve, +0.1


def counts(empty: int, with_jobs: int) -> EmptyPilotCounts:
    return EmptyPilotCounts(empty=empty, with_jobs=with_jobs)


def test_mostly_empty_pilots_halve_the_factor_down_to_its_floor() -> None:
    factor = 1.0
    seen = []
    for _ in range(5):
        factor = next_factor(counts(9, 1), factor, POLICY)
        seen.append(factor)
    assert seen == [0.5, 0.25, 0.125, 0.1, 0.1]


def test_pilots_with_jobs_raise_the_factor_gradually_up_to_one() -> None:
    factor = 0.1
    seen = []
    for _ in range(11):
        factor = next_factor(counts(2, 8), factor, POLICY)
        seen.append(round(factor, 9))
    assert seen == [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.0, 1.0]


@pytest.mark.parametrize("empty", [5, 6, 7, 8])  # ratios 0.5 .. 0.8: inside the band
def test_between_the_thresholds_nothing_changes(empty: int) -> None:
    assert next_factor(counts(empty, 10 - empty), 0.4, POLICY) == 0.4


def test_too_few_samples_change_nothing_either_way() -> None:
    assert next_factor(counts(9, 0), 1.0, POLICY) == 1.0
    assert next_factor(counts(0, 9), 0.3, POLICY) == 0.3
    assert next_factor(counts(0, 0), 0.3, POLICY) == 0.3
    assert next_factor(counts(10, 0), 1.0, POLICY) == 0.5  # ten is enough


def test_disabled_policy_never_throttles() -> None:
    off = EmptyPilotPolicy(enabled=False)
    assert next_factor(counts(100, 0), 0.2, off) == 1.0


def test_an_out_of_range_previous_factor_is_brought_back_in_range() -> None:
    assert next_factor(counts(0, 0), 7.0, POLICY) == 1.0
    assert next_factor(counts(0, 0), 0.0, POLICY) == 0.1
    assert next_factor(counts(0, 0), float("nan"), POLICY) == 1.0


@given(
    empty=st.integers(0, 10_000),
    with_jobs=st.integers(0, 10_000),
    previous=st.floats(-10, 10, allow_nan=False),
)
def test_the_factor_stays_within_its_bounds(empty: int, with_jobs: int, previous: float) -> None:
    factor = next_factor(counts(empty, with_jobs), previous, POLICY)
    assert POLICY.min_factor <= factor <= 1.0


@given(empty=st.integers(0, 1000), with_jobs=st.integers(0, 1000), previous=st.floats(0.1, 1))
def test_more_empty_pilots_never_give_a_higher_factor(
    empty: int, with_jobs: int, previous: float
) -> None:
    worse = next_factor(counts(empty + 1, with_jobs), previous, POLICY)
    assert worse <= next_factor(counts(empty, with_jobs), previous, POLICY) or (
        empty + with_jobs < POLICY.min_samples  # one more sample may reach the minimum
    )


def test_applying_the_factor_rounds_down_but_keeps_one_pilot_while_there_is_demand() -> None:
    assert apply_factor(10, 1.0) == 10
    assert apply_factor(10, 0.5) == 5
    assert apply_factor(10, 0.7) == 7  # 0.7 * 10 is 6.999...: not 6
    assert apply_factor(3, 0.5) == 1
    assert apply_factor(5, 0.1) == 1
    assert apply_factor(1, 0.1) == 1  # a throttled queue still sends one, so it can recover
    assert apply_factor(0, 0.5) == 0
    assert apply_factor(-3, 0.5) == 0
    assert apply_factor(4, float("nan")) == 4


@given(n=st.integers(0, 100_000), factor=st.floats(0.0, 1.0))
def test_the_applied_count_is_between_one_and_the_demand(n: int, factor: float) -> None:
    got = apply_factor(n, factor)
    assert got == 0 if n == 0 else 1 <= got <= n


def test_update_factors_tracks_each_queue_and_forgets_the_unserved() -> None:
    previous = {"busy": 1.0, "empty": 0.5, "gone": 0.2}
    seen = {"busy": counts(1, 20), "empty": counts(30, 0)}
    new = update_factors(previous, seen, ["busy", "empty", "quiet", "new"], POLICY)
    assert new == {"busy": 1.0, "empty": 0.25, "quiet": 1.0, "new": 1.0}
    assert update_factors({"quiet": 0.3}, {}, ["quiet"], POLICY) == {"quiet": 0.3}


def test_counts_by_queue_keys_the_servers_answer_as_pilot_records_name_a_queue() -> None:
    rows = [
        QueueEmptyPilots(vo="lhcb", site="S", ce="ce1", queue="q", empty=3, with_jobs=1),
        QueueEmptyPilots(vo="lhcb", site="S", ce="ce2", queue="q", empty=0, with_jobs=2),
    ]
    got = counts_by_queue(rows)
    assert got[("lhcb", "S", "ce1", "q")] == counts(3, 1)
    assert got[("lhcb", "S", "ce1", "q")].ratio == 0.75
    assert got[("lhcb", "S", "ce2", "q")].ended == 2
    assert counts(0, 0).ratio is None


def test_counts_are_never_negative() -> None:
    with pytest.raises(ValueError, match="negative"):
        counts(-1, 3)


@pytest.mark.parametrize(
    "fields",
    [
        {"low": 0.9, "high": 0.5},
        {"decrease": 1.0},
        {"decrease": 0.0},
        {"min_factor": 0.0},
        {"min_factor": 1.5},
        {"min_samples": 0},
        {"recover": 0.0},
        {"window_s": 10},
        {"unknown": 1},
    ],
)
def test_a_policy_that_cannot_work_is_refused_at_load(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        EmptyPilotPolicy.model_validate(fields)


def test_the_policy_reads_from_a_config_block() -> None:
    policy = EmptyPilotPolicy.model_validate(
        {"window_s": 7200, "min_samples": 4, "high": 0.9, "low": 0.3, "min_factor": 0.2}
    )
    assert (policy.window_s, policy.min_samples, policy.min_factor) == (7200, 4, 0.2)
    assert next_factor(counts(4, 0), 1.0, policy) == 0.5
    assert next_factor(counts(4, 0), 0.3, policy) == 0.2


def test_the_queue_report_carries_each_queues_counts_and_factor() -> None:

    clock = ManualClock()
    throttled, plain = ref("throttled"), ref("plain")
    throttles = {throttled.key: QueueThrottle(counts(9, 3), 0.25)}
    a, b = build_report([throttled, plain], Backoff(clock=clock), {}, clock(), throttles).queues
    assert (a.ended_pilots, a.empty_ratio, a.submission_factor) == (12, 0.75, 0.25)
    assert (b.ended_pilots, b.empty_ratio, b.submission_factor) == (None, None, None)
    quiet = build_report(
        [plain], Backoff(clock=clock), {}, clock(), {plain.key: QueueThrottle(counts(0, 0), 1.0)}
    )
    assert (quiet.queues[0].ended_pilots, quiet.queues[0].empty_ratio) == (0, None)
