"""`/api/director/queues`: directors report their queues' state; operators read it."""

from __future__ import annotations

from datetime import datetime
from http import HTTPStatus
from typing import Annotated

from fastapi import APIRouter, Query, Response

from server.errors import AlreadyExists, InvalidRequest
from server.http.dependencies import Context
from server.http.policies import Director, Reader
from server.logic import director_queues as logic
from server.logic import empty_pilots
from server.models import QueueEmptyPilots, QueuesReport
from server.routers.pilots import json_response
from server.routers.responses import DATABASE, raises

router = APIRouter(prefix="/api/director", tags=["director"], responses=DATABASE)


@router.put(
    "/queues",
    status_code=HTTPStatus.NO_CONTENT,
    responses=raises(InvalidRequest, AlreadyExists),
)
async def report_queues(ctx: Context, identity: Director, body: QueuesReport) -> None:
    """Replace this director's report of the queues it serves (limits, back-off, last cycle)."""
    await logic.report(ctx, identity, body)


@router.get("/queues")
async def queue_states(ctx: Context, identity: Reader) -> Response:
    """What directors last reported of the queues of the caller's VOs (all for an admin)."""
    return json_response(await logic.queue_states(ctx, identity))


@router.get("/queues/empty-pilots", responses=raises(InvalidRequest))
async def queue_empty_pilots(
    ctx: Context,
    identity: Reader,
    since: Annotated[
        datetime | None,
        Query(description="ISO 8601, UTC when naive; default one hour ago, at most 7 days"),
    ] = None,
) -> list[QueueEmptyPilots]:
    """Per queue of the caller's VOs (all for an admin): Done pilots that ended since `since`
    without a job (`empty`) and with one (`with_jobs`). The director reads it once a cycle
    to lower the submission of queues whose pilots come back empty."""
    return await empty_pilots.empty_pilots(ctx, identity, since)
