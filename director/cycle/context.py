"""What every part of a cycle shares: settings, the server client, the clock, metrics, the
back-off, the configured queues and the stop flag. One object, so that the facade
(`director.loop.Director`) can swap the back-off on reload or the queue list in the demo and
every part sees it at once."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from director.backoff import Backoff
from director.client import ServerClient
from director.config import QueueRef, Settings
from director.errors import ServerUnavailable
from director.metrics import Metrics


@dataclass(eq=False)
class CycleContext:
    """The state the submission and monitoring cycles share across cycles."""

    settings: Settings
    client: ServerClient | None
    """None in a dry run without server."""
    clock: Callable[[], float]
    metrics: Metrics
    backoff: Backoff
    queues: list[QueueRef] = field(default_factory=list)
    stopping: bool = False
    """Set on SIGTERM: queues not yet started are skipped, and a queue stops before its next
    registration; a batch already registered is still submitted and recorded."""

    def server(self) -> ServerClient:
        """The server client; ServerUnavailable when none is configured (a dry run)."""
        if self.client is None:
            raise ServerUnavailable("no server configured")
        return self.client

    def cycle_done(self, cycle: str, ok: bool) -> None:
        """The metrics an operator alerts on: the last cycle without a failed queue, and when
        the director's token runs out (as of its last reading)."""
        if ok:
            self.metrics.last_success.labels(cycle).set(self.clock())
        if self.client is not None and self.client.token is not None:
            expires_at = self.client.token.expires_at
            if expires_at is not None:
                self.metrics.token_expiry.set(expires_at)
