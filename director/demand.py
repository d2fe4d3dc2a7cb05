"""Demand sources: how many pilots a queue wants beyond what its limits allow.

`fill` wants every free slot. `diracx` asks a DiracX job service once per cycle for the
waiting jobs per site (`POST /api/jobs/summary`, grouped by Site, Status = Waiting) and wants,
per queue, the site's waiting jobs minus the queue's waiting pilots. `taskqueues` reads DIRAC's
TaskQueueDB once per cycle and wants, per queue, the waiting jobs of the task queues the queue
can serve (matched as DIRAC's Matcher does, `director.taskqueues`) minus its waiting pilots.

`refresh()` runs once at the start of each submission cycle and raises `DemandUnavailable` (or
`ServerUnavailable`) when the source cannot be read; `demand()` then answers 0, never "fill",
and `explain()` says why, for the cycle's log line and the dry run's plan.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING

import httpx

from director.client import TokenSource
from director.errors import ConfigError, DemandUnavailable, ServerUnavailable
from director.slots import demand_from_jobs
from director.taskqueues import Resource, TaskQueueIndex, problem, resource_for

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from director.config import DiracXDemand, QueueRef, Settings, TaskQueueDemand

log = logging.getLogger(__name__)


class DemandSource:
    """Fill: no limit beyond the slots (`demand()` returns None)."""

    async def refresh(self) -> None:
        """Called once at the start of each submission cycle."""

    def demand(self, ref: QueueRef, waiting_pilots: int) -> int | None:
        return None

    def explain(self, ref: QueueRef, *, detail: bool = False) -> str:
        """How the last `demand()` for this queue came about ("" when there is nothing to
        add to the plan's reason); `detail` (the dry run) may name more."""
        return ""

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


@dataclass(frozen=True)
class _Matched:
    bits: int
    jobs: int
    waiting_pilots: int


class TaskQueueJobDemand(DemandSource):
    """Waiting jobs of the DIRAC task queues each queue can serve, minus its waiting pilots.

    The task queues are read once per cycle for every queue (`director.taskqueue_db`, three
    statements in one read-only transaction) and matched in memory (`TaskQueueIndex`)."""

    DETAIL_MAX = 5
    """Task queues named per queue in the dry run's plan (the most waiting jobs first)."""

    def __init__(self, config: TaskQueueDemand, vos: list[str]) -> None:
        # SQLAlchemy only for this source: ~20 MB resident in every director otherwise
        from sqlalchemy.exc import SQLAlchemyError
        from sqlalchemy.ext.asyncio import create_async_engine

        self.config = config
        self.vos = list(vos)
        try:
            self._engine: AsyncEngine = create_async_engine(
                config.url.get_secret_value(), pool_size=1, max_overflow=0, pool_pre_ping=True
            )
        except (ImportError, SQLAlchemyError, ValueError) as exc:
            raise ConfigError(f"director.demand.url: {exc}") from exc
        self.where = self._engine.url.render_as_string(hide_password=True)
        self._index: TaskQueueIndex | None = None
        self._error = "not read yet"
        self._resources: dict[str, Resource] = {}
        self._matched: dict[str, _Matched] = {}

    async def refresh(self) -> None:
        """Read every task queue with waiting jobs; on failure, every queue wants nothing
        this cycle and `DemandUnavailable` says why."""
        from sqlalchemy.exc import SQLAlchemyError

        from director.taskqueue_db import read_task_queues

        self._index = None
        self._matched.clear()
        try:
            async with asyncio.timeout(self.config.timeout_seconds):
                async with self._engine.connect() as conn:
                    task_queues = await read_task_queues(conn, self.vos)
        except TimeoutError as exc:
            self._error = f"task queue database {self.where}: no answer within " + (
                f"{self.config.timeout_seconds:g} s"
            )
            raise DemandUnavailable(self._error) from exc
        except (SQLAlchemyError, OSError) as exc:
            reason = getattr(exc, "orig", None) or exc
            self._error = f"task queue database {self.where}: {type(reason).__name__}: {reason}"
            raise DemandUnavailable(self._error) from exc
        self._index = TaskQueueIndex(task_queues)
        log.debug("task queues: %d with waiting jobs", len(self._index))

    def resource(self, ref: QueueRef) -> Resource:
        """The queue's match description (the configuration does not change while running)."""
        found = self._resources.get(ref.key)
        if found is None:
            found = self._resources[ref.key] = resource_for(ref, self.config.platforms)
        return found

    def demand(self, ref: QueueRef, waiting_pilots: int) -> int | None:
        if self._index is None:
            return 0  # unknown demand: submit nothing rather than flood
        bits = self._index.match(self.resource(ref))
        jobs = self._index.jobs(bits)
        self._matched[ref.key] = _Matched(bits, jobs, waiting_pilots)
        return demand_from_jobs(jobs, waiting_pilots)

    def explain(self, ref: QueueRef, *, detail: bool = False) -> str:
        if self._index is None:
            return f"demand unknown, none submitted: {self._error}"
        why_not = problem(self.resource(ref))
        if why_not is not None:
            return f"matches no task queue: {why_not}"
        matched = self._matched.get(ref.key)
        if matched is None:
            return ""
        count = matched.bits.bit_count()
        text = (
            f"{matched.jobs} waiting jobs in {count} task queue{'s' if count != 1 else ''}"
            f" - {matched.waiting_pilots} waiting pilots"
        )
        if detail and count:
            shown = self._index.members(matched.bits, self.DETAIL_MAX)
            names = ", ".join(f"TQ {tq.tq_id}: {tq.jobs}" for tq in shown)
            more = f", +{count - len(shown)} more" if count > len(shown) else ""
            text += f" ({names}{more})"
        return text

    async def aclose(self) -> None:
        await self._engine.dispose()


def make_demand_source(settings: Settings) -> DemandSource:
    demand = settings.director.demand
    if demand.source == "fill":
        return DemandSource()
    if demand.source == "taskqueues":
        return TaskQueueJobDemand(demand, settings.vos)
    token = TokenSource(demand.token_file or settings.server.token_file, settings.server.token)
    return DiracXJobDemand(demand, token)
