"""`/monitor`: the pilot monitor's pages, fragments, login and static files.

HTML, not API: these routes stay out of the OpenAPI schema. Every page but the login form
depends on the `MonitorViewer` policy (a session cookie, then the Reader rule); a missing,
expired or logged-out session sends a page to the login form and gives a fragment a 401, which
the script turns into the same redirect. Every route of this router also depends on
`same_origin`, which refuses a cross-site request with any method but GET, HEAD and OPTIONS
(see `server.http.origin`): a state-changing route added here is covered by construction.
"""

from __future__ import annotations

from datetime import datetime
from http import HTTPStatus
from importlib import resources
from typing import Annotated, Any
from urllib.parse import parse_qs, urlencode

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from pydantic import ValidationError

from server.errors import (
    Forbidden,
    InvalidRequest,
    NotFound,
    ServerDomainError,
    Unauthorized,
    status_of,
)
from server.http.dependencies import Context
from server.http.origin import CrossSiteRequest, same_origin
from server.http.policies import LoginRequired, MonitorViewer
from server.identity import Identity
from server.logic import bans as bans_logic
from server.logic import monitor as logic
from server.logic import pilot_output
from server.logic import pilot_requests as requests_logic
from server.logic.monitor_sessions import COOKIE, COOKIE_PATH, close_session, open_session
from server.models import FINAL_STATUSES, BanRequest, BanTarget
from server.monitor import chart

router = APIRouter(prefix="/monitor", include_in_schema=False, dependencies=[Depends(same_origin)])

LOGIN_BODY_LIMIT = 64 * 1024
DEFAULT_REFRESH = 15
METADATA_FIELDS = (
    "PilotStamp",
    "VO",
    "Status",
    "StatusReason",
    "GridType",
    "GridSite",
    "DestinationSite",
    "Queue",
    "PilotJobReference",
    "SubmissionTime",
    "LastUpdateTime",
    "BenchMark",
    "CurrentJobID",
    "InitialJobID",
    "PilotID",
)
SINCE_CHOICES = (
    ("1h", "last hour"),
    ("24h", "last 24 hours"),
    ("7d", "last 7 days"),
    ("30d", "last 30 days"),
)
RANGE_CHOICES = (("24h", "last 24 hours"), ("7d", "last 7 days"))
STATIC = {"monitor.js": "text/javascript", "monitor.css": "text/css"}

#: No inline script or style, nothing from elsewhere, never framed: an injected string in a
#: pilot's log line has nothing to run with.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _when(value: Any) -> Any:
    """Datetimes as `YYYY-MM-DD HH:MM:SS` (UTC); anything else unchanged."""
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return "-" if value is None else value


_env = Environment(
    loader=PackageLoader("server.monitor", "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_env.filters["when"] = _when


def _html(name: str, status: int = HTTPStatus.OK, **context: Any) -> HTMLResponse:
    body = _env.get_template(name).render(**context)
    return HTMLResponse(body, status_code=status, headers=SECURITY_HEADERS)


def _page_context(identity: Identity | None) -> dict[str, Any]:
    if identity is None:
        return {"identity": None, "vos_label": ""}
    vos_label = "all VOs" if identity.is_admin else ", ".join(sorted(identity.vos))
    return {"identity": identity, "vos_label": vos_label}


def _message(identity: Identity | None, status: int, heading: str, message: str) -> HTMLResponse:
    return _html(
        "message.html", status, heading=heading, message=message, **_page_context(identity)
    )


def _refresh(value: int | None) -> int:
    return DEFAULT_REFRESH if value is None else value


async def login_required(request: Request, exc: Exception) -> Response:
    """No valid session: pages go to the login form, fragments get a 401 the script follows."""
    assert isinstance(exc, LoginRequired)
    if request.url.path.startswith(f"{COOKIE_PATH}/fragments/"):
        return Response(
            '{"detail":"Log in again"}',
            HTTPStatus.UNAUTHORIZED,
            media_type="application/json",
            headers=SECURITY_HEADERS,
        )
    response = RedirectResponse("/monitor/login", HTTPStatus.SEE_OTHER, headers=SECURITY_HEADERS)
    if request.cookies.get(COOKIE):
        response.delete_cookie(COOKIE, path=COOKIE_PATH)  # expired or from a rotated key set
    return response


async def cross_site_refused(request: Request, exc: Exception) -> Response:
    """A cross-site state-changing request: 403 with the reason, as a page (it is a browser
    that sent it, most likely through a form on another site)."""
    assert isinstance(exc, CrossSiteRequest)
    return _message(None, HTTPStatus.FORBIDDEN, "Request refused", str(exc.detail))


@router.get("/login")
async def login_form() -> HTMLResponse:
    return _html("login.html", error=None, **_page_context(None))


@router.post("/login")
async def login(ctx: Context, request: Request) -> Response:
    """Check a pasted token once; answer with a session cookie, never with the token."""
    body = await request.body()
    if len(body) > LOGIN_BODY_LIMIT:
        return _html(
            "login.html",
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            error="That is not a token: too long.",
            **_page_context(None),
        )
    try:
        fields = parse_qs(body.decode("utf-8"), max_num_fields=4)
    except (UnicodeDecodeError, ValueError):
        fields = {}
    pasted = (fields.get("token") or [""])[0]
    try:
        session, lifetime = await open_session(ctx, pasted)
    except Unauthorized:
        return _html(
            "login.html",
            HTTPStatus.UNAUTHORIZED,
            error="This token is not valid (expired, or not from this server).",
            **_page_context(None),
        )
    except Forbidden:
        return _html(
            "login.html",
            HTTPStatus.FORBIDDEN,
            error="This token may not read pilots: pilot tokens cannot log in here.",
            **_page_context(None),
        )
    response = RedirectResponse("/monitor", HTTPStatus.SEE_OTHER, headers=SECURITY_HEADERS)
    response.set_cookie(
        COOKIE,
        session,
        max_age=lifetime,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.post("/logout")
async def logout(ctx: Context, request: Request) -> Response:
    """End the session on the server (a copy of the cookie is refused from now on), then
    drop the cookie."""
    await close_session(ctx, request.cookies.get(COOKIE))
    response = RedirectResponse("/monitor/login", HTTPStatus.SEE_OTHER, headers=SECURITY_HEADERS)
    response.delete_cookie(COOKIE, path=COOKIE_PATH)
    return response


@router.get("/static/{name}")
async def static(name: str) -> Response:
    if name not in STATIC:
        return Response(status_code=HTTPStatus.NOT_FOUND)
    content = resources.files("server.monitor").joinpath("static", name).read_bytes()
    return Response(
        content,
        media_type=STATIC[name],
        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
    )


def _overview_context(overview: logic.Overview) -> dict[str, Any]:
    return {
        "overview": overview,
        "filters": overview.filters,
        "chart": chart.layout(
            overview.activity,
            label_every=4,
            hourly=overview.filters.range == "24h",
        ),
        "range_choices": RANGE_CHOICES,
    }


@router.get("")
@router.get("/")
async def overview_page(
    ctx: Context,
    identity: MonitorViewer,
    request: Request,
    refresh: Annotated[int | None, Query(ge=0, le=3600)] = None,
) -> HTMLResponse:
    try:
        filters = logic.parse_filters(request.query_params)
    except InvalidRequest as exc:
        return _message(identity, HTTPStatus.BAD_REQUEST, "Bad filter", str(exc.detail))
    overview = await logic.overview(ctx, identity, filters)
    return _html(
        "overview.html",
        options=await logic.options(ctx, identity),
        statuses=logic.STATUS_COLUMNS,
        since_choices=SINCE_CHOICES,
        refresh=_refresh(refresh),
        **_overview_context(overview),
        **_page_context(identity),
    )


@router.get("/fragments/overview")
async def overview_fragment(ctx: Context, identity: MonitorViewer, request: Request) -> Response:
    try:
        filters = logic.parse_filters(request.query_params)
    except InvalidRequest as exc:
        return Response(str(exc.detail), HTTPStatus.BAD_REQUEST, headers=SECURITY_HEADERS)
    overview = await logic.overview(ctx, identity, filters)
    response = _html("_overview.html", **_overview_context(overview))
    response.headers["X-Generated"] = overview.generated.isoformat(timespec="seconds") + "Z"
    return response


def _pilot_list_context(pilots: logic.PilotList, identity: Identity) -> dict[str, Any]:
    return {
        "pilots": pilots,
        "q": pilots.query,
        "sorts": LIST_SORTS,
        "may_act": requests_logic.may_ask(identity),
    }


#: The list's sortable columns: (sort key, heading).
LIST_SORTS = {
    "status": "Status",
    "site": "Site",
    "ce": "CE",
    "queue": "Queue",
    "submitted": "Submitted (UTC)",
    "updated": "Last update (UTC)",
}


@router.get("/pilots")
async def pilot_list_page(
    ctx: Context,
    identity: MonitorViewer,
    request: Request,
    refresh: Annotated[int | None, Query(ge=0, le=3600)] = None,
) -> HTMLResponse:
    """The pilots of any selection (the overview's filters), searched by stamp, CE reference
    or JobID, sorted and paged: where every count of the overview links to."""
    try:
        query = logic.parse_pilot_query(request.query_params)
    except InvalidRequest as exc:
        return _message(identity, HTTPStatus.BAD_REQUEST, "Bad search", str(exc.detail))
    pilots = await logic.pilot_list(ctx, identity, query)
    return _html(
        "pilots.html",
        options=await logic.options(ctx, identity),
        statuses=logic.STATUS_COLUMNS,
        since_choices=SINCE_CHOICES,
        filters=query.filters,
        refresh=_refresh(refresh),
        **_pilot_list_context(pilots, identity),
        **_page_context(identity),
    )


@router.get("/fragments/pilots")
async def pilot_list_fragment(ctx: Context, identity: MonitorViewer, request: Request) -> Response:
    try:
        query = logic.parse_pilot_query(request.query_params)
    except InvalidRequest as exc:
        return Response(str(exc.detail), HTTPStatus.BAD_REQUEST, headers=SECURITY_HEADERS)
    pilots = await logic.pilot_list(ctx, identity, query)
    return _html("_pilots.html", **_pilot_list_context(pilots, identity))


def _log_query(text: str) -> Any:
    def query(page: int) -> str:
        return urlencode({k: v for k, v in (("q", text), ("page", str(page))) if v})

    return query


@router.get("/pilots/{stamp}")
async def pilot_page(
    ctx: Context,
    identity: MonitorViewer,
    stamp: str,
    q: Annotated[str, Query(max_length=128)] = "",
    page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
    refresh: Annotated[int | None, Query(ge=0, le=3600)] = None,
) -> HTMLResponse:
    try:
        view = await logic.pilot_view(ctx, identity, stamp, q, page)
    except NotFound:
        return _message(
            identity,
            HTTPStatus.NOT_FOUND,
            "Pilot not found",
            "No pilot with this stamp is visible to you.",
        )
    return _html(
        "pilot.html",
        view=view,
        fields=[f for f in METADATA_FIELDS if f in view.pilot],
        log_query=_log_query(view.logs.query),
        refresh=_refresh(refresh),
        output=await pilot_output.read_if_any(ctx, identity, stamp),
        requests=await requests_logic.requests_of(ctx, identity, stamp),
        may_act=requests_logic.may_ask(identity),
        ended=view.pilot.get("Status") in {s.value for s in FINAL_STATUSES},
        **_page_context(identity),
    )


@router.get("/fragments/pilots/{stamp}/logs")
async def logs_fragment(
    ctx: Context,
    identity: MonitorViewer,
    stamp: str,
    q: Annotated[str, Query(max_length=128)] = "",
    page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
) -> Response:
    try:
        await logic.pilot(ctx, identity, stamp)
    except NotFound:
        return Response("Pilot not found", HTTPStatus.NOT_FOUND, headers=SECURITY_HEADERS)
    logs = await logic.log_page(ctx, identity, stamp, q, page)
    return _html("_logs.html", view={"logs": logs}, log_query=_log_query(logs.query))


# --- bans: a confirmation page (GET) for each control, then the change (POST) ---------------

BAN_BODY_LIMIT = 16 * 1024
TARGET_FIELDS = ("vo", "site", "ce", "queue")


def _target_of(values: Any) -> dict[str, str]:
    """The target named by a query string or a form, values trimmed and bounded (the models
    check them again)."""
    return {k: str(values.get(k) or "").strip()[:256] for k in TARGET_FIELDS}


async def _form(request: Request) -> dict[str, str]:
    body = await request.body()
    if len(body) > BAN_BODY_LIMIT:
        raise InvalidRequest("Form too large")
    try:
        fields = parse_qs(body.decode("utf-8"), max_num_fields=16)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidRequest("Unreadable form") from exc
    return {k: v[0] for k, v in fields.items() if v}


def _manager_only(identity: Identity) -> HTMLResponse | None:
    if logic.may_ban(identity):
        return None
    return _message(
        identity,
        HTTPStatus.FORBIDDEN,
        "Not allowed",
        "Banning and allowing need DIRAC's SiteManager property (or ServiceAdministrator).",
    )


def _refused(identity: Identity, exc: ValidationError | ServerDomainError) -> HTMLResponse:
    if isinstance(exc, ValidationError):
        reason = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'form'}: {e['msg']}" for e in exc.errors()
        )
        return _message(identity, HTTPStatus.UNPROCESSABLE_ENTITY, "Not done", reason)
    return _message(identity, status_of(exc), "Not done", str(exc.detail))


def _manageable_vos(ctx: Context, identity: Identity) -> list[str]:
    return logic.visible_vos(ctx, identity)


@router.get("/bans/new")
async def ban_form(ctx: Context, identity: MonitorViewer, request: Request) -> HTMLResponse:
    """Confirm a ban: the target, a required reason, an optional end."""
    refused = _manager_only(identity)
    if refused is not None:
        return refused
    target = _target_of(request.query_params)
    vos = _manageable_vos(ctx, identity)
    target["vo"] = (
        target["vo"] if target["vo"] in vos else (identity.vo if identity.vo in vos else "")
    )
    return _html("ban.html", target=target, vos=vos, **_page_context(identity))


@router.post("/bans")
async def ban(ctx: Context, identity: MonitorViewer, request: Request) -> Response:
    refused = _manager_only(identity)
    if refused is not None:
        return refused
    fields = await _form(request)
    values = {k: v for k, v in fields.items() if k in (*TARGET_FIELDS, "reason", "until") and v}
    try:
        await bans_logic.ban(ctx, identity, BanRequest.model_validate(values))
    except (ValidationError, ServerDomainError) as exc:
        return _refused(identity, exc)
    return RedirectResponse("/monitor#bans", HTTPStatus.SEE_OTHER, headers=SECURITY_HEADERS)


@router.get("/bans/allow")
async def allow_form(ctx: Context, identity: MonitorViewer, request: Request) -> HTMLResponse:
    """Confirm lifting the ban in force on a target."""
    refused = _manager_only(identity)
    if refused is not None:
        return refused
    return _html("allow.html", target=_target_of(request.query_params), **_page_context(identity))


@router.post("/bans/allow")
async def allow(ctx: Context, identity: MonitorViewer, request: Request) -> Response:
    refused = _manager_only(identity)
    if refused is not None:
        return refused
    fields = await _form(request)
    values = {k: v for k, v in _target_of(fields).items() if v}
    try:
        await bans_logic.allow(ctx, identity, BanTarget.model_validate(values))
    except (ValidationError, ServerDomainError) as exc:
        return _refused(identity, exc)
    return RedirectResponse("/monitor#bans", HTTPStatus.SEE_OTHER, headers=SECURITY_HEADERS)
