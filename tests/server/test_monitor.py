"""The pilot monitor over HTTP on every backend: sessions, what each caller sees, the parts of
the page, and what it must never show. (The same pages in a real browser: tests/monitor/.)"""

from __future__ import annotations

import uuid
from http import HTTPStatus
from typing import Any

import httpx

from server.identity import ADMIN, GENERIC_PILOT, NORMAL_USER
from server.logic.monitor_sessions import COOKIE
from tests.conftest import Roles
from tests.server.html_tree import Node, parse

LOGS = "/api/pilots/internal/message"


async def operator_without_login(api: Roles) -> httpx.AsyncClient:
    """A browser-like client: like every current browser, it sends `Origin` with a POST."""
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=api.sut.app),
        base_url="http://testserver",
        headers={"Origin": "http://testserver"},
    )
    api._extra.append(client)
    return client


async def operator(api: Roles, token: str) -> httpx.AsyncClient:
    """A browser-like client logged in to the monitor with `token` (cookie kept, no header)."""
    client = await operator_without_login(api)
    r = await client.post("/monitor/login", data={"token": token})
    assert r.status_code == HTTPStatus.SEE_OTHER, r.text
    assert r.headers["location"] == "/monitor"
    return client


async def fleet(api: Roles) -> dict[str, Any]:
    """Pilots of two VOs on three sites in several states; one lhcb pilot with log lines."""
    plan = [
        ("lhcb", "LCG.CERN.ch", "ce1.cern.ch", "long", ["Running", "Running", "Done", "Failed"]),
        ("lhcb", "LCG.RAL.uk", "arc.ral.ac.uk", "grid", ["Waiting", "Aborted"]),
        ("dteam", "LCG.DESY.de", "ce.desy.de", "short", ["Running", "Failed"]),
    ]
    stamps: dict[str, list[str]] = {}
    secrets: list[str] = []
    for vo, site, ce, queue, statuses in plan:
        batch = [uuid.uuid4().hex for _ in statuses]
        client = api.director if vo == "lhcb" else api.other_director
        r = await client.post(
            "/api/pilots/bulk",
            json={
                "vo": vo,
                "pilots": [
                    {"pilot_stamp": s, "grid_site": site, "destination_site": ce, "queue": queue}
                    for s in batch
                ],
                "mint_secrets": True,
            },
        )
        assert r.status_code == HTTPStatus.CREATED, r.text
        secrets += [x["pilot_secret"] for x in r.json()["secrets"]]
        updates = {
            s: {"Status": st, "StatusReason": f"{st} <script>alert('{vo}')</script>"}
            for s, st in zip(batch, statuses, strict=True)
        }
        r = await client.patch("/api/pilots/metadata", json=updates)
        assert r.status_code == HTTPStatus.NO_CONTENT, r.text
        stamps.setdefault(vo, []).extend(batch)
    # one lhcb pilot logs in with its own secret and sends lines, as a wrapper does
    logger = uuid.uuid4().hex
    r = await api.director.post(
        "/api/pilots/bulk",
        json={
            "vo": "lhcb",
            "pilots": [{"pilot_stamp": logger, "grid_site": "LCG.CERN.ch"}],
            "mint_secrets": True,
        },
    )
    secret = r.json()["secrets"][0]["pilot_secret"]
    secrets.append(secret)
    r = await api.anonymous.post(
        "/api/auth/secret-exchange", json={"pilot_stamp": logger, "pilot_secret": secret}
    )
    assert r.status_code == HTTPStatus.OK, r.text
    pilot_token = r.json()["access_token"]
    lines = [
        {
            "timestamp": f"2026-11-28T10:00:{i:02d}Z",
            "severity": sev,
            "message": msg,
            "scope": "Pilot",
        }
        for i, (sev, msg) in enumerate(
            [
                ("INFO", "installing DIRAC"),
                ("ERROR", "cannot reach the matcher"),
                ("INFO", "retrying <b>now</b>"),
            ]
        )
    ]
    r = await api.with_token(pilot_token).post(LOGS, json={"lines": lines})
    assert r.status_code == HTTPStatus.NO_CONTENT, r.text
    stamps["lhcb"].append(logger)
    return {"stamps": stamps, "secrets": secrets, "logger": logger, "pilot_token": pilot_token}


def matrix_of(page: Node) -> dict[tuple[str, str], int]:
    cells = {}
    for row in page.find_all("tr", data_site=None):
        for cell in row.find_all("td", data_status=None):
            cells[(row.attrs["data-site"], cell.attrs["data-status"])] = int(cell.text or 0)
    return cells


async def summary(client: httpx.AsyncClient, **filters: str) -> dict[tuple[str, str], int]:
    search = [{"parameter": k, "operator": "eq", "value": v} for k, v in filters.items()]
    r = await client.post(
        "/api/pilots/summary", json={"grouping": ["GridSite", "Status"], "search": search}
    )
    assert r.status_code == HTTPStatus.OK, r.text
    return {(x["GridSite"], x["Status"]): x["count"] for x in r.json()}


def nonzero(cells: dict[tuple[str, str], int]) -> dict[tuple[str, str], int]:
    return {k: v for k, v in cells.items() if v}


async def test_without_a_session_pages_go_to_the_login_form(api: Roles) -> None:
    for path in ("/monitor", "/monitor/pilots/" + "a" * 32):
        r = await api.anonymous.get(path)
        assert r.status_code == HTTPStatus.SEE_OTHER
        assert r.headers["location"] == "/monitor/login"
    r = await api.anonymous.get("/monitor/fragments/overview")
    assert r.status_code == HTTPStatus.UNAUTHORIZED
    r = await api.anonymous.get("/monitor/login")
    assert r.status_code == HTTPStatus.OK
    assert parse(r.text).find("textarea", id="token") is not None


async def test_only_operator_tokens_open_a_session(api: Roles) -> None:
    data = await fleet(api)
    for token, status in [
        ("not a token", HTTPStatus.UNAUTHORIZED),
        (api.sut.token("alice", "lhcb", [NORMAL_USER], lifetime=-1), HTTPStatus.UNAUTHORIZED),
        (data["pilot_token"], HTTPStatus.FORBIDDEN),
        (api.sut.token("pilot", "lhcb", [GENERIC_PILOT]), HTTPStatus.FORBIDDEN),
    ]:
        r = await api.anonymous.post("/monitor/login", data={"token": token})
        assert r.status_code == status
        assert COOKIE not in r.cookies
        error = parse(r.text).find(id="login-error")
        assert error is not None
        assert error.attrs["role"] == "alert"
        assert error.text
        assert token not in r.text


async def test_the_session_cookie_is_not_a_bearer_token_and_vice_versa(api: Roles) -> None:
    token = api.sut.token("alice", "lhcb", [NORMAL_USER])
    r = await api.anonymous.post("/monitor/login", data={"token": token})
    cookie = r.headers["set-cookie"]
    for attribute in ("HttpOnly", "SameSite=strict", "Path=/monitor", "Max-Age="):
        assert attribute.lower() in cookie.lower(), cookie
    session = r.cookies[COOKIE]
    assert session != token
    r = await api.with_token(session).post("/api/pilots/search", json={})
    assert r.status_code == HTTPStatus.UNAUTHORIZED
    forged = await operator_without_login(api)
    forged.cookies.set(COOKIE, token, path="/monitor")
    r = await forged.get("/monitor")
    assert r.status_code == HTTPStatus.SEE_OTHER


async def test_the_matrix_matches_the_summary_and_a_filter_narrows_it(api: Roles) -> None:
    await fleet(api)
    token = api.sut.token("alice", "lhcb", [NORMAL_USER])
    browser = await operator(api, token)
    page = parse((await browser.get("/monitor")).text)
    assert nonzero(matrix_of(page)) == await summary(api.user)
    grand = page.find(id="matrix-grand-total")
    assert grand is not None
    assert int(grand.text) == 7
    who = page.find(id="whoami")
    assert who is not None
    assert "alice" in who.text
    assert "lhcb" in who.text

    r = await browser.get("/monitor", params={"site": "LCG.CERN.ch", "status": "Running"})
    narrowed = nonzero(matrix_of(parse(r.text)))
    assert narrowed == {("LCG.CERN.ch", "Running"): 2}
    r = await browser.get("/monitor/fragments/overview", params={"site": "LCG.RAL.uk"})
    assert r.status_code == HTTPStatus.OK
    assert nonzero(matrix_of(parse(r.text))) == await summary(api.user, GridSite="LCG.RAL.uk")


async def test_a_vo_user_sees_only_their_vo_and_an_admin_sees_all(api: Roles) -> None:
    data = await fleet(api)
    dteam = await operator(api, api.sut.token("bob", "dteam", [NORMAL_USER]))
    r = await dteam.get("/monitor")
    page = parse(r.text)
    assert set(nonzero(matrix_of(page))) == {("LCG.DESY.de", "Running"), ("LCG.DESY.de", "Failed")}
    for stamp in data["stamps"]["lhcb"]:
        assert stamp not in r.text
    assert "LCG.CERN.ch" not in r.text
    assert "ce1.cern.ch" not in r.text
    assert [o.attrs["value"] for o in page.find("select", name="vo").find_all("option")] == [
        "",
        "dteam",
    ]  # type: ignore[union-attr]
    # asking for the other VO by name narrows to nothing rather than widening the scope
    r = await dteam.get("/monitor", params={"vo": "lhcb"})
    asked = parse(r.text)
    assert asked.find(id="matrix-empty") is not None
    assert asked.find(id="no-failures") is not None
    assert "LCG.CERN.ch" not in r.text
    foreign = await dteam.get(f"/monitor/pilots/{data['logger']}")
    unknown = await dteam.get(f"/monitor/pilots/{'f' * 32}")
    assert foreign.status_code == unknown.status_code == HTTPStatus.NOT_FOUND
    assert foreign.text == unknown.text
    r = await dteam.get(f"/monitor/fragments/pilots/{data['logger']}/logs")
    assert r.status_code == HTTPStatus.NOT_FOUND
    assert "matcher" not in r.text

    admin = await operator(api, api.sut.token("root", "lhcb", [ADMIN]))
    page = parse((await admin.get("/monitor")).text)
    assert nonzero(matrix_of(page)) == await summary(api.admin)
    assert "all VOs" in page.find(id="whoami").text  # type: ignore[union-attr]


async def test_failures_chart_and_queues(api: Roles) -> None:
    data = await fleet(api)
    browser = await operator(api, api.sut.token("alice", "lhcb", [NORMAL_USER]))
    r = await browser.get("/monitor")
    page = parse(r.text)
    failures = page.find("table", id="recent-failures")
    assert failures is not None
    rows = failures.find_all("tr", data_stamp=None)
    assert {
        row.find("td", class_="status-Failed") is not None
        or row.find("td", class_="status-Aborted") is not None
        for row in rows
    } == {True}
    assert len(rows) == 2  # lhcb's Failed and Aborted, not dteam's
    assert {row.attrs["data-stamp"] for row in rows} <= set(data["stamps"]["lhcb"])
    # a reason is text, never markup
    assert "<script>" not in r.text
    assert "&lt;script&gt;" in r.text

    bars = page.find_all("rect", data_kind="submitted")
    assert len(bars) == 24
    assert sum(int(b.attrs["data-count"]) for b in bars) == 7
    ended = page.find_all("rect", data_kind="ended")
    assert sum(int(b.attrs["data-count"]) for b in ended) == 3  # Done, Failed, Aborted
    week = parse((await browser.get("/monitor", params={"range": "7d"})).text)
    assert len(week.find_all("rect", data_kind="submitted")) == 28
    svg = page.find("svg", id="activity-chart")
    assert svg is not None
    assert svg.attrs["role"] == "img"
    assert svg.find("title") is not None

    queues = page.find("section", id="queues")
    assert queues is not None
    assert (
        queues.find(id="queues-unreported") is not None
        or queues.find("table", id="queue-table") is not None
    )


async def test_a_pilot_page_shows_metadata_and_paged_filtered_logs(api: Roles) -> None:
    data = await fleet(api)
    browser = await operator(api, api.sut.token("alice", "lhcb", [NORMAL_USER]))
    r = await browser.get(f"/monitor/pilots/{data['logger']}")
    assert r.status_code == HTTPStatus.OK
    page = parse(r.text)
    status = page.find("dd", data_field="Status")
    assert status is not None
    assert status.text == "Submitted"
    assert page.find("dd", data_field="GridSite").text == "LCG.CERN.ch"  # type: ignore[union-attr]
    assert page.find(id="no-jobs") is not None
    lines = page.find_all("tr", class_=None)
    logs = [n for n in lines if "log-line" in n.attrs.get("class", "")]
    assert [n.find("td", class_="log-message").text for n in logs] == [  # type: ignore[union-attr]
        "installing DIRAC",
        "cannot reach the matcher",
        "retrying <b>now</b>",
    ]
    assert "severity-ERROR" in logs[1].attrs["class"]
    assert page.find(id="logs-range").text == "1\u20133 of 3"  # type: ignore[union-attr]

    r = await browser.get(
        f"/monitor/fragments/pilots/{data['logger']}/logs", params={"q": "matcher"}
    )
    messages = [n.text for n in parse(r.text).find_all("td", class_="log-message")]
    assert messages == ["cannot reach the matcher"]
    r = await browser.get(f"/monitor/pilots/{data['logger']}", params={"q": "nothing like this"})
    assert parse(r.text).find(id="no-logs") is not None


async def test_no_page_shows_a_secret_or_a_token(api: Roles) -> None:
    data = await fleet(api)
    token = api.sut.token("root", "lhcb", [ADMIN])
    browser = await operator(api, token)
    pages = [
        await browser.get("/monitor"),
        await browser.get("/monitor/fragments/overview"),
        await browser.get(f"/monitor/pilots/{data['logger']}"),
        *[await browser.get(f"/monitor/pilots/{s}") for s in data["stamps"]["dteam"]],
    ]
    for r in pages:
        assert r.status_code == HTTPStatus.OK
        assert token not in r.text
        assert data["pilot_token"] not in r.text
        assert browser.cookies[COOKIE] not in r.text
        for secret in data["secrets"]:
            assert secret not in r.text
        assert "script-src 'self'" in r.headers["content-security-policy"]
        assert r.headers["cache-control"] == "no-store"


async def test_bad_filters_are_400_with_a_reason_and_logout_ends_the_session(api: Roles) -> None:
    browser = await operator(api, api.sut.token("alice", "lhcb", [NORMAL_USER]))
    r = await browser.get("/monitor", params={"status": "Sleeping"})
    assert r.status_code == HTTPStatus.BAD_REQUEST
    assert "Sleeping" in r.text
    r = await browser.get("/monitor/fragments/overview", params={"since": "forever"})
    assert r.status_code == HTTPStatus.BAD_REQUEST
    assert "since" in r.text
    r = await browser.get("/monitor/pilots/x", params={"page": "0"})
    assert r.status_code == HTTPStatus.UNPROCESSABLE_ENTITY
    r = await browser.post("/monitor/logout")
    assert r.status_code == HTTPStatus.SEE_OTHER
    assert COOKIE not in browser.cookies
    r = await browser.get("/monitor")
    assert r.status_code == HTTPStatus.SEE_OTHER
    assert r.headers["location"] == "/monitor/login"


def monitor_routes() -> list[tuple[str, str, Any]]:
    """Every /monitor route (they are outside the OpenAPI schema, so the API walk skips them)."""
    from server.app import create_app
    from server.settings import ServerSettings
    from tests.security.routes import all_routes

    return [r for r in all_routes(create_app(ServerSettings())) if r[1].startswith("/monitor")]


def test_every_monitor_page_needs_a_session() -> None:
    from server.http.policies import MONITOR, Policy

    open_routes = {
        ("GET", "/monitor/login"),
        ("POST", "/monitor/login"),
        ("POST", "/monitor/logout"),
        ("GET", "/monitor/static/{name}"),
    }
    routes = monitor_routes()
    assert len(routes) >= 9, routes
    for method, path, route in routes:
        policies = [d.call for d in route.dependant.dependencies if isinstance(d.call, Policy)]
        expected = [] if (method, path) in open_routes else [MONITOR]
        assert policies == expected, (method, path, policies)


#: Requests a browser sends when another site's page posts to the monitor.
CROSS_SITE = [
    {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
    {"Origin": "https://evil.example"},
    {"Sec-Fetch-Site": "same-site"},
]


async def test_every_state_changing_monitor_route_refuses_a_cross_site_request(
    api: Roles,
) -> None:
    """Walks the route table, so a POST (PUT, PATCH, DELETE) added to the monitor later is
    checked too: a logged-in operator's browser, made to send it by another site, gets a 403
    with the reason, and nothing happens (the session survives the forged logout)."""
    unsafe = [(m, p) for m, p, _ in monitor_routes() if m not in ("GET", "HEAD", "OPTIONS")]
    assert {("POST", "/monitor/login"), ("POST", "/monitor/logout")} <= set(unsafe), unsafe
    token = api.sut.token("alice", "lhcb", [NORMAL_USER])
    browser = await operator(api, token)
    for method, path in unsafe:
        url = path.replace("{", "").replace("}", "")  # any value for a path parameter
        for headers in CROSS_SITE:
            r = await browser.request(method, url, headers=headers, data={"token": token})
            assert r.status_code == HTTPStatus.FORBIDDEN, (method, path, headers, r.status_code)
            assert "refused" in r.text, r.text
            assert "set-cookie" not in r.headers, (method, path)
    r = await browser.get("/monitor")
    assert r.status_code == HTTPStatus.OK


async def test_reported_queues_show_limits_backoff_and_last_cycle(api: Roles) -> None:
    from datetime import UTC, datetime, timedelta

    from tests.server.test_director_queues import put, queue

    until = datetime.now(UTC) + timedelta(minutes=10)
    r = await put(
        api.director,
        queue("busy", failures=3, backoff_until=until.isoformat(), last_error="CE said: full"),
        queue("calm", last_cycle_at=datetime.now(UTC).isoformat(), last_submitted=4),
        queue("empty", ended_pilots=12, empty_ratio=0.75, submission_factor=0.5),
    )
    assert r.status_code == HTTPStatus.NO_CONTENT, r.text
    r = await put(api.other_director, queue("theirs", vo="dteam"))
    assert r.status_code == HTTPStatus.NO_CONTENT, r.text

    browser = await operator(api, api.sut.token("alice", "lhcb", [NORMAL_USER]))
    page = parse((await browser.get("/monitor")).text)
    table = page.find("table", id="queue-table")
    assert table is not None
    rows = {row.attrs["data-queue"]: row for row in table.find_all("tr", data_queue=None)}
    assert set(rows) == {"ce.lhcb.org/busy", "ce.lhcb.org/calm", "ce.lhcb.org/empty"}  # not dteam's
    busy = rows["ce.lhcb.org/busy"].text
    assert "backed off until" in busy
    assert "3 failures" in busy
    assert "CE said: full" in busy
    assert "10 / 5 / 3" in busy
    empty = rows["ce.lhcb.org/empty"].find("td", data_empty=None)
    assert empty is not None
    assert "75 % of 12 Done without a job" in empty.text
    assert "submitting x0.50" in empty.text
    busy_empty = rows["ce.lhcb.org/busy"].find("td", data_empty=None)
    assert busy_empty is not None
    assert busy_empty.text.strip() == "\u2013"
    calm = rows["ce.lhcb.org/calm"]
    assert calm.find(class_="state-ok") is not None
    assert "4 / - / -" in calm.text.replace("\u2013", "-")
