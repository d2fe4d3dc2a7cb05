"""Ban controls in headless Chromium, as a site manager uses them: "ban CE…" on a queue row,
a reason on the confirmation page, the ban on the row, in "Bans in force" and through
`GET /api/bans`; then "allow…" lifts it. A reader of the VO sees the ban but no control; a
user of another VO sees nothing of it."""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import pytest

from server.identity import NORMAL_USER, SITE_MANAGER
from tests.monitor.conftest import PLAN, Contexts, Fleet, Operator, log_in
from tests.monitor.test_monitor_browser import screenshot

if TYPE_CHECKING:
    from playwright.sync_api import Page

Login = Callable[[str, str], Operator]
#: the queue row whose CE is banned, and the row of the same site's other CE (not covered)
BANNED = ("LCG.CERN.ch", "ce1.cern.ch", "long")
OTHER_CE = "ce2.cern.ch/short"
REASON = "CE drained for the kernel upgrade <b>not bold</b>"


def report_queues(fleet: Fleet) -> None:
    """Every queue of the plan reported by its VO's director, so the Queues table has rows."""
    for vo in sorted({p[0] for p in PLAN}):
        director = fleet.live.director_token if vo == "lhcb" else fleet.dteam_director
        fleet.tokens.append(director)
        queues = [
            {
                "queue_key": f"{site}/{ce}/{queue}",
                "vo": vo,
                "site": site,
                "ce": ce,
                "queue": queue,
                "ce_kind": "htcondor",
                "max_total_pilots": 10,
                "max_waiting_pilots": 5,
                "pilots_per_cycle": 3,
                "enabled": True,
            }
            for v, site, ce, queue, _ in PLAN
            if v == vo
        ]
        with fleet.api(director) as client:
            r = client.put("/api/director/queues", json={"queues": queues})
        assert r.status_code < HTTPStatus.MULTIPLE_CHOICES, r.text


@pytest.fixture(scope="module")
def reported(fleet: Fleet) -> Fleet:
    report_queues(fleet)
    return fleet


def bans_api(fleet: Fleet, token: str) -> list[dict[str, Any]]:
    with fleet.api(token) as client:
        r = client.get("/api/bans")
    assert r.status_code == HTTPStatus.OK, r.text
    bans: list[dict[str, Any]] = r.json()
    return bans


def overview(page: Page) -> None:
    page.goto("/monitor?refresh=0")
    page.locator("#queue-table").wait_for()


def test_ban_a_ce_from_its_queue_row_then_allow_it(
    contexts: Contexts, reported: Fleet, operator: Login
) -> None:
    fleet = reported
    site, ce, queue = BANNED
    token = fleet.live.token("sam", "lhcb", [NORMAL_USER, SITE_MANAGER])
    fleet.tokens.append(token)
    page = contexts.new().new_page()
    log_in(page, token)
    overview(page)
    row = page.locator(f'#queue-table tr[data-queue="{ce}/{queue}"]')
    assert "active" in row.inner_text()
    assert page.locator("#no-bans").is_visible()
    assert page.locator("a.ban-control[data-ban-site]").count() == 2  # CERN and RAL rows

    with page.expect_navigation():
        row.get_by_role("link", name="ban CE…").click()
    assert "/monitor/bans/new?" in page.url
    assert f"{site}/{ce}" in page.locator("h1").inner_text()
    assert page.locator("h1").inner_text().startswith("Ban CE")
    assert bans_api(fleet, token) == []  # a confirmation page changes nothing
    assert page.locator("#ban-form select[name=vo]").input_value() == "lhcb"
    page.fill("#ban-form input[name=reason]", REASON)
    with page.expect_navigation():
        page.click("#confirm-ban")
    page.wait_for_url("**/monitor#bans")
    page.locator("#ban-table").wait_for()

    # the row shows the ban (the reason as text), the same site's other CE stays active
    row = page.locator(f'#queue-table tr[data-queue="{ce}/{queue}"]')
    state = row.locator("span.state-banned")
    assert state.get_attribute("data-banned") == f"{site}/{ce}"
    assert REASON in state.inner_text()
    assert "by sam" in row.inner_text()
    assert row.locator("span.state-banned b").count() == 0
    assert row.locator("a.ban-control").count() == 0
    assert row.locator("a.allow-control").count() == 1
    other = page.locator(f'#queue-table tr[data-queue="{OTHER_CE}"]')
    assert "active" in other.inner_text()
    assert other.locator("a.ban-control").count() == 2
    # ... and "Bans in force" lists it
    listed = page.locator("#ban-table tbody tr")
    assert listed.count() == 1
    cells = listed.first.inner_text()
    assert f"{site}/{ce}" in cells
    assert "lhcb" in cells
    assert REASON in cells
    assert "sam" in cells
    assert "until allowed" in cells
    screenshot(page, "bans")

    # ... and the API has it
    [ban] = bans_api(fleet, token)
    assert (ban["vo"], ban["site"], ban["ce"], ban["queue"]) == ("lhcb", site, ce, None)
    assert (ban["reason"], ban["banned_by"], ban["active"]) == (REASON, "sam", True)
    assert listed.first.get_attribute("data-ban") == str(ban["ban_id"])

    # a plain reader of lhcb sees the ban, but no control anywhere
    reader = operator("rita", "lhcb")
    overview(reader.page)
    r_row = reader.page.locator(f'#queue-table tr[data-queue="{ce}/{queue}"]')
    assert REASON in r_row.locator("span.state-banned").inner_text()
    assert reader.page.locator("#ban-table tbody tr").count() == 1
    assert reader.page.locator("a.ban-control, a.allow-control, td.ban-controls").count() == 0
    assert reader.page.locator("#queue-table th", has_text="Ban").count() == 0
    # a CE ban leaves the site's row of the matrix unmarked (only whole-site bans show there)
    assert reader.page.locator('#matrix tr[data-site="LCG.CERN.ch"] [data-banned]').count() == 0
    screenshot(reader.page, "bans-reader")
    assert len(bans_api(fleet, reader.token)) == 1

    # a dteam user sees no lhcb ban: not on the page, not through the API
    other_vo = operator("dora", "dteam")
    overview(other_vo.page)
    assert other_vo.page.locator("#no-bans").is_visible()
    assert other_vo.page.locator("#ban-table").count() == 0
    assert other_vo.page.locator(".state-banned").count() == 0
    assert REASON not in other_vo.page.content()
    assert other_vo.page.locator('#queue-table tr[data-queue="ce.desy.de/short"]').count() == 1
    assert bans_api(fleet, other_vo.token) == []

    # allow it again, from the row
    with page.expect_navigation():
        row.locator("a.allow-control").click()
    assert "/monitor/bans/allow?" in page.url
    assert f"{site}/{ce}" in page.locator("h1").inner_text()
    assert len(bans_api(fleet, token)) == 1  # the confirmation page changes nothing
    with page.expect_navigation():
        page.click("#confirm-allow")
    page.wait_for_url("**/monitor#bans")
    page.locator("#no-bans").wait_for()
    row = page.locator(f'#queue-table tr[data-queue="{ce}/{queue}"]')
    assert row.locator("span.state-banned").count() == 0
    assert "active" in row.inner_text()
    assert row.locator("a.ban-control").count() == 2
    assert bans_api(fleet, token) == []
    with fleet.api(token) as client:
        r = client.get("/api/bans", params={"history": "true"})
    assert r.status_code == HTTPStatus.OK, r.text
    [lifted] = r.json()
    assert (lifted["active"], lifted["allowed_by"]) == (False, "sam")
