"""Per-queue exponential back-off in time, with an injected clock.

After a failure a queue rests for `initial` seconds, then `initial * factor`, ... up to `max`.
A success resets it. Time-based (not cycle-based), so the rest is the same whatever the cycle
interval; the clock is injected, so tests never sleep.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class _State:
    failures: int = 0
    until: float = 0.0
    reason: str = ""


@dataclass
class Backoff:
    initial: float = 60.0
    maximum: float = 3600.0
    factor: float = 2.0
    clock: Callable[[], float] = time.monotonic
    _states: dict[str, _State] = field(default_factory=dict)

    def delay(self, failures: int) -> float:
        """Rest after the `failures`-th consecutive failure (1-based)."""
        if failures <= 0:
            return 0.0
        exponent = min(failures - 1, 64)  # keep the float finite
        return float(min(self.maximum, self.initial * self.factor**exponent))

    def failure(self, key: str, reason: str = "") -> float:
        """Record a failure; returns the rest in seconds before the queue runs again."""
        state = self._states.setdefault(key, _State())
        state.failures += 1
        rest = self.delay(state.failures)
        state.until = self.clock() + rest
        state.reason = reason
        return rest

    def success(self, key: str) -> None:
        self._states.pop(key, None)

    def remaining(self, key: str) -> float:
        """Seconds the queue still rests; 0 when it may run."""
        state = self._states.get(key)
        if state is None:
            return 0.0
        return max(0.0, state.until - self.clock())

    def blocked(self, key: str) -> bool:
        return self.remaining(key) > 0

    def failures(self, key: str) -> int:
        state = self._states.get(key)
        return state.failures if state else 0

    def reason(self, key: str) -> str:
        state = self._states.get(key)
        return state.reason if state else ""
