"""Demand sources: how many pilots a queue wants beyond what its limits allow.

`fill` wants every free slot. `diracx` asks a DiracX job service once per cycle for the
waiting jobs per site (`POST /api/jobs/summary`, grouped by Site, Status = Waiting) and wants,
per queue, the site's waiting jobs minus the queue's waiting pilots.
"""

from __future__ import annotations

import logging
import ssl
from http import HTTPStatus
from typing import TYPE_CHECKING

import httpx

from director.client import TokenSource
from director.errors import ServerUnavailable
from director.slots import demand_from_jobs

if TYPE_CHECKING:
    from director.config import DiracXDemand, QueueRef, Settings

log = logging.getLogger(__name__)


class DemandSource:
    """Fill: no limit beyond the slots (`demand()` returns None)."""

    async def refresh(self) -> None:
        """Called once at the start of each submission cycle."""

    def demand(self, ref: QueueRef, waiting_pilots: int) -> int | None:
        return None

    async def aclose(self) -> None:
        pass


class DiracXJobDemand(DemandSource):
    def __init__(self, config: DiracXDemand, token: TokenSource) -> None:
        self.config = config
        self._token = token
        verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=str(config.ca_bundle)) if config.ca_bundle else True
        )
        self._http = httpx.AsyncClient(
            base_url=str(config.url).rstrip("/"), verify=verify, timeout=30.0
        )
        self._waiting: dict[str, int] | None = None

    async def refresh(self) -> None:
        body = {
            "grouping": ["Site"],
            "search": [{"parameter": "Status", "operator": "eq", "value": "Waiting"}],
        }
        try:
            response = await self._http.post(
                "/api/jobs/summary",
                json=body,
                headers={"Authorization": f"Bearer {self._token.get()}"},
            )
        except httpx.TransportError as exc:
            self._waiting = None
            raise ServerUnavailable(f"job summary: {exc}") from exc
        if response.status_code != HTTPStatus.OK:
            self._waiting = None
            log.warning("job summary: %s %s", response.status_code, response.text[:200])
            return
        self._waiting = {str(row.get("Site")): int(row.get("count", 0)) for row in response.json()}

    def demand(self, ref: QueueRef, waiting_pilots: int) -> int | None:
        if self._waiting is None:
            return 0  # unknown demand: submit nothing rather than flood
        jobs = self._waiting.get(ref.site, 0)
        if self.config.include_any_site:
            jobs += self._waiting.get("ANY", 0)
        return demand_from_jobs(jobs, waiting_pilots)

    async def aclose(self) -> None:
        await self._http.aclose()


def make_demand_source(settings: Settings) -> DemandSource:
    demand = settings.director.demand
    if demand.source == "fill":
        return DemandSource()
    token = TokenSource(demand.token_file or settings.server.token_file, settings.server.token)
    return DiracXJobDemand(demand, token)
