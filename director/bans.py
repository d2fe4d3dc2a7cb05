"""The bans in force for this director's queues, read from the server once per submission
cycle (`GET /api/bans`, one call for every VO of the director's token).

A queue is skipped while a ban covers it: its site, its CE (at that site) or the queue itself
(the CE-side queue name), for the queue's VO. Pilots already submitted are still followed by
the monitoring cycle; only new submissions stop.

Each ban is logged once, at WARNING, when the director first sees it (with the queues it
stops), and once at INFO when it is no longer in force (allowed again, or past its end), so a
ban that lasts a week is not a line per queue per cycle.

When the server cannot give the list, nothing new is submitted that cycle: submitting to a
site an operator has just banned is worse than a cycle without submissions, and the server
being down stops submission at the next step anyway (registration). The cycle logs it at
ERROR and every queue's outcome says why.

With `director.resource_status` set, DiracX's resource status is a second source, read in the
same refresh (`director.resource_status`): a queue whose site or CE it does not allow is
skipped like a banned one, and when it cannot be read nothing new is submitted either.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from director.client import ServerClient
from director.config import QueueRef, Settings
from director.errors import DirectorError
from director.resource_status import ResourceStatus
from server.models import Ban

log = logging.getLogger(__name__)


def _when(ban: Ban) -> str:
    until = f" until {ban.until:%Y-%m-%d %H:%M}Z" if ban.until is not None else ""
    return f"by {ban.banned_by} since {ban.banned_at:%Y-%m-%d %H:%M}Z{until}"


def covering(bans: Sequence[Ban], ref: QueueRef) -> Ban | None:
    """The first ban in force that covers the queue (the widest first: site, CE, queue)."""
    found = [
        b for b in bans if b.active and b.vo == ref.vo and b.covers(ref.site, ref.ce, ref.ce_queue)
    ]
    found.sort(key=lambda b: (b.ce is not None, b.queue is not None, b.ban_id))
    return found[0] if found else None


class BanList:
    """What the server said this cycle, and which bans were already logged."""

    def __init__(self, resource_status: ResourceStatus | None = None) -> None:
        self.bans: list[Ban] = []
        self._error: str = ""
        self._logged: dict[int, Ban] = {}
        self.resource_status = resource_status
        """DiracX's resource status, the optional second source (None: not configured)."""

    @classmethod
    def from_settings(cls, settings: Settings) -> BanList:
        return cls(ResourceStatus.from_settings(settings))

    @property
    def error(self) -> str:
        """Why this cycle cannot know what is banned ("" when it can): the server's list or
        DiracX's resource status could not be read. No queue submits while it is set."""
        if self._error or self.resource_status is None:
            return self._error
        return self.resource_status.error

    async def refresh(
        self, client: ServerClient | None, queues: Sequence[QueueRef], *, dry_run: bool = False
    ) -> None:
        """Read the list for this cycle, then DiracX's resource status if configured; on
        failure `error` says why (a dry run goes on with no ban known and says so at WARNING)."""
        await self._refresh_bans(client, queues, dry_run=dry_run)
        if self.resource_status is not None:
            await self.resource_status.refresh(queues, dry_run=dry_run)

    async def _refresh_bans(
        self, client: ServerClient | None, queues: Sequence[QueueRef], *, dry_run: bool
    ) -> None:
        if client is None:
            self.bans = []
            self._error = "" if dry_run else "bans: no server configured"
            return
        try:
            bans = await client.list_bans()
        except (DirectorError, OSError) as exc:
            self.bans = []
            if dry_run:
                self._error = ""
                log.warning("dry run: bans unknown (%s); planned as if none", exc)
            else:
                self._error = f"bans: {exc}"
                log.error("submission cycle: no queue can submit: %s", self._error)
            return
        self.bans = [b for b in bans if b.active]
        self._error = ""
        self._log_changes(queues)

    def covering(self, ref: QueueRef) -> Ban | None:
        return covering(self.bans, ref)

    def why(self, ref: QueueRef) -> str | None:
        """The skip reason of a banned queue (its outcome's `why`), None if not banned: the
        server's ban first, then DiracX's resource status."""
        ban = self.covering(ref)
        if ban is not None:
            return f"banned ({ban.target}): {ban.reason}"
        if self.resource_status is not None:
            return self.resource_status.why(ref)
        return None

    def _log_changes(self, queues: Sequence[QueueRef]) -> None:
        current = {b.ban_id: b for b in self.bans}
        for ban_id, ban in current.items():
            if ban_id in self._logged:
                continue
            stopped = [
                r.key for r in queues if r.vo == ban.vo and ban.covers(r.site, r.ce, r.ce_queue)
            ]
            if not stopped:
                continue  # not one of our queues: nothing to say
            self._logged[ban_id] = ban
            log.warning(
                "ban in force on %s %s for VO %s (%s): %s; no new pilots to %s",
                ban.kind,
                ban.target,
                ban.vo,
                _when(ban),
                ban.reason,
                ", ".join(stopped),
            )
        for ban_id in [i for i in self._logged if i not in current]:
            ban = self._logged.pop(ban_id)
            log.info(
                "ban on %s %s for VO %s no longer in force (allowed or ended): submitting again",
                ban.kind,
                ban.target,
                ban.vo,
            )
