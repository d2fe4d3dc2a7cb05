"""`director.gc_pause`: the collector's settings during a submission cycle are put back after
it, also when it fails, and a nested use changes nothing; what a cycle planned is frozen too,
its garbage freed first, and nothing stays frozen after the cycle."""

from __future__ import annotations

import gc
import weakref

import pytest

from director.gc_pause import YOUNG, freeze_planned, long_lived_frozen


def test_objects_alive_at_the_start_are_frozen_then_released() -> None:
    before = gc.get_threshold()
    alive = [object() for _ in range(10)]
    with long_lived_frozen():
        assert gc.get_freeze_count() >= len(alive)
        assert gc.get_threshold() == (max(before[0], YOUNG), *before[1:])
        with long_lived_frozen():  # nested: the outer block's settings stay
            assert gc.get_threshold()[0] == max(before[0], YOUNG)
        assert gc.get_freeze_count() >= len(alive)
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == before


def test_settings_are_put_back_when_the_cycle_fails() -> None:
    before = gc.get_threshold()
    with pytest.raises(RuntimeError), long_lived_frozen():
        raise RuntimeError("the cycle failed")
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == before


class Node:
    """A reference cycle: only the collector frees it."""

    def __init__(self) -> None:
        self.me = self


def test_planned_objects_are_frozen_after_the_planning_garbage_is_freed() -> None:
    gc.disable()  # no automatic pass may free the garbage before freeze_planned does
    try:
        with long_lived_frozen():
            at_start = gc.get_freeze_count()
            plans = [[i] for i in range(1000)]  # made during the cycle, alive for all of it
            garbage = weakref.ref(Node())  # the planning's cyclic garbage
            assert garbage() is not None
            freeze_planned()
            assert garbage() is None  # freed, not frozen
            assert gc.get_freeze_count() >= at_start + len(plans)
    finally:
        gc.enable()
    assert gc.get_freeze_count() == 0


def test_outside_a_cycle_nothing_is_frozen() -> None:
    freeze_planned()
    assert gc.get_freeze_count() == 0
