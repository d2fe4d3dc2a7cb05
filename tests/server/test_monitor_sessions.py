"""Monitor sessions end on the server at logout, and only the monitor's own pages may log in
or out: cross-site requests are refused (403 with a reason), same-site ones work."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import httpx
import pytest

from server.app import create_app
from server.identity import NORMAL_USER
from server.logic.monitor_sessions import COOKIE
from tests.conftest import Roles
from tests.server.test_monitor import operator, operator_without_login

ORIGIN = {"Origin": "http://testserver"}


def with_cookie(api: Roles, cookie: str, app: Any = None) -> httpx.AsyncClient:
    """Someone else's client holding a copy of a session cookie (as an attacker would)."""
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app or api.sut.app),
        base_url="http://testserver",
        headers=ORIGIN,
    )
    client.cookies.set(COOKIE, cookie, path="/monitor")
    api._extra.append(client)
    return client


async def assert_session_ended(client: httpx.AsyncClient) -> None:
    r = await client.get("/monitor")
    assert r.status_code == HTTPStatus.SEE_OTHER, r.text
    assert r.headers["location"] == "/monitor/login"
    r = await client.get("/monitor/fragments/overview")
    assert r.status_code == HTTPStatus.UNAUTHORIZED


async def test_a_cookie_copied_before_logout_is_refused_after_it(api: Roles) -> None:
    browser = await operator(api, api.sut.token("alice", "lhcb", [NORMAL_USER]))
    copied = browser.cookies[COOKIE]
    thief = with_cookie(api, copied)
    assert (await thief.get("/monitor")).status_code == HTTPStatus.OK  # the copy works, so far
    r = await browser.post("/monitor/logout")
    assert r.status_code == HTTPStatus.SEE_OTHER
    await assert_session_ended(thief)
    await assert_session_ended(with_cookie(api, copied))
    # logging out again with the dead cookie is harmless, and does not revive it
    r = await thief.post("/monitor/logout")
    assert r.status_code == HTTPStatus.SEE_OTHER
    await assert_session_ended(with_cookie(api, copied))


async def test_logout_on_one_worker_ends_the_session_on_another(api: Roles) -> None:
    """Two app instances (two workers or hosts) sharing one database, each with its own
    memory: the logout recorded by one is seen by the other."""
    browser = await operator(api, api.sut.token("alice", "lhcb", [NORMAL_USER]))
    copied = browser.cookies[COOKIE]
    other = create_app(api.sut.settings)
    async with other.router.lifespan_context(other):
        on_other = with_cookie(api, copied, other)
        assert (await on_other.get("/monitor")).status_code == HTTPStatus.OK
        await browser.post("/monitor/logout")
        await assert_session_ended(on_other)


async def test_sessions_are_independent(api: Roles) -> None:
    """Logging out one session (one browser) leaves the operator's other sessions alone."""
    token = api.sut.token("alice", "lhcb", [NORMAL_USER])
    laptop, desktop = await operator(api, token), await operator(api, token)
    assert laptop.cookies[COOKIE] != desktop.cookies[COOKIE]
    await laptop.post("/monitor/logout")
    await assert_session_ended(laptop)
    assert (await desktop.get("/monitor")).status_code == HTTPStatus.OK


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
        {"Origin": "https://evil.example"},
        {"Origin": "http://testserver.evil.example"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
    ],
    ids=["browser", "origin-only", "lookalike", "null-origin", "fetch-site-only", "sibling-site"],
)
async def test_cross_site_login_and_logout_are_refused(api: Roles, headers: dict[str, str]) -> None:
    token = api.sut.token("alice", "lhcb", [NORMAL_USER])
    forged = await operator_without_login(api)
    r = await forged.post("/monitor/login", data={"token": token}, headers=headers)
    assert r.status_code == HTTPStatus.FORBIDDEN, r.text
    assert "Cross-site request refused" in r.text
    assert "set-cookie" not in r.headers
    assert r.headers["content-security-policy"].startswith("default-src 'none'")
    browser = await operator(api, token)
    r = await browser.post("/monitor/logout", headers=headers)
    assert r.status_code == HTTPStatus.FORBIDDEN, r.text
    assert "Cross-site request refused" in r.text
    assert "set-cookie" not in r.headers
    assert (await browser.get("/monitor")).status_code == HTTPStatus.OK  # still logged in


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"},
        {"Origin": "http://testserver"},
        {"Origin": "http://TestServer:80"},
        {"Sec-Fetch-Site": "same-origin"},
        {"Sec-Fetch-Site": "none"},
    ],
    ids=["browser", "origin-only", "origin-default-port", "fetch-site-only", "user-initiated"],
)
async def test_same_site_login_and_logout_work(api: Roles, headers: dict[str, str]) -> None:
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=api.sut.app), base_url="http://testserver"
    )
    api._extra.append(client)
    token = api.sut.token("alice", "lhcb", [NORMAL_USER])
    r = await client.post("/monitor/login", data={"token": token}, headers=headers)
    assert r.status_code == HTTPStatus.SEE_OTHER, r.text
    assert COOKIE in client.cookies
    copied = client.cookies[COOKIE]
    r = await client.post("/monitor/logout", headers=headers)
    assert r.status_code == HTTPStatus.SEE_OTHER, r.text
    assert COOKIE not in client.cookies
    await assert_session_ended(with_cookie(api, copied))


async def test_without_origin_or_fetch_site_only_a_cookieless_request_passes(api: Roles) -> None:
    """Neither header: a script (curl) may log in, since it carries no credential a forger
    could ride on; a request carrying a session cookie must say where it comes from."""
    token = api.sut.token("alice", "lhcb", [NORMAL_USER])
    script = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=api.sut.app), base_url="http://testserver"
    )
    api._extra.append(script)
    r = await script.post("/monitor/login", data={"token": token})
    assert r.status_code == HTTPStatus.SEE_OTHER, r.text
    r = await script.post("/monitor/logout")
    assert r.status_code == HTTPStatus.FORBIDDEN, r.text
    assert "Origin" in r.text
    assert (await script.get("/monitor")).status_code == HTTPStatus.OK  # not logged out
    r = await script.post("/monitor/logout", headers=ORIGIN)
    assert r.status_code == HTTPStatus.SEE_OTHER


@pytest.mark.parametrize(
    ("method", "headers", "has_cookie", "refused"),
    [
        ("GET", {"origin": "https://evil.example", "sec-fetch-site": "cross-site"}, True, False),
        ("POST", {"sec-fetch-site": "same-origin", "origin": "https://x.example"}, True, False),
        ("POST", {"sec-fetch-site": "Same-Origin"}, True, False),
        ("POST", {"sec-fetch-site": "same-site", "origin": "https://a.example"}, True, True),
        ("POST", {"sec-fetch-site": "nonsense"}, False, True),
        ("POST", {"origin": "https://a.example", "host": "a.example"}, True, False),
        ("POST", {"origin": "https://a.example", "host": "a.example:443"}, True, False),
        ("POST", {"origin": "https://a.example:8443", "host": "a.example:8443"}, True, False),
        ("POST", {"origin": "https://a.example:8443", "host": "a.example"}, True, True),
        ("POST", {"origin": "http://a.example", "host": "a.example:443"}, True, True),
        ("POST", {"origin": "https://a.example", "host": "b.example"}, False, True),
        ("POST", {"origin": "https://a.example"}, False, True),
        ("POST", {"origin": "ftp://a.example", "host": "a.example"}, False, True),
        ("POST", {"origin": "https://a.example:99999", "host": "a.example:99999"}, False, True),
        ("POST", {"origin": "https://[::1", "host": "[::1"}, False, True),
        ("DELETE", {}, True, True),
        ("POST", {}, False, False),
    ],
)
def test_the_cross_site_rule(
    method: str, headers: dict[str, str], has_cookie: bool, refused: bool
) -> None:
    from server.http.origin import cross_site_reason

    reason = cross_site_reason(method, headers, has_cookie)
    assert (reason is not None) == refused, reason
    if reason is not None:
        assert "refused" in reason


def test_every_monitor_route_goes_through_the_one_cross_site_check() -> None:
    from server.http.origin import same_origin
    from tests.server.test_monitor import monitor_routes

    for method, path, route in monitor_routes():
        calls = [d.call for d in route.dependant.dependencies]
        assert same_origin in calls, (method, path)
