"""`/monitor/kills` and `/monitor/outputs`: the monitor's kill and fetch-output controls.

Each control is a confirmation page (GET, changes nothing) naming the pilots, then the
request (POST) through the same logic as `/api/pilots/kills` and `/api/pilots/output-
requests`: Operator (its VOs) or ServiceAdministrator; another VO's pilot is as unknown as a
stamp never registered. Like every route under /monitor, these depend on `same_origin`, so a
cross-site POST is refused before anything is read, and on the `MonitorViewer` session.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError

from server.errors import InvalidRequest, NotFound, ServerDomainError
from server.http.dependencies import Context
from server.http.origin import same_origin
from server.http.policies import MonitorViewer
from server.identity import Identity
from server.logic import monitor as monitor_logic
from server.logic import pilot_requests as logic
from server.models import FINAL_STATUSES, KillRequest, OutputFetchRequest
from server.routers.monitor import _html, _message, _page_context, _refused

router = APIRouter(prefix="/monitor", include_in_schema=False, dependencies=[Depends(same_origin)])

#: Pilots one confirmation page names at most (a page of the pilot list is 100).
MAX_SELECTED = 500
FORM_LIMIT = 64 * 1024
QUEUE_FIELDS = ("vo", "site", "ce", "queue")
_FINAL = frozenset(s.value for s in FINAL_STATUSES)


def _operators_only(identity: Identity) -> HTMLResponse | None:
    if logic.may_ask(identity):
        return None
    return _message(
        identity,
        HTTPStatus.FORBIDDEN,
        "Not allowed",
        "Killing pilots and fetching their output need DIRAC's Operator property "
        "(or ServiceAdministrator).",
    )


def _stamps(values: list[str]) -> list[str]:
    stamps = list(dict.fromkeys(v.strip() for v in values if v.strip()))
    if len(stamps) > MAX_SELECTED:
        raise InvalidRequest(f"At most {MAX_SELECTED} pilots at once")
    return stamps


async def _form(request: Request) -> dict[str, list[str]]:
    body = await request.body()
    if len(body) > FORM_LIMIT:
        raise InvalidRequest("Form too large")
    try:
        return parse_qs(body.decode("utf-8"), max_num_fields=MAX_SELECTED + 8)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidRequest("Unreadable form") from exc


def _queue_of(values: Any) -> dict[str, str]:
    return {k: str(values.get(k) or "").strip()[:256] for k in QUEUE_FIELDS}


async def _selected(
    ctx: Context, identity: Identity, stamps: list[str]
) -> tuple[list[dict[str, Any]], list[str]]:
    """The pilots named that the caller sees, and the stamps it does not."""
    found, unknown = [], []
    for stamp in stamps:
        try:
            found.append(await monitor_logic.pilot(ctx, identity, stamp))
        except NotFound:
            unknown.append(stamp)
    return found, unknown


def _first(fields: dict[str, list[str]], name: str) -> str:
    return (fields.get(name) or [""])[0]


@router.get("/kills/new")
async def kill_form(ctx: Context, identity: MonitorViewer, request: Request) -> HTMLResponse:
    """Confirm a kill: the pilots selected (or every live pilot of one queue) and a reason."""
    refused = _operators_only(identity)
    if refused is not None:
        return refused
    queue = _queue_of(request.query_params)
    try:
        stamps = _stamps(request.query_params.getlist("stamp"))
    except InvalidRequest as exc:
        return _refused(identity, exc)
    if not stamps and not (queue["site"] and queue["ce"] and queue["queue"]):
        return _message(
            identity, HTTPStatus.BAD_REQUEST, "Nothing selected", "Select pilots to kill first."
        )
    pilots, unknown = await _selected(ctx, identity, stamps)
    return _html(
        "kill.html",
        pilots=pilots,
        unknown=unknown,
        queue=queue if not stamps else None,
        final=_FINAL,
        **_page_context(identity),
    )


@router.post("/kills")
async def kill(ctx: Context, identity: MonitorViewer, request: Request) -> Response:
    refused = _operators_only(identity)
    if refused is not None:
        return refused
    try:
        fields = await _form(request)
        stamps = _stamps(fields.get("stamp", []))
        body: dict[str, Any] = {"reason": _first(fields, "reason")}
        if stamps:
            body["pilot_stamps"] = stamps
        else:
            queue = {
                k: v
                for k, v in _queue_of({k: _first(fields, k) for k in QUEUE_FIELDS}).items()
                if v
            }
            body["queue"] = queue
        made = await logic.request_kills(ctx, identity, KillRequest.model_validate(body))
    except (ValidationError, ServerDomainError) as exc:
        return _refused(identity, exc)
    return _html(
        "requested.html",
        HTTPStatus.OK,
        heading="Kill requested",
        requests=made,
        **_page_context(identity),
    )


@router.get("/outputs/new")
async def output_form(ctx: Context, identity: MonitorViewer, request: Request) -> HTMLResponse:
    """Confirm a fetch of the selected pilots' CE output."""
    refused = _operators_only(identity)
    if refused is not None:
        return refused
    try:
        stamps = _stamps(request.query_params.getlist("stamp"))
    except InvalidRequest as exc:
        return _refused(identity, exc)
    if not stamps:
        return _message(
            identity, HTTPStatus.BAD_REQUEST, "Nothing selected", "Select pilots first."
        )
    pilots, unknown = await _selected(ctx, identity, stamps)
    return _html("fetch_output.html", pilots=pilots, unknown=unknown, **_page_context(identity))


@router.post("/outputs")
async def fetch_output(ctx: Context, identity: MonitorViewer, request: Request) -> Response:
    refused = _operators_only(identity)
    if refused is not None:
        return refused
    try:
        fields = await _form(request)
        body: dict[str, Any] = {"pilot_stamps": _stamps(fields.get("stamp", []))}
        reason = _first(fields, "reason").strip()
        if reason:
            body["reason"] = reason
        made = await logic.request_outputs(ctx, identity, OutputFetchRequest.model_validate(body))
    except (ValidationError, ServerDomainError) as exc:
        return _refused(identity, exc)
    return _html(
        "requested.html",
        HTTPStatus.OK,
        heading="Output fetch requested",
        requests=made,
        **_page_context(identity),
    )
