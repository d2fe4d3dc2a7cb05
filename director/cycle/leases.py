"""Per-queue leases in the server's database: which queues this director may work now, so that
two directors never work one queue at the same time; released on a clean stop."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from director.config import QueueRef
from director.cycle.context import CycleContext
from director.errors import ServerError

log = logging.getLogger(__name__)


class Leases:
    """Takes, renews and releases the queues' leases under `director.name`."""

    def __init__(self, context: CycleContext) -> None:
        self.context = context

    async def take(self, refs: Sequence[QueueRef]) -> set[str]:
        """The keys of the queues this instance may work now (all of them without leases).
        ServerError when the server cannot grant them."""
        keys = [ref.key for ref in refs]
        cfg = self.context.settings.director
        if not cfg.leases or not keys:
            return set(keys)
        # No silent fallback when the server cannot grant leases: two directors would then
        # both submit to every queue. An operator who runs one director says `leases: false`.
        grant = await self.context.server().take_leases(cfg.name, keys, cfg.lease_ttl_seconds)
        return set(grant.granted)

    async def release(self) -> None:
        """Hand every configured queue over (monitoring leases disabled queues too); a failure
        is logged, the leases then run out by themselves."""
        client = self.context.client
        cfg = self.context.settings.director
        if client is None or not cfg.leases:
            return
        keys = [ref.key for ref in self.context.queues]
        if keys:
            try:
                await client.release_leases(cfg.name, keys)
            except ServerError as exc:
                log.warning("releasing leases failed: %s", exc)
