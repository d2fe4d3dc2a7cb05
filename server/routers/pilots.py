"""`/api/pilots`: DiracX 0.7.0's pilot management, plus bulk registration, deletion and jobs."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Body, Query, Response
from fastapi.responses import JSONResponse
from pydantic import TypeAdapter

from server.context import ServerContext
from server.errors import AlreadyExists, InvalidRequest, NotFound, SearchTimeout, TooLarge
from server.http.dependencies import Context
from server.http.hotpath import HotRoute, plain_ints
from server.http.policies import (
    PILOT_MANAGER,
    PILOT_SELF,
    READER,
    PilotManager,
    PilotSelf,
    Reader,
)
from server.identity import Identity
from server.logic import pilots as logic
from server.models import (
    STAMP_PATTERN,
    BulkRegistrationResult,
    DeletionResult,
    JobAssociation,
    PilotDeletion,
    PilotJobs,
    PilotMetadata,
    PilotRegistration,
    SearchParams,
    Stamp,
    SummaryParams,
)
from server.routers import bulk_body
from server.routers.bulk_body import BulkBody
from server.routers.responses import DATABASE, raises
from server.routers.responses import paged as paged_responses

router = APIRouter(prefix="/api/pilots", tags=["pilots"], responses=DATABASE)


#: Every datetime column holds naive UTC; the answer carries the offset as DiracX writes it
#: (`2026-12-06T14:05:35.845465Z`), so no client reads a naive time as local.
_ORJSON_UTC = orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z


def _iso(value: Any) -> str:
    """The json fallback's datetimes, written as orjson writes them with `_ORJSON_UTC`."""
    if isinstance(value, datetime):
        utc: datetime = value if value.tzinfo is None else value.astimezone(UTC)
        return utc.replace(tzinfo=None).isoformat() + "Z"
    raise TypeError(f"cannot encode {type(value).__name__}")


def _encode(payload: Any) -> bytes:
    """orjson: rows of a page are most of a search's cost (datetimes in UTC with `Z`, as
    DiracX writes them). A string orjson refuses (a lone surrogate) falls back to json."""
    try:
        return orjson.dumps(payload, option=_ORJSON_UTC)
    except TypeError:
        return json.dumps(payload, separators=(",", ":"), default=_iso).encode()


def json_response(
    payload: Any, status: int = HTTPStatus.OK, headers: dict[str, str] | None = None
) -> Response:
    """Serialise once with the standard library; rows are already JSON-ready."""
    return Response(
        _encode(payload),
        status_code=status,
        headers=headers,
        media_type="application/json",
    )


def paged(kind: str, total: int, rows: list[dict[str, Any]], page: int, per_page: int) -> Response:
    """RFC 7233 Content-Range as DiracX sends it: 206 for a part, 416 past the end."""
    if not rows and total > 0:
        return json_response(
            rows, HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, {"Content-Range": f"{kind} */{total}"}
        )
    if len(rows) < total:
        first = per_page * (page - 1)
        last = first + len(rows) - 1
        return json_response(
            rows, HTTPStatus.PARTIAL_CONTENT, {"Content-Range": f"{kind} {first}-{last}/{total}"}
        )
    return json_response(rows)


@router.post("/", status_code=HTTPStatus.CREATED, responses=raises(InvalidRequest, AlreadyExists))
async def register_pilot(
    ctx: Context, identity: PilotManager, registration: PilotRegistration
) -> None:
    """Register one pilot (DiracX). 409 if the stamp exists, 400 for an unknown VO."""
    await logic.register_pilot(ctx, identity, registration)


@router.post(
    "/bulk",
    status_code=HTTPStatus.CREATED,
    response_model=BulkRegistrationResult,
    responses=raises(InvalidRequest, AlreadyExists),
    openapi_extra=bulk_body.OPENAPI,
)
async def register_pilots(ctx: Context, identity: PilotManager, body: BulkBody) -> Response:
    """Register many pilots in one transaction, optionally minting one bound secret each.

    All or nothing: a clash is a 409 listing every clashing stamp, and nothing is stored.
    The body (a BulkRegistration) is read, and the answer written, on a fast path: see
    server.routers.bulk_body.
    """
    result = await logic.register_bulk(
        ctx,
        identity,
        vo=body.vo,
        pilots=body.pilots,
        mint_secrets=body.mint_secrets,
        constraints=body.constraints,
    )
    return Response(
        bulk_body.answer(result), status_code=HTTPStatus.CREATED, media_type="application/json"
    )


@router.patch("/metadata", status_code=HTTPStatus.NO_CONTENT, responses=raises(NotFound))
async def update_pilot_metadata(
    ctx: Context, identity: PilotSelf, updates: Annotated[dict[Stamp, PilotMetadata], Body()]
) -> None:
    """Update pilots by stamp; a pilot token may update its own record only."""
    await logic.update_metadata(ctx, identity, updates)


@router.post(
    "/search",
    responses={**raises(InvalidRequest, TooLarge, SearchTimeout), **paged_responses("pilots")},
)
async def search(
    ctx: Context,
    identity: Reader,
    page: Annotated[int, Query(ge=1)] = 1,
    per_page: Annotated[int, Query(ge=1, le=logic.MAX_PER_PAGE)] = 100,
    body: Annotated[SearchParams | None, Body()] = None,
) -> list[dict[str, Any]]:
    """Pilots of the caller's VO (all VOs for administrators), DiracX search DSL."""
    total, rows = await logic.search(ctx, identity, body, page, per_page)
    return paged("pilots", total, rows, page, per_page)  # type: ignore[return-value]


@router.post("/summary", responses=raises(InvalidRequest, TooLarge, SearchTimeout))
async def summary(ctx: Context, identity: Reader, body: SummaryParams) -> list[dict[str, Any]]:
    """Counts grouped by the given columns."""
    return json_response(await logic.summary(ctx, identity, body))  # type: ignore[return-value]


@router.delete("/", responses=raises(InvalidRequest))
async def delete_pilots(
    ctx: Context, identity: PilotManager, body: PilotDeletion
) -> DeletionResult:
    """Delete pilots by stamps, or by age and status (maintenance)."""
    return DeletionResult(deleted=await logic.delete_pilots(ctx, identity, body))


@router.patch("/jobs", status_code=HTTPStatus.NO_CONTENT, responses=raises(NotFound))
async def associate_jobs(ctx: Context, identity: PilotSelf, body: JobAssociation) -> None:
    """Record jobs a pilot ran (JobToPilotMapping)."""
    await logic.add_jobs(ctx, identity, body.pilot_stamp, body.job_ids)


@router.get("/jobs", responses=raises(NotFound))
async def pilot_jobs(
    ctx: Context, identity: Reader, pilot_stamp: Annotated[str, Query(pattern=STAMP_PATTERN)]
) -> PilotJobs:
    """The jobs a pilot ran."""
    return await logic.jobs_of(ctx, identity, pilot_stamp)


# --- the fast lane (server.http.hotpath): the same routes, without FastAPI's machinery ---------


def _empty(status: int) -> Response:
    """What FastAPI answers for a route returning None: `null`, or no body where the status
    allows none (204)."""
    response = JSONResponse(None, status_code=status)
    if status == HTTPStatus.NO_CONTENT:
        response.body = b""
    return response


async def _hot_register(
    ctx: ServerContext, identity: Identity | None, body: PilotRegistration, _: dict[str, Any]
) -> Response:
    assert identity is not None
    await logic.register_pilot(ctx, identity, body)
    return _empty(HTTPStatus.CREATED)


async def _hot_patch(
    ctx: ServerContext, identity: Identity | None, body: dict[str, PilotMetadata], _: dict[str, Any]
) -> Response:
    assert identity is not None
    await logic.update_metadata(ctx, identity, body)
    return _empty(HTTPStatus.NO_CONTENT)


async def _hot_search(
    ctx: ServerContext, identity: Identity | None, body: SearchParams | None, query: dict[str, Any]
) -> Response:
    assert identity is not None
    page, per_page = query["page"], query["per_page"]
    total, rows = await logic.search(ctx, identity, body, page, per_page)
    return paged("pilots", total, rows, page, per_page)


async def _hot_summary(
    ctx: ServerContext, identity: Identity | None, body: SummaryParams, _: dict[str, Any]
) -> Response:
    assert identity is not None
    return json_response(await logic.summary(ctx, identity, body))


HOT = (
    HotRoute("POST", "/api/pilots/", PILOT_MANAGER, TypeAdapter(PilotRegistration), _hot_register),
    HotRoute(
        "PATCH",
        "/api/pilots/metadata",
        PILOT_SELF,
        TypeAdapter(dict[Stamp, PilotMetadata]),
        _hot_patch,
    ),
    HotRoute(
        "POST",
        "/api/pilots/search",
        READER,
        TypeAdapter(SearchParams),
        _hot_search,
        optional_body=True,
        query=plain_ints({"page": (1, 1, 10**9), "per_page": (100, 1, logic.MAX_PER_PAGE)}),
    ),
    HotRoute("POST", "/api/pilots/summary", READER, TypeAdapter(SummaryParams), _hot_summary),
)
