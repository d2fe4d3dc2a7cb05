"""Kill and fetch-output controls of the pilot monitor over HTTP, on every backend: only for
operators, a confirmation page before each request, the VO boundary, the pilot page showing
the requests and the output beside the log, and a cross-site POST refused with nothing
stored."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any
from urllib.parse import urlencode

import httpx

from server.identity import NORMAL_USER, OPERATOR, SITE_MANAGER
from tests.conftest import Roles
from tests.server.html_tree import Node, parse
from tests.server.test_monitor import operator as browser_for
from tests.server.test_pilot_requests import OUTPUT, pilots, upload

QUEUE = {"site": "LCG.CERN.cern", "ce": "ce1.cern.ch", "queue": "long"}


async def operator(api: Roles, vo: str = "lhcb", sub: str = "carol") -> httpx.AsyncClient:
    return await browser_for(api, api.sut.token(sub, vo, [OPERATOR]))


async def kills(api: Roles) -> list[dict[str, Any]]:
    r = await api.admin.get("/api/pilots/kills")
    assert r.status_code == HTTPStatus.OK, r.text
    result: list[dict[str, Any]] = r.json()
    return result


def hidden_fields(form: Node) -> list[tuple[str, str]]:
    return [
        (i.attrs["name"], i.attrs.get("value", ""))
        for i in form.find_all("input")
        if i.attrs.get("type") == "hidden"
    ]


async def test_an_operator_selects_pilots_in_the_list_confirms_and_they_are_asked_killed(
    api: Roles,
) -> None:
    running, waiting, done = await pilots(api, statuses=("Running", "Waiting", "Done"))
    browser = await operator(api)
    page = parse((await browser.get("/monitor/pilots")).text)
    form = page.find("form", id="pilot-actions")
    assert form is not None
    assert form.attrs["method"] == "get"  # the selection only leads to a confirmation
    boxes = {b.attrs["value"]: b for b in page.find_all("input", type="checkbox")}
    assert set(boxes) == {running, waiting, done}
    assert all(b.attrs["form"] == "pilot-actions" for b in boxes.values())

    # what the browser sends for two ticked boxes and "Kill selected"
    r = await browser.get(f"/monitor/kills/new?{urlencode([('stamp', running), ('stamp', done)])}")
    assert r.status_code == HTTPStatus.OK, r.text
    confirm = parse(r.text)
    assert await kills(api) == []  # nothing asked yet
    [kill_form] = confirm.find_all("form", id="kill-form")
    assert kill_form.attrs["method"] == "post"
    assert hidden_fields(kill_form) == [("stamp", running), ("stamp", done)]
    assert "(already ended)" in confirm.find("ul", id="kill-pilots").text  # type: ignore[union-attr]

    r = await browser.post(
        "/monitor/kills", data={"stamp": [running, done], "reason": "node <b>eats</b> jobs"}
    )
    assert r.status_code == HTTPStatus.OK, r.text
    assert "<b>eats</b>" not in r.text  # escaped
    made = parse(r.text).find("table", id="requests-made")
    assert made is not None
    states = {row.attrs["data-stamp"]: row.text for row in made.find_all("tr", data_stamp=None)}
    assert "requested" in states[running]
    assert "already ended" in states[done]
    stored = {k["pilot_stamp"]: k for k in await kills(api)}
    assert set(stored) == {running, done}
    assert stored[running]["requested_by"] == "carol"
    assert stored[running]["reason"] == "node <b>eats</b> jobs"


async def test_every_live_pilot_of_the_selected_queue(api: Roles) -> None:
    live = await pilots(api, statuses=("Running", "Waiting", "Failed"))
    [elsewhere] = await pilots(api, queue="short")
    browser = await operator(api)
    page = parse((await browser.get(f"/monitor/pilots?{urlencode({'vo': 'lhcb', **QUEUE})}")).text)
    link = page.find("a", id="kill-queue")
    assert link is not None
    r = await browser.get(link.attrs["href"])
    assert r.status_code == HTTPStatus.OK, r.text
    [form] = parse(r.text).find_all("form", id="kill-form")
    fields = dict(hidden_fields(form))
    assert fields == {"vo": "lhcb", **QUEUE}
    r = await browser.post("/monitor/kills", data={**fields, "reason": "drain"})
    assert r.status_code == HTTPStatus.OK, r.text
    assert {k["pilot_stamp"] for k in await kills(api)} == set(live[:2])
    assert elsewhere not in r.text
    # no queue chosen: no such control
    page = parse((await browser.get("/monitor/pilots")).text)
    assert page.find("a", id="kill-queue") is None


async def test_the_controls_are_for_operators_only(api: Roles) -> None:
    [mine] = await pilots(api)
    for properties in ([NORMAL_USER], [SITE_MANAGER]):
        browser = await browser_for(api, api.sut.token("alice", "lhcb", properties))
        page = parse((await browser.get("/monitor/pilots")).text)
        assert page.find("form", id="pilot-actions") is None
        assert page.find_all("input", type="checkbox") == []
        page = parse((await browser.get(f"/monitor/pilots/{mine}")).text)
        assert page.find("p", id="pilot-controls") is None
        for url in (f"/monitor/kills/new?stamp={mine}", f"/monitor/outputs/new?stamp={mine}"):
            r = await browser.get(url)
            assert r.status_code == HTTPStatus.FORBIDDEN, r.text
        for url in ("/monitor/kills", "/monitor/outputs"):
            r = await browser.post(url, data={"stamp": mine, "reason": "x"})
            assert r.status_code == HTTPStatus.FORBIDDEN, r.text
    assert await kills(api) == []


async def test_another_vos_pilots_are_left_out_and_refused(api: Roles) -> None:
    [mine] = await pilots(api)
    [theirs] = await pilots(api, "dteam")
    browser = await operator(api)
    r = await browser.get(f"/monitor/kills/new?{urlencode([('stamp', mine), ('stamp', theirs)])}")
    page = parse(r.text)
    [form] = page.find_all("form", id="kill-form")
    assert hidden_fields(form) == [("stamp", mine)]
    assert theirs in page.find("p", id="kill-unknown").text  # type: ignore[union-attr]
    r = await browser.post("/monitor/kills", data={"stamp": [mine, theirs], "reason": "x"})
    assert r.status_code == HTTPStatus.NOT_FOUND, r.text
    r = await browser.post("/monitor/outputs", data={"stamp": theirs})
    assert r.status_code == HTTPStatus.NOT_FOUND, r.text
    r = await browser.post(
        "/monitor/kills",
        data={
            "vo": "dteam",
            "site": "LCG.CERN.cern",
            "ce": "ce1.cern.ch",
            "queue": "long",
            "reason": "x",
        },
    )
    assert r.status_code == HTTPStatus.FORBIDDEN, r.text
    r = await browser.post("/monitor/kills", data={"stamp": mine})  # no reason
    assert r.status_code == HTTPStatus.UNPROCESSABLE_ENTITY, r.text
    assert await kills(api) == []
    r = await api.admin.get("/api/pilots/output-requests")
    assert r.json() == []


async def test_the_pilot_page_has_the_controls_the_requests_and_the_output(api: Roles) -> None:
    [failed] = await pilots(api, statuses=("Failed",))
    [running] = await pilots(api)
    browser = await operator(api)
    page = parse((await browser.get(f"/monitor/pilots/{running}")).text)
    kill_link = page.find("a", id="kill-pilot")
    assert kill_link is not None
    assert page.find("p", id="no-output") is not None
    r = await browser.get(kill_link.attrs["href"])
    [form] = parse(r.text).find_all("form", id="kill-form")
    r = await browser.post("/monitor/kills", data={**dict(hidden_fields(form)), "reason": "stuck"})
    assert r.status_code == HTTPStatus.OK, r.text

    page = parse((await browser.get(f"/monitor/pilots/{failed}")).text)
    assert page.find("a", id="kill-pilot") is None  # already ended: nothing to kill
    fetch = page.find("a", id="fetch-output")
    assert fetch is not None
    r = await browser.get(fetch.attrs["href"])
    [form] = parse(r.text).find_all("form", id="output-form")
    r = await browser.post("/monitor/outputs", data=dict(hidden_fields(form)))
    assert r.status_code == HTTPStatus.OK, r.text
    r = await upload(api.director, failed, std_output="<script>alert(1)</script>", std_error="boom")
    assert r.status_code == HTTPStatus.OK, r.text

    page_text = (await browser.get(f"/monitor/pilots/{failed}")).text
    assert "<script>alert(1)</script>" not in page_text
    page = parse(page_text)
    out = page.find("pre", id="output-std_output")
    assert out is not None
    assert out.text == "<script>alert(1)</script>"
    assert page.find("pre", id="output-std_error").text == "boom"  # type: ignore[union-attr]
    [row] = page.find("table", id="pilot-requests").find_all("tr", data_kind="output")  # type: ignore[union-attr]
    assert "done" in row.text

    page = parse((await browser.get(f"/monitor/pilots/{running}")).text)
    [row] = page.find("table", id="pilot-requests").find_all("tr", data_kind="kill")  # type: ignore[union-attr]
    assert "stuck" in row.text
    assert "requested" in row.text

    # a reader of the VO sees the output and the requests, without the controls
    reader = await browser_for(api, api.sut.token("alice", "lhcb", [NORMAL_USER]))
    page = parse((await reader.get(f"/monitor/pilots/{failed}")).text)
    assert page.find("pre", id="output-std_error") is not None
    assert page.find("p", id="pilot-controls") is None
    r = await api.user.get(OUTPUT, params={"pilot_stamp": failed})
    assert r.status_code == HTTPStatus.OK


async def test_not_available_output_is_said_on_the_pilot_page(api: Roles) -> None:
    [failed] = await pilots(api, statuses=("Aborted",))
    await upload(api.director, failed, not_available="the CE purged the job")
    browser = await operator(api)
    page = parse((await browser.get(f"/monitor/pilots/{failed}")).text)
    said = page.find("p", id="output-not-available")
    assert said is not None
    assert "the CE purged the job" in said.text


async def test_a_cross_site_kill_is_refused_and_nothing_is_stored(api: Roles) -> None:
    [mine] = await pilots(api)
    browser = await operator(api)
    for url in ("/monitor/kills", "/monitor/outputs"):
        r = await browser.post(
            url,
            data={"stamp": mine, "reason": "forged"},
            headers={"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
        )
        assert r.status_code == HTTPStatus.FORBIDDEN, r.text
    assert await kills(api) == []
    assert (await api.admin.get("/api/pilots/output-requests")).json() == []
