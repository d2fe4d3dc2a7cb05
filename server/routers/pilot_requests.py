"""`/api/pilots/kills`, `/api/pilots/output-requests`, `/api/pilots/output`: operators ask
for pilots to be killed or their CE output fetched; directors carry the requests out and
upload outputs; readers of the VO read both."""

from __future__ import annotations

from http import HTTPStatus
from typing import Annotated

from fastapi import APIRouter, Query

from server.errors import AlreadyExists, Forbidden, InvalidRequest, NotFound
from server.http.dependencies import Context
from server.http.policies import Director, PilotOperator, Reader
from server.logic import pilot_output
from server.logic import pilot_requests as logic
from server.models import (
    STAMP_PATTERN,
    KillRequest,
    OutputFetchRequest,
    PilotOutput,
    PilotOutputUpload,
    PilotRequest,
    RequestOutcomes,
)
from server.routers.responses import DATABASE, raises

router = APIRouter(prefix="/api/pilots", tags=["pilot requests"], responses=DATABASE)

StateFilter = Annotated[
    str | None,
    Query(
        max_length=16,
        description="a state, `open` (requested or in progress) or `pending` (open and due "
        "now: what a director carries out, oldest first)",
    ),
]
VOFilter = Annotated[str | None, Query(min_length=1, max_length=128)]
StampFilter = Annotated[str | None, Query(pattern=STAMP_PATTERN)]
Limit = Annotated[int, Query(ge=1, le=1000)]


@router.post(
    "/kills",
    status_code=HTTPStatus.CREATED,
    responses=raises(NotFound, AlreadyExists),
)
async def request_kills(
    ctx: Context, identity: PilotOperator, body: KillRequest
) -> list[PilotRequest]:
    """Ask for pilots (by stamp, or every live pilot of a queue) to be killed by the director
    that follows them; one request per pilot (an open one is returned as it is; a pilot that
    already ended gets one in state `already_ended`). 404 names the stamps unknown or of
    another VO."""
    return await logic.request_kills(ctx, identity, body)


@router.get("/kills", responses=raises(InvalidRequest))
async def list_kills(
    ctx: Context,
    identity: Reader,
    state: StateFilter = None,
    vo: VOFilter = None,
    pilot_stamp: StampFilter = None,
    limit: Limit = 1000,
) -> list[PilotRequest]:
    """Kill requests of the caller's VOs, newest first (`state=pending`: the due ones,
    oldest first)."""
    return await logic.list_requests(
        ctx, identity, logic.KILL, state=state, vo=vo, pilot_stamp=pilot_stamp, limit=limit
    )


@router.patch("/kills", responses=raises(InvalidRequest, NotFound))
async def record_kills(
    ctx: Context, identity: Director, body: RequestOutcomes
) -> list[PilotRequest]:
    """A director records what came of kill requests of its VOs (a kill done ends the pilot
    Aborted, "killed by <who>: <why>"); the requests as they now stand."""
    return await logic.record_outcomes(ctx, identity, logic.KILL, body)


@router.post(
    "/output-requests",
    status_code=HTTPStatus.CREATED,
    responses=raises(NotFound, AlreadyExists),
)
async def request_outputs(
    ctx: Context, identity: PilotOperator, body: OutputFetchRequest
) -> list[PilotRequest]:
    """Ask for pilots' CE output to be fetched and uploaded by their director."""
    return await logic.request_outputs(ctx, identity, body)


@router.get("/output-requests", responses=raises(InvalidRequest))
async def list_output_requests(
    ctx: Context,
    identity: Reader,
    state: StateFilter = None,
    vo: VOFilter = None,
    pilot_stamp: StampFilter = None,
    limit: Limit = 1000,
) -> list[PilotRequest]:
    """Output-fetch requests of the caller's VOs, as `GET /api/pilots/kills`."""
    return await logic.list_requests(
        ctx, identity, logic.OUTPUT, state=state, vo=vo, pilot_stamp=pilot_stamp, limit=limit
    )


@router.patch("/output-requests", responses=raises(InvalidRequest, NotFound))
async def record_output_requests(
    ctx: Context, identity: Director, body: RequestOutcomes
) -> list[PilotRequest]:
    """A director records what came of output-fetch requests (an upload closes them
    itself; this is for temporary and permanent failures)."""
    return await logic.record_outcomes(ctx, identity, logic.OUTPUT, body)


@router.put("/output", responses=raises(InvalidRequest, NotFound, AlreadyExists))
async def upload_output(ctx: Context, identity: Director, body: PilotOutputUpload) -> PilotOutput:
    """A director uploads a pilot's CE output (each stream redacted and cut to the server's
    limit, tail kept), or that the CE no longer has it (`not_available`, recorded once)."""
    return await pilot_output.upload(ctx, identity, body)


@router.get("/output", responses=raises(NotFound, Forbidden))
async def read_output(
    ctx: Context,
    identity: Reader,
    pilot_stamp: Annotated[str, Query(pattern=STAMP_PATTERN)],
) -> PilotOutput:
    """A pilot's stored CE output; 404 when none is stored or the pilot is not visible."""
    return await pilot_output.read(ctx, identity, pilot_stamp)
