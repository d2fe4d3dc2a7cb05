"""How many pilots a queue gets this cycle: pure arithmetic, no I/O.

    slots = min(MaxWaitingPilots - waiting, MaxTotalPilots - (waiting + running), PilotsPerCycle)
    n     = min(slots, demand)

Counts come from the CE when it answers, else from the server's pilot records; the caller
decides which and passes plain numbers.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    max_total: int
    max_waiting: int
    per_cycle: int


@dataclass(frozen=True)
class Plan:
    slots: int
    demand: int
    n: int
    why: str
    """What bounded n, for the dry-run table and the cycle log."""


def free_slots(limits: Limits, waiting: int, running: int) -> int:
    """Pilots the queue can take now; never negative."""
    return max(
        0,
        min(
            limits.max_waiting - waiting,
            limits.max_total - (waiting + running),
            limits.per_cycle,
        ),
    )


def plan(limits: Limits, waiting: int, running: int, demand: int | None) -> Plan:
    """Slots, demand and n with the reason for n. `demand=None` means fill the slots."""
    slots = free_slots(limits, waiting, running)
    wanted = slots if demand is None else max(0, demand)
    n = min(slots, wanted)
    if demand is not None and wanted < slots:
        why = f"demand {wanted}"
    elif limits.max_waiting - waiting <= 0:
        why = f"max waiting reached ({waiting}/{limits.max_waiting})"
    elif limits.max_total - (waiting + running) <= 0:
        why = f"max total reached ({waiting + running}/{limits.max_total})"
    elif slots == limits.per_cycle:
        why = f"pilots per cycle ({limits.per_cycle})"
    elif slots == limits.max_waiting - waiting:
        why = f"waiting {waiting} of {limits.max_waiting}"
    else:
        why = f"total {waiting + running} of {limits.max_total}"
    return Plan(slots=slots, demand=wanted, n=n, why=why)


def demand_from_jobs(waiting_jobs: int, waiting_pilots: int) -> int:
    """Waiting jobs not already covered by a waiting pilot."""
    return max(0, waiting_jobs - waiting_pilots)
