from __future__ import annotations

from director.backoff import Backoff


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_backoff_grows_exponentially_up_to_the_maximum() -> None:
    clock = Clock()
    backoff = Backoff(initial=10, maximum=35, factor=2, clock=clock)
    assert [backoff.failure("q") for _ in range(4)] == [10, 20, 35, 35]
    assert backoff.failures("q") == 4


def test_queue_rests_until_its_time_has_passed() -> None:
    clock = Clock()
    backoff = Backoff(initial=10, maximum=100, clock=clock)
    assert not backoff.blocked("q")
    backoff.failure("q", "rejected: no such queue")
    assert backoff.blocked("q")
    assert backoff.reason("q") == "rejected: no such queue"
    clock.now += 9.5
    assert backoff.remaining("q") == 0.5
    clock.now += 0.5
    assert not backoff.blocked("q")


def test_success_resets_and_queues_are_independent() -> None:
    clock = Clock()
    backoff = Backoff(initial=10, maximum=100, clock=clock)
    backoff.failure("a")
    backoff.failure("a")
    backoff.failure("b")
    backoff.success("a")
    assert not backoff.blocked("a")
    assert backoff.failures("a") == 0
    assert backoff.failure("a") == 10
    assert backoff.blocked("b")


def test_huge_failure_counts_stay_finite() -> None:
    backoff = Backoff(initial=1, maximum=50, factor=10, clock=Clock())
    assert backoff.delay(10_000) == 50
    assert backoff.delay(0) == 0
