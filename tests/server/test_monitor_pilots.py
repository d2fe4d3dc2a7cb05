"""The monitor as an operator's console, over HTTP on every backend: the pilot list behind
every count (selection, sort, pages, search by stamp, CE reference and JobID), efficiency and
quality per site and CE, queues that fail every pilot, and a VO never seeing another's pilots
through any of it. (The same in a real browser: tests/monitor/test_monitor_pilot_list_browser.py.)
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from server.identity import ADMIN, NORMAL_USER
from server.logic.monitor_sessions import COOKIE
from tests.conftest import Roles
from tests.server.html_tree import Node, parse
from tests.server.test_monitor import operator

#: (VO, GridSite, CE, queue, statuses): CERN has two CEs, one of which fails every pilot.
PLAN: list[tuple[str, str, str, str, list[str]]] = [
    ("lhcb", "LCG.CERN.ch", "ce1.cern.ch", "long", ["Done"] * 9 + ["Failed"] * 2 + ["Running"]),
    ("lhcb", "LCG.CERN.ch", "ce2.cern.ch", "short", ["Failed", "Aborted", "Failed", "Aborted"]),
    ("lhcb", "LCG.RAL.uk", "arc.ral.ac.uk", "grid", ["Waiting", "Aborted", "Done", "Done"]),
    ("dteam", "LCG.DESY.de", "ce.desy.de", "short", ["Failed", "Failed", "Failed", "Running"]),
]


async def register(
    api: Roles, vo: str, site: str, ce: str, queue: str, statuses: list[str]
) -> list[str]:
    """As a director: register with a CE reference each, then set the statuses."""
    client = api.director if vo == "lhcb" else api.other_director
    stamps = [uuid.uuid4().hex for _ in statuses]
    r = await client.post(
        "/api/pilots/bulk",
        json={
            "vo": vo,
            "pilots": [
                {
                    "pilot_stamp": s,
                    "grid_site": site,
                    "destination_site": ce,
                    "queue": queue,
                    "pilot_reference": f"htcondorce://{ce}/{s[:8]}.0",
                }
                for s in stamps
            ],
            "mint_secrets": True,
        },
    )
    assert r.status_code == HTTPStatus.CREATED, r.text
    updates = {
        s: {"Status": st, "StatusReason": f"{st} at {ce} <b>{vo}</b>"}
        for s, st in zip(stamps, statuses, strict=True)
        if st != "Submitted"
    }
    r = await client.patch("/api/pilots/metadata", json=updates)
    assert r.status_code == HTTPStatus.NO_CONTENT, r.text
    return stamps


async def fleet(api: Roles) -> dict[str, list[str]]:
    stamps: dict[str, list[str]] = {}
    for vo, site, ce, queue, statuses in PLAN:
        stamps.setdefault(vo, []).extend(await register(api, vo, site, ce, queue, statuses))
    return stamps


async def api_stamps(
    client: httpx.AsyncClient, search: list[dict[str, Any]], **sort: str
) -> list[str]:
    body: dict[str, Any] = {"parameters": ["PilotStamp"], "search": search}
    if sort:
        body["sort"] = [{"parameter": sort["parameter"], "direction": sort["direction"]}]
    r = await client.post("/api/pilots/search", params={"per_page": 10_000}, json=body)
    assert r.status_code == HTTPStatus.OK, r.text
    return [x["PilotStamp"] for x in r.json()]


def listed(page: Node) -> list[str]:
    table = page.find("table", id="pilot-table")
    return (
        []
        if table is None
        else [r.attrs["data-stamp"] for r in table.find_all("tr", data_stamp=None)]
    )


def column(page: Node, name: str) -> list[str]:
    table = page.find("table", id="pilot-table")
    assert table is not None
    return [c.text for c in table.find_all("td", data_col=name)]


def query_of(href: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(href).query).items()}


async def test_every_count_links_to_the_list_of_its_pilots(api: Roles) -> None:
    stamps = await fleet(api)
    browser = await operator(api, api.sut.token("alice", "lhcb", [NORMAL_USER]))
    page = parse((await browser.get("/monitor", params={"since": "24h"})).text)
    cell = page.find("tr", data_site="LCG.CERN.ch").find("td", data_status="Failed")  # type: ignore[union-attr]
    assert cell is not None
    link = cell.find("a")
    assert link is not None
    href = link.attrs["href"]
    assert href.startswith("/monitor/pilots?")
    assert query_of(href) == {"site": "LCG.CERN.ch", "status": "Failed", "since": "24h"}
    r = await browser.get(href)
    assert r.status_code == HTTPStatus.OK
    expected = await api_stamps(
        api.user,
        [
            {"parameter": "GridSite", "operator": "eq", "value": "LCG.CERN.ch"},
            {"parameter": "Status", "operator": "eq", "value": "Failed"},
        ],
    )
    assert len(expected) == 4
    assert sorted(listed(parse(r.text))) == sorted(expected)
    # row totals, column totals and the grand total link to their lists too
    totals = page.find("tr", id="matrix-totals")
    assert totals is not None
    aborted = totals.find("td", data_status="Aborted").find("a")  # type: ignore[union-attr]
    assert query_of(aborted.attrs["href"]) == {"status": "Aborted", "since": "24h"}  # type: ignore[union-attr]
    grand = page.find(id="matrix-grand-total").find("a")  # type: ignore[union-attr]
    r = await browser.get(grand.attrs["href"])  # type: ignore[union-attr]
    assert sorted(listed(parse(r.text))) == sorted(stamps["lhcb"])
    row_total = page.find("tr", data_site="LCG.RAL.uk").find("td", data_total=None).find("a")  # type: ignore[union-attr]
    r = await browser.get(row_total.attrs["href"])  # type: ignore[union-attr]
    assert len(listed(parse(r.text))) == 4
    # the fragment the script swaps in lists the same
    r = await browser.get("/monitor/fragments/pilots", params=query_of(href))
    assert r.status_code == HTTPStatus.OK
    assert sorted(listed(parse(r.text))) == sorted(expected)


async def test_the_list_sorts_as_the_api_does_within_the_callers_vo(api: Roles) -> None:
    await fleet(api)
    for token, client in [
        (api.sut.token("alice", "lhcb", [NORMAL_USER]), api.user),
        (api.sut.token("bob", "dteam", [NORMAL_USER]), api.other_vo),
        (api.sut.token("root", "lhcb", [ADMIN]), api.admin),
    ]:
        browser = await operator(api, token)
        for key, parameter in [
            ("submitted", "SubmissionTime"),
            ("updated", "LastUpdateTime"),
            ("status", "Status"),
            ("site", "GridSite"),
            ("ce", "DestinationSite"),
            ("queue", "Queue"),
        ]:
            for direction in ("asc", "desc"):
                r = await browser.get("/monitor/pilots", params={"sort": key, "dir": direction})
                assert r.status_code == HTTPStatus.OK, r.text
                page = parse(r.text)
                expected = await api_stamps(client, [], parameter=parameter, direction=direction)
                assert listed(page) == expected, (key, direction)
                header = page.find("th", data_sort_key=key)
                assert header is not None
                want = "ascending" if direction == "asc" else "descending"
                assert header.attrs["aria-sort"] == want
                # the header's link turns the order round, on the first page
                flipped = query_of(header.find("a").attrs["href"])  # type: ignore[union-attr]
                assert flipped.get("sort", "submitted") == key
                assert flipped.get("page", "1") == "1"
                r2 = await browser.get("/monitor/pilots", params=flipped)
                # ties are broken by PilotID in the sort's direction: exactly reversed
                assert listed(parse(r2.text)) == list(reversed(expected)), (key, direction)
    # a VO user's sorted list never holds another VO's pilot, even sorted by site or VO-blind keys
    dteam = await operator(api, api.sut.token("bob", "dteam", [NORMAL_USER]))
    r = await dteam.get("/monitor/pilots", params={"sort": "site", "dir": "asc"})
    page = parse(r.text)
    assert set(column(page, "VO")) == {"dteam"}
    assert "LCG.CERN.ch" not in r.text
    assert page.find(class_="pilots-range").text == "1\u20134 of 4"  # type: ignore[union-attr]


async def test_pages_of_a_hundred(api: Roles) -> None:
    many = await register(api, "lhcb", "LCG.PIC.es", "ce.pic.es", "long", ["Running"] * 230)
    await register(api, "dteam", "LCG.PIC.es", "ce.pic.es", "long", ["Running"] * 5)
    browser = await operator(api, api.sut.token("alice", "lhcb", [NORMAL_USER]))
    seen: list[str] = []
    for number, size in [(1, 100), (2, 100), (3, 30)]:
        r = await browser.get("/monitor/pilots", params={"site": "LCG.PIC.es", "page": number})
        page = parse(r.text)
        rows = listed(page)
        assert len(rows) == size
        first = (number - 1) * 100 + 1
        pager = page.find(id="pilots-pager")
        assert pager is not None
        assert pager.find(class_="pilots-range").text == f"{first}\u2013{first + size - 1} of 230"  # type: ignore[union-attr]
        navs = {a.attrs["data-nav"]: query_of(a.attrs["href"]) for a in pager.find_all("a")}
        assert ("next" in navs) == (number < 3)
        assert ("previous" in navs) == (number > 1)
        if number < 3:
            assert navs["next"] == {"site": "LCG.PIC.es", "page": str(number + 1)}
            assert navs["last"]["page"] == "3"
        seen += rows
    assert sorted(seen) == sorted(many)  # every pilot once, no other VO's
    assert len(set(seen)) == 230
    r = await browser.get("/monitor/pilots", params={"site": "LCG.PIC.es", "page": 4})
    assert r.status_code == HTTPStatus.OK
    past = parse(r.text).find(id="pilots-past-end")
    assert past is not None
    assert "230 pilots" in past.text
    for bad in ({"page": "0"}, {"page": "x"}, {"page": "10000001"}, {"sort": "VO"}, {"dir": "up"}):
        r = await browser.get("/monitor/pilots", params=bad)
        assert r.status_code == HTTPStatus.BAD_REQUEST, bad
        assert next(iter(bad)) in r.text
        r = await browser.get("/monitor/fragments/pilots", params=bad)
        assert r.status_code == HTTPStatus.BAD_REQUEST, bad


async def test_search_by_stamp_reference_and_job(api: Roles) -> None:
    stamps = await fleet(api)
    mine, theirs = stamps["lhcb"][0], stamps["dteam"][0]
    r = await api.director.patch("/api/pilots/jobs", json={"pilot_stamp": mine, "job_ids": [4242]})
    assert r.status_code == HTTPStatus.NO_CONTENT, r.text
    r = await api.other_director.patch(
        "/api/pilots/jobs", json={"pilot_stamp": theirs, "job_ids": [5151]}
    )
    assert r.status_code == HTTPStatus.NO_CONTENT, r.text
    browser = await operator(api, api.sut.token("alice", "lhcb", [NORMAL_USER]))

    async def found(**params: str) -> list[str]:
        r = await browser.get("/monitor/pilots", params=params)
        assert r.status_code == HTTPStatus.OK, r.text
        return listed(parse(r.text))

    assert await found(stamp=mine) == [mine]
    assert await found(stamp=f"  {mine} ") == [mine]
    assert await found(ref=f"htcondorce://ce1.cern.ch/{mine[:8]}.0") == [mine]
    assert await found(job="4242") == [mine]
    assert await found(job="4242", status="Running") == []  # the filters still apply
    # another VO's pilot is found by none of its stamp, reference or job: as an unknown one
    for params in (
        {"stamp": theirs},
        {"ref": f"htcondorce://ce.desy.de/{theirs[:8]}.0"},
        {"job": "5151"},
        {"stamp": "f" * 32},
        {"job": "999999"},
    ):
        r = await browser.get("/monitor/pilots", params=params)
        page = parse(r.text)
        assert listed(page) == [], params
        assert page.find(id="no-pilots") is not None
        assert "LCG.DESY.de" not in r.text  # nothing of it but the value asked for
    # the admin finds it
    admin = await operator(api, api.sut.token("root", "lhcb", [ADMIN]))
    r = await admin.get("/monitor/pilots", params={"job": "5151"})
    assert listed(parse(r.text)) == [theirs]
    # values are checked before any database sees them
    for params, word in (
        ({"stamp": "a b"}, "stamp"),
        ({"stamp": "x" * 33}, "stamp"),
        ({"stamp": "%"}, "stamp"),
        ({"job": "12a"}, "job"),
        ({"job": "-1"}, "job"),
        ({"job": str(2**63)}, "job"),
        ({"ref": "r" * 256}, "ref"),
        ({"site": "s" * 129}, "site"),
    ):
        r = await browser.get("/monitor/pilots", params=params)
        assert r.status_code == HTTPStatus.BAD_REQUEST, params
        assert word in r.text


async def test_efficiency_and_quality_per_site_and_ce(api: Roles) -> None:
    await fleet(api)
    browser = await operator(api, api.sut.token("alice", "lhcb", [NORMAL_USER]))
    r = await browser.get("/monitor")
    page = parse(r.text)
    table = page.find("table", id="efficiency-table")
    assert table is not None

    def row(**attrs: str) -> dict[str, str]:
        assert table is not None
        found = table.find("tr", **attrs)
        assert found is not None, attrs
        cells = {c.attrs["data-count"]: c.text for c in found.find_all("td", data_count=None)}
        cells["efficiency"] = found.find("td", data_efficiency=None).text  # type: ignore[union-attr]
        cells["quality"] = found.find("td", data_quality=None).attrs["data-quality"]  # type: ignore[union-attr]
        return cells

    # ce1: 9 Done, 2 Failed -> 81.8 %, 11 ended -> Fair
    assert row(data_eff_ce="ce1.cern.ch") == {
        "total": "12",
        "Done": "9",
        "Failed": "2",
        "Aborted": "0",
        "efficiency": "81.8 %",
        "quality": "Fair",
    }
    # ce2: every pilot failed, but 4 ended -> Idle, as DIRAC flags a CE with 10 or fewer
    assert row(data_eff_ce="ce2.cern.ch")["efficiency"] == "0.0 %"
    assert row(data_eff_ce="ce2.cern.ch")["quality"] == "Idle"
    # the site: 9 Done of 15 ended -> 60.0 % -> Fair (60 is Fair's lower bound)
    cern = row(data_eff_site="LCG.CERN.ch")
    assert (cern["total"], cern["efficiency"], cern["quality"]) == ("16", "60.0 %", "Fair")
    assert row(data_eff_site="LCG.RAL.uk")["quality"] == "Idle"
    assert "LCG.DESY.de" not in r.text  # another VO's site
    total = table.find("tr", id="efficiency-total")
    assert total is not None
    assert "Idle" in total.text  # 18 ended: DIRAC wants more than 100 for the whole line
    # the counts link to their pilots
    link = table.find("tr", data_eff_ce="ce2.cern.ch").find("td", data_count="Aborted").find("a")  # type: ignore[union-attr]
    assert link is not None
    assert query_of(link.attrs["href"]) == {
        "site": "LCG.CERN.ch",
        "ce": "ce2.cern.ch",
        "status": "Aborted",
    }
    # a status filter narrows the matrix, not the efficiency
    r = await browser.get("/monitor", params={"status": "Running"})
    narrowed = parse(r.text)
    eff = narrowed.find("tr", data_eff_ce="ce1.cern.ch")
    assert eff is not None
    assert eff.find("td", data_quality=None).attrs["data-quality"] == "Fair"  # type: ignore[union-attr]


async def test_a_queue_that_fails_every_pilot_says_so(api: Roles) -> None:
    from tests.server.test_director_queues import put, queue

    await fleet(api)
    until = datetime.now(UTC) + timedelta(minutes=10)
    r = await put(
        api.director,
        queue("long", ce="ce1.cern.ch", site="LCG.CERN.ch"),
        queue("short", ce="ce2.cern.ch", site="LCG.CERN.ch"),
        queue(
            "busy",
            ce="ce3.cern.ch",
            site="LCG.CERN.ch",
            failures=4,
            backoff_until=until.isoformat(),
            last_error="CE said: no",
        ),
    )
    assert r.status_code == HTTPStatus.NO_CONTENT, r.text
    browser = await operator(api, api.sut.token("alice", "lhcb", [NORMAL_USER]))
    r = await browser.get("/monitor")
    page = parse(r.text)
    alarm = page.find("section", id="failing-queues")
    assert alarm is not None
    failing = {li.attrs["data-failing"]: li for li in alarm.find_all("li", data_failing=None)}
    assert set(failing) == {"ce2.cern.ch/short"}  # not ce1 (Done among its last), not dteam's
    text = failing["ce2.cern.ch/short"].text
    assert "fails every pilot" in text
    assert "last 4 pilots" in text
    assert (
        "Aborted at ce2.cern.ch <b>lhcb</b>" in text or "Failed at ce2.cern.ch <b>lhcb</b>" in text
    )
    assert "<b>lhcb</b>" not in r.text  # a reason is text, never markup
    link = failing["ce2.cern.ch/short"].find("a")
    assert query_of(link.attrs["href"]) == {  # type: ignore[union-attr]
        "vo": "lhcb",
        "ce": "ce2.cern.ch",
        "queue": "short",
        "sort": "updated",
        "dir": "desc",
    }
    r2 = await browser.get(link.attrs["href"])  # type: ignore[union-attr]
    assert set(column(parse(r2.text), "Status")) == {"Failed", "Aborted"}
    subs = [
        li.attrs["data-failing-submissions"]
        for li in alarm.find_all("li", data_failing_submissions=None)
    ]
    assert subs == ["ce3.cern.ch/busy"]
    # the queue rows say it too
    table = page.find("table", id="queue-table")
    assert table is not None
    rows = {row.attrs["data-queue"]: row for row in table.find_all("tr", data_queue=None)}
    assert "fails every pilot" in rows["ce2.cern.ch/short"].find("td", data_health=None).text  # type: ignore[union-attr]
    assert "of the last 10 Done" in rows["ce1.cern.ch/long"].find("td", data_health=None).text  # type: ignore[union-attr]
    assert "fails every submission" in rows["ce3.cern.ch/busy"].find("td", data_health=None).text  # type: ignore[union-attr]

    # dteam's queue fails every pilot too: its users see that one only
    dteam = await operator(api, api.sut.token("bob", "dteam", [NORMAL_USER]))
    r = await dteam.get("/monitor")
    alarm = parse(r.text).find("section", id="failing-queues")
    assert alarm is not None
    assert [li.attrs["data-failing"] for li in alarm.find_all("li", data_failing=None)] == [
        "ce.desy.de/short"
    ]
    assert "cern" not in r.text.lower()
    # once a pilot of the queue ends Done, it no longer fails every pilot
    [done] = await register(api, "lhcb", "LCG.CERN.ch", "ce2.cern.ch", "short", ["Done"])
    assert done
    r = await browser.get("/monitor/fragments/overview")
    alarm = parse(r.text).find("section", id="failing-queues")
    assert alarm is not None
    assert alarm.find("li", data_failing=None) is None


async def test_the_list_shows_no_secret_or_token(api: Roles) -> None:
    stamps = await fleet(api)
    token = api.sut.token("root", "lhcb", [ADMIN])
    browser = await operator(api, token)
    pages = [
        await browser.get("/monitor/pilots"),
        await browser.get("/monitor/pilots", params={"stamp": stamps["dteam"][0]}),
        await browser.get("/monitor/fragments/pilots", params={"sort": "status"}),
    ]
    for r in pages:
        assert r.status_code == HTTPStatus.OK
        assert token not in r.text
        assert browser.cookies[COOKIE] not in r.text
        assert "script-src 'self'" in r.headers["content-security-policy"]
        assert r.headers["cache-control"] == "no-store"
        assert "<b>" not in r.text
    r = await api.anonymous.get("/monitor/pilots")
    assert r.status_code == HTTPStatus.SEE_OTHER
    r = await api.anonymous.get("/monitor/fragments/pilots")
    assert r.status_code == HTTPStatus.UNAUTHORIZED
