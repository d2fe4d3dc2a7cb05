"""Pilot logs: pilots send theirs (`internal` with a pilot token, `legacy` with a GenericPilot
user token); operators search them, scoped to their VO."""

from __future__ import annotations

from http import HTTPStatus
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Request

from server.errors import InvalidRequest, NotFound, RateLimited, SearchTimeout, TooLarge
from server.http.dependencies import Context
from server.http.policies import LegacyPilot, PilotOnly, Reader
from server.logic import logs as logic
from server.models import LegacyLogBatch, SearchParams
from server.routers import log_body
from server.routers.pilots import paged
from server.routers.responses import DATABASE, raises
from server.routers.responses import paged as paged_responses

router = APIRouter(prefix="/api/pilots", tags=["logs"], responses=DATABASE)

#: A pilot deleted since its token was issued is unknown; a batch over a limit is refused whole.
_INGEST = raises(InvalidRequest, NotFound, TooLarge, RateLimited)
#: What FastAPI lists for a route with a body model; this one reads its body itself.
_VALIDATION: dict[int | str, dict[str, Any]] = {
    int(HTTPStatus.UNPROCESSABLE_ENTITY): {
        "description": "Validation Error",
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/HTTPValidationError"}}
        },
    }
}


@router.post(
    "/internal/message",
    status_code=HTTPStatus.NO_CONTENT,
    responses={**_INGEST, **_VALIDATION},
    openapi_extra=log_body.OPENAPI,
)
async def send_message(ctx: Context, identity: PilotOnly, request: Request) -> None:
    """Log lines of the calling pilot; its stamp and VO come from the token, never the body."""
    # the body (a LogBatch) is read here, on a fast path: see server.routers.log_body
    assert identity.pilot_stamp is not None  # PilotOnly guarantees it
    await logic.ingest(
        ctx,
        stamp=identity.pilot_stamp,
        vos=frozenset({identity.vo}),
        lines=await log_body.read_lines(request),
        family_id=identity.family_id,
    )


@router.post("/legacy/message", status_code=HTTPStatus.NO_CONTENT, responses=_INGEST)
async def send_legacy_message(ctx: Context, identity: LegacyPilot, body: LegacyLogBatch) -> None:
    """Log lines of a legacy pilot (GenericPilot token): the stamp must be of the token's VO."""
    lines = logic.wire_lines(body.lines)
    await logic.ingest(ctx, stamp=body.pilot_stamp, vos=identity.vos, lines=lines)


@router.post(
    "/search/logs",
    responses={**raises(InvalidRequest, TooLarge, SearchTimeout), **paged_responses("logs")},
)
async def search_logs(
    ctx: Context,
    identity: Reader,
    page: Annotated[int, Query(ge=1)] = 1,
    per_page: Annotated[int, Query(ge=1, le=logic.MAX_PER_PAGE)] = 100,
    body: Annotated[SearchParams | None, Body()] = None,
) -> list[dict[str, Any]]:
    """Log lines in time order, DiracX search DSL; `Content-Range: logs a-b/total`."""
    total, rows = await logic.search(ctx, identity, body, page, per_page)
    return paged("logs", total, rows, page, per_page)  # type: ignore[return-value]
