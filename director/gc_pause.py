"""The cyclic garbage collector during a submission cycle: the director's long-lived objects
are left out of its passes.

At 10,000 queues a director holds about a million tracked objects (the configuration's models,
metrics, back-off, the queues' prepared wrappers), and a cycle allocates hundreds of thousands
more (stamps, batches, request bodies, wrappers). Each allocation burst triggers full passes of
the collector over all of them, which found almost nothing to free (a few hundred objects
per cycle) and cost about a third of the director's CPU time in the cycle (measured: 18 full
passes, ~3 s of 7, `bench/director_cycle.py --queues 10000`).

`long_lived_frozen()` moves every object alive when a cycle starts to the collector's permanent
generation (`gc.freeze()`), so that the cycle's passes look at the cycle's own objects only, and
makes the young passes rarer (every `YOUNG` net allocations instead of 700), so that the
cycle's bursts set off two full passes rather than eighteen. When the cycle ends both are put
back (`gc.unfreeze()`, the thresholds as they were): garbage among the frozen objects is found by
the next full pass after the cycle, as before, and the cycle's own cyclic garbage (httpx
requests, which hold their bodies) is still collected during it. Nothing is left uncollected
for longer than a cycle.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

YOUNG = 50_000
"""Net allocations between young passes during a cycle (CPython's default: 700)."""
_depth = 0
"""Nested or concurrent users (a dry run inside a test's cycle): only the outermost unfreezes."""


@contextmanager
def long_lived_frozen() -> Iterator[None]:
    """The objects alive now are skipped by the collector until the block ends."""
    global _depth
    saved = gc.get_threshold()
    if _depth == 0:
        gc.freeze()
        gc.set_threshold(max(saved[0], YOUNG), *saved[1:])
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0:
            gc.set_threshold(*saved)
            gc.unfreeze()


def freeze_planned() -> None:
    """Once a cycle has planned, before its first group: its own long-lived objects (the
    queues' plans, batches and outcomes, about a million at 10,000 queues) join the frozen
    ones, after one full pass that frees the planning's own garbage. Without it each group's
    `collect_cycle_garbage` walked them all again: ~130 ms a group, 1.3 s of the director's
    ~5 s CPU at 10,000 queues (py-spy, `bench/director_cycle.py`). They are unfrozen with
    the rest when the cycle ends. No group's request is in flight yet, so none of the bodies
    `collect_cycle_garbage` is there for is frozen."""
    if _depth:
        gc.collect()
        gc.freeze()


def collect_cycle_garbage() -> None:
    """A full pass over the objects made since the cycle planned (`freeze_planned`; the frozen
    ones are skipped), where a cycle has just dropped a large structure held in
    reference cycles: a group's httpx requests and answers (2 MB bodies each). With the young
    passes made rare they would otherwise live on to the next pass, and the next group's
    allocations would take new memory rather than theirs: measured ~18 MB of the director's
    peak at 10,000 queues."""
    if _depth:
        gc.collect()
