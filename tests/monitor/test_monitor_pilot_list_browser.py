"""The pilot list in headless Chromium, as an operator uses it: a click from a matrix count to
its pilots, sorting by a column header, paging, searching by stamp, CE reference and JobID, all
without a page reload; and a user of another VO finding none of it.

The lists on the page are checked against `POST /api/pilots/search` for the same caller.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import pytest

from tests.monitor.conftest import Fleet, Operator
from tests.monitor.test_monitor_browser import marker_kept, screenshot, set_marker

if TYPE_CHECKING:
    from playwright.sync_api import Page

Login = Callable[[str, str], Operator]
PAGED_SITE = "LCG.PIC.es"
PAGED = 130


@dataclass
class Extra:
    """Pilots added to the module's fleet: a site with more than a page of them, and one
    pilot of each VO with a CE reference and a job."""

    paged: list[str]
    mine: str
    mine_ref: str
    mine_job: int
    theirs: str
    theirs_ref: str
    theirs_job: int


def _register(fleet: Fleet, vo: str, token: str, pilots: list[dict[str, Any]]) -> None:
    fleet.tokens.append(token)
    with fleet.api(token) as client:
        r = client.post("/api/pilots/bulk", json={"vo": vo, "pilots": pilots})
        assert r.status_code == HTTPStatus.CREATED, r.text


def _job(fleet: Fleet, token: str, stamp: str, job: int) -> None:
    with fleet.api(token) as client:
        r = client.patch("/api/pilots/jobs", json={"pilot_stamp": stamp, "job_ids": [job]})
        assert r.status_code == HTTPStatus.NO_CONTENT, r.text


@pytest.fixture(scope="module")
def extra(fleet: Fleet) -> Extra:
    lhcb, dteam = fleet.live.director_token, fleet.dteam_director
    paged = [uuid.uuid4().hex for _ in range(PAGED)]
    _register(
        fleet,
        "lhcb",
        lhcb,
        [
            {"pilot_stamp": s, "grid_site": PAGED_SITE, "destination_site": "ce.pic.es"}
            for s in paged
        ],
    )
    mine, theirs = uuid.uuid4().hex, uuid.uuid4().hex
    made = Extra(
        paged=paged,
        mine=mine,
        mine_ref=f"https://arc.ral.ac.uk:443/arex/{mine[:10]}",
        mine_job=31337,
        theirs=theirs,
        theirs_ref=f"htcondorce://ce.desy.de/{theirs[:6]}.0",
        theirs_job=42424,
    )
    _register(
        fleet,
        "lhcb",
        lhcb,
        [
            {
                "pilot_stamp": mine,
                "grid_site": "LCG.RAL.uk",
                "destination_site": "arc.ral.ac.uk",
                "pilot_reference": made.mine_ref,
            }
        ],
    )
    _register(
        fleet,
        "dteam",
        dteam,
        [
            {
                "pilot_stamp": theirs,
                "grid_site": "LCG.DESY.de",
                "destination_site": "ce.desy.de",
                "pilot_reference": made.theirs_ref,
            }
        ],
    )
    _job(fleet, lhcb, mine, made.mine_job)
    _job(fleet, dteam, theirs, made.theirs_job)
    fleet.stamps["lhcb"] += [*paged, mine]
    fleet.stamps["dteam"].append(theirs)
    return made


def api_search(
    fleet: Fleet, token: str, search: list[dict[str, Any]], sort: list[dict[str, str]] | None = None
) -> list[str]:
    body: dict[str, Any] = {"parameters": ["PilotStamp"], "search": search}
    if sort:
        body["sort"] = sort
    with fleet.api(token) as client:
        r = client.post("/api/pilots/search", params={"per_page": 10_000}, json=body)
    assert r.status_code == HTTPStatus.OK, r.text
    return [x["PilotStamp"] for x in r.json()]


def rows(page: Page) -> list[str]:
    return list(
        page.eval_on_selector_all(
            "#pilot-table tbody tr[data-stamp]", "rows => rows.map(r => r.dataset.stamp)"
        )
    )


def wait_for_rows(page: Page, expected: list[str]) -> None:
    page.wait_for_function(
        """want => JSON.stringify(Array.from(
             document.querySelectorAll('#pilot-table tbody tr[data-stamp]'),
             r => r.dataset.stamp)) === JSON.stringify(want)""",
        arg=expected,
    )


def eq(parameter: str, value: Any) -> dict[str, Any]:
    return {"parameter": parameter, "operator": "eq", "value": value}


def test_a_matrix_count_opens_the_list_of_its_pilots(
    operator: Login, fleet: Fleet, extra: Extra
) -> None:
    me = operator("alice", "lhcb")
    page = me.page
    cell = page.locator('#matrix tr[data-site="LCG.CERN.ch"] td[data-status="Running"] a')
    with page.expect_navigation():
        cell.click()
    assert "/monitor/pilots?" in page.url
    assert "site=LCG.CERN.ch" in page.url
    assert "status=Running" in page.url
    expected = api_search(fleet, me.token, [eq("GridSite", "LCG.CERN.ch"), eq("Status", "Running")])
    assert len(expected) == 3
    assert sorted(rows(page)) == sorted(expected)
    assert set(page.locator("#pilot-table td[data-col=Status]").all_inner_texts()) == {"Running"}
    # the selection is kept in the form, and a stamp opens its pilot page
    assert page.input_value("#pilot-search select[name=site]") == "LCG.CERN.ch"
    screenshot(page, "pilot-list")
    first = rows(page)[0]
    with page.expect_navigation():
        page.click(f'#pilot-table tr[data-stamp="{first}"] a[href="/monitor/pilots/{first}"]')
    assert page.inner_text('dd[data-field="PilotStamp"]') == first


def test_sort_and_page_without_a_reload(operator: Login, fleet: Fleet, extra: Extra) -> None:
    me = operator("alice", "lhcb")
    page = me.page
    page.goto(f"/monitor/pilots?site={PAGED_SITE}")
    newest = api_search(
        fleet,
        me.token,
        [eq("GridSite", PAGED_SITE)],
        [{"parameter": "SubmissionTime", "direction": "desc"}],
    )
    assert sorted(newest) == sorted(extra.paged)
    assert rows(page) == newest[:100]
    assert page.inner_text("#pilots-pager .pilots-range") == f"1\N{EN DASH}100 of {PAGED}"
    set_marker(page)
    page.click('#pilots-pager a[data-nav="next"]')
    wait_for_rows(page, newest[100:])
    assert page.inner_text("#pilots-pager .pilots-range") == f"101\N{EN DASH}{PAGED} of {PAGED}"
    assert "page=2" in page.url
    page.click('#pilots-pager a[data-nav="previous"]')
    wait_for_rows(page, newest[:100])
    assert marker_kept(page)

    # every lhcb pilot, sorted by status by clicking the header, then the other way round
    page.goto("/monitor/pilots")
    set_marker(page)
    for direction, aria in (("asc", "ascending"), ("desc", "descending")):
        page.click('#pilot-table th[data-sort-key="status"] a')
        expected = api_search(
            fleet, me.token, [], [{"parameter": "Status", "direction": direction}]
        )
        wait_for_rows(page, expected[:100])
        assert page.get_attribute('#pilot-table th[data-sort-key="status"]', "aria-sort") == aria
        assert "sort=status" in page.url
    statuses = page.locator("#pilot-table td[data-col=Status]").all_inner_texts()
    assert statuses == sorted(statuses, reverse=True)
    # the sort survives a search: the form carries it
    page.select_option("#pilot-search select[name=site]", "LCG.RAL.uk")
    expected = api_search(
        fleet,
        me.token,
        [eq("GridSite", "LCG.RAL.uk")],
        [{"parameter": "Status", "direction": "desc"}],
    )
    wait_for_rows(page, expected)
    assert "sort=status" in page.url
    assert marker_kept(page)
    page.reload()
    assert rows(page) == expected


def test_search_by_stamp_reference_and_job(operator: Login, fleet: Fleet, extra: Extra) -> None:
    page = operator("alice", "lhcb").page
    for field, value in (
        ("#search-stamp", extra.mine),
        ("#search-ref", extra.mine_ref),
        ("#search-job", str(extra.mine_job)),
    ):
        page.goto("/monitor/pilots")
        assert len(rows(page)) == 100
        set_marker(page)
        page.fill(field, value)
        page.press(field, "Enter")
        wait_for_rows(page, [extra.mine])
        assert marker_kept(page)
    assert f"job={extra.mine_job}" in page.url
    reference = page.inner_text(
        f'#pilot-table tr[data-stamp="{extra.mine}"] td[data-col=PilotJobReference]'
    )
    assert reference == extra.mine_ref
    # nothing found: said so
    page.fill("#search-job", "999999")
    page.press("#search-job", "Enter")
    page.wait_for_selector("#no-pilots")
    # a bad value is refused with its reason (a page of its own, without the script)
    response = page.goto("/monitor/pilots?stamp=not%20a%20stamp")
    assert response is not None
    assert response.status == HTTPStatus.BAD_REQUEST
    assert "stamp" in page.inner_text("main")


def test_another_vo_finds_none_of_them(operator: Login, fleet: Fleet, extra: Extra) -> None:
    me = operator("bob", "dteam")
    page = me.page
    page.goto("/monitor/pilots?sort=site&dir=asc")
    expected = api_search(fleet, me.token, [], [{"parameter": "GridSite", "direction": "asc"}])
    assert extra.theirs in expected
    assert rows(page) == expected
    assert set(page.locator("#pilot-table td[data-col=VO]").all_inner_texts()) == {"dteam"}
    html = page.content()
    assert not any(s in html for s in fleet.stamps["lhcb"])
    assert "LCG.CERN.ch" not in html
    for field, value in (
        ("#search-stamp", extra.mine),
        ("#search-ref", extra.mine_ref),
        ("#search-job", str(extra.mine_job)),
    ):
        page.goto("/monitor/pilots")
        page.fill(field, value)
        page.press(field, "Enter")
        page.wait_for_selector("#no-pilots")
        assert page.locator("#pilot-table").count() == 0
    page.goto(f"/monitor/pilots?job={extra.theirs_job}")
    assert rows(page) == [extra.theirs]
