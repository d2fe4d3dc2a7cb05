"""`/api/director/queues`: directors report their queues' state; operators read it."""

from __future__ import annotations

from http import HTTPStatus

from fastapi import APIRouter, Response

from server.context import Context
from server.errors import AlreadyExists, InvalidRequest
from server.logic import director_queues as logic
from server.models import QueuesReport
from server.policies import Director, Reader
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
