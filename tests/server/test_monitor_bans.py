"""Banning and allowing from the pilot monitor over HTTP, on every backend: the controls only
for site managers, a confirmation page before each change, the ban shown on its rows, the
VO boundary, and a cross-site POST refused with nothing changed."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import httpx

from server.identity import NORMAL_USER, SITE_MANAGER
from tests.conftest import Roles
from tests.server.html_tree import parse
from tests.server.test_director_queues import put, queue
from tests.server.test_monitor import operator

SITE = "Site.lhcb.org"  # the site of tests.server.test_director_queues.queue()


async def reported(api: Roles) -> None:
    """The lhcb director reports two queues of one CE, so the page has queue rows."""
    r = await put(api.director, queue("long"), queue("short"))
    assert r.status_code == HTTPStatus.NO_CONTENT, r.text


async def bans_in_force(api: Roles) -> list[dict[str, Any]]:
    r = await api.admin.get("/api/bans")
    assert r.status_code == HTTPStatus.OK
    result: list[dict[str, Any]] = r.json()
    return result


async def confirm_and_ban(browser: httpx.AsyncClient, link: str, **fields: str) -> httpx.Response:
    """Follow a ban control to its confirmation page, fill it in, submit it."""
    r = await browser.get(link)
    assert r.status_code == HTTPStatus.OK, r.text
    [form] = parse(r.text).find_all("form", id="ban-form")
    data = {
        i.attrs["name"]: i.attrs.get("value", "")
        for i in form.find_all("input")
        if i.attrs.get("type") == "hidden"
    }
    [vo] = [o.attrs["value"] for o in form.find_all("option") if "selected" in o.attrs]
    return await browser.post("/monitor/bans", data={**data, "vo": vo, **fields})


async def test_a_site_manager_bans_a_queue_from_its_row_and_allows_it_again(api: Roles) -> None:
    await reported(api)
    browser = await operator(api, api.sut.token("carol", "lhcb", [SITE_MANAGER]))
    page = parse((await browser.get("/monitor")).text)
    [control] = page.find_all("a", data_ban_queue="ce.lhcb.org/long")
    assert page.find_all("a", data_ban_ce="ce.lhcb.org")
    r = await confirm_and_ban(browser, control.attrs["href"], reason="black hole <b>node</b>")
    assert r.status_code == HTTPStatus.SEE_OTHER, r.text
    [made] = await bans_in_force(api)
    assert (made["vo"], made["site"], made["ce"], made["queue"]) == (
        "lhcb",
        SITE,
        "ce.lhcb.org",
        "long",
    )
    assert made["banned_by"] == "carol"
    # the page shows the ban on its row (escaped) and in the list, with an allow control
    text = (await browser.get("/monitor/fragments/overview")).text
    page = parse(text)
    [row] = page.find_all("tr", data_queue="ce.lhcb.org/long")
    assert "banned (queue" in row.text
    assert "black hole <b>node</b>" in row.text
    assert "<b>node</b>" not in text
    [other] = page.find_all("tr", data_queue="ce.lhcb.org/short")
    assert "banned" not in other.text
    [listed] = page.find_all("tr", data_ban=str(made["ban_id"]))
    [allow] = listed.find_all("a", class_="allow-control")
    # allowing: a confirmation page, then the POST
    r = await browser.get(allow.attrs["href"])
    assert r.status_code == HTTPStatus.OK
    [form] = parse(r.text).find_all("form", id="allow-form")
    data = {i.attrs["name"]: i.attrs["value"] for i in form.find_all("input")}
    assert await bans_in_force(api), "the confirmation page changed nothing"
    r = await browser.post("/monitor/bans/allow", data=data)
    assert r.status_code == HTTPStatus.SEE_OTHER, r.text
    assert await bans_in_force(api) == []


async def test_a_site_row_has_a_ban_control_and_shows_the_ban(api: Roles) -> None:
    r = await api.director.post(
        "/api/pilots/bulk",
        json={"vo": "lhcb", "pilots": [{"pilot_stamp": "a" * 32, "grid_site": SITE}]},
    )
    assert r.status_code == HTTPStatus.CREATED, r.text
    browser = await operator(api, api.sut.token("carol", "lhcb", [SITE_MANAGER]))
    page = parse((await browser.get("/monitor")).text)
    [control] = page.find_all("a", data_ban_site=SITE)
    r = await confirm_and_ban(
        browser, control.attrs["href"], reason="downtime", until="2099-01-01T10:00"
    )
    assert r.status_code == HTTPStatus.SEE_OTHER, r.text
    [made] = await bans_in_force(api)
    assert (made["site"], made["ce"], made["until"]) == (SITE, None, "2099-01-01T10:00:00Z")
    page = parse((await browser.get("/monitor")).text)
    [row] = page.find_all("tr", data_site=SITE)
    assert row.find_all("span", data_banned="lhcb")
    # without a reason, nothing is banned
    r = await browser.post("/monitor/bans", data={"vo": "lhcb", "site": "Other", "reason": ""})
    assert r.status_code == HTTPStatus.UNPROCESSABLE_ENTITY
    assert len(await bans_in_force(api)) == 1


async def test_readers_see_bans_but_get_no_control_and_cannot_post(api: Roles) -> None:
    await reported(api)
    r = await api.admin.post(
        "/api/bans", json={"vo": "lhcb", "site": SITE, "ce": "ce.lhcb.org", "reason": "upgrade"}
    )
    assert r.status_code == HTTPStatus.CREATED, r.text
    reader = await operator(api, api.sut.token("alice", "lhcb", [NORMAL_USER]))
    text = (await reader.get("/monitor")).text
    page = parse(text)
    [row] = page.find_all("tr", data_queue="ce.lhcb.org/long")
    assert "banned (CE" in row.text
    assert not page.find_all("a", class_="ban-control")
    assert not page.find_all("a", class_="allow-control")
    assert (await reader.get("/monitor/bans/new?site=S")).status_code == HTTPStatus.FORBIDDEN
    for path, data in (
        ("/monitor/bans", {"vo": "lhcb", "site": "S", "reason": "x"}),
        ("/monitor/bans/allow", {"vo": "lhcb", "site": SITE, "ce": "ce.lhcb.org"}),
    ):
        r = await reader.post(path, data=data)
        assert r.status_code == HTTPStatus.FORBIDDEN, (path, r.text)
    assert len(await bans_in_force(api)) == 1
    # another VO's operator sees none of it
    other = await operator(api, api.sut.token("dave", "dteam", [SITE_MANAGER]))
    text = (await other.get("/monitor")).text
    assert "upgrade" not in text
    assert "no-bans" in text


async def test_a_site_manager_cannot_ban_or_allow_for_another_vo(api: Roles) -> None:
    r = await api.admin.post("/api/bans", json={"vo": "dteam", "site": "D", "reason": "theirs"})
    assert r.status_code == HTTPStatus.CREATED
    browser = await operator(api, api.sut.token("carol", "lhcb", [SITE_MANAGER]))
    r = await browser.post("/monitor/bans", data={"vo": "dteam", "site": "X", "reason": "x"})
    assert r.status_code == HTTPStatus.FORBIDDEN
    r = await browser.post("/monitor/bans/allow", data={"vo": "dteam", "site": "D"})
    assert r.status_code == HTTPStatus.FORBIDDEN
    page = parse((await browser.get("/monitor/bans/new?site=X&vo=dteam")).text)
    assert [o.attrs["value"] for o in page.find_all("option")] == ["lhcb"]
    assert [(b["vo"], b["site"]) for b in await bans_in_force(api)] == [("dteam", "D")]


async def test_a_cross_site_ban_or_allow_is_refused(api: Roles) -> None:
    r = await api.admin.post("/api/bans", json={"vo": "lhcb", "site": "Kept", "reason": "keep"})
    assert r.status_code == HTTPStatus.CREATED
    browser = await operator(api, api.sut.token("carol", "lhcb", [SITE_MANAGER]))
    for headers in (
        {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
        {"Origin": "https://evil.example"},
    ):
        r = await browser.post(
            "/monitor/bans",
            data={"vo": "lhcb", "site": "Forged", "reason": "csrf"},
            headers=headers,
        )
        assert r.status_code == HTTPStatus.FORBIDDEN
        assert "refused" in r.text
        r = await browser.post(
            "/monitor/bans/allow", data={"vo": "lhcb", "site": "Kept"}, headers=headers
        )
        assert r.status_code == HTTPStatus.FORBIDDEN
    assert [b["site"] for b in await bans_in_force(api)] == ["Kept"]
