"""`director.gc_pause`: the collector's settings during a submission cycle are put back after
it, also when it fails, and a nested use changes nothing."""

from __future__ import annotations

import gc

import pytest

from director.gc_pause import YOUNG, long_lived_frozen


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
