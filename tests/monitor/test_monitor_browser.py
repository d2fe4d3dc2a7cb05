"""The pilot monitor in headless Chromium, as an operator uses it: log in by pasting a token,
read the matrix, filter it, open a pilot and its log, log out; a VO sees only its own pilots.

The server is real (uvicorn on loopback), its pilots registered and logging through the API
as a director and a pilot do. The numbers on the page are checked against the summary API for
the same caller, not against constants, so both read the same database. Screenshots of the
overview and of a pilot page are kept under test-artifacts/monitor/.
"""

from __future__ import annotations

import contextlib
import struct
import uuid
from collections.abc import Callable
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING

from tests.monitor.conftest import ARTIFACTS, LOG_LINES, WAIT_MS, Contexts, Fleet, Operator

if TYPE_CHECKING:
    from playwright.sync_api import Page

Cells = dict[tuple[str, str], int]
Login = Callable[[str, str], Operator]

#: The matrix as {(site, status): count} for every cell, plus the totals row, read from the DOM.
READ_MATRIX = """() => {
  const cells = [];
  for (const row of document.querySelectorAll("#matrix tbody tr[data-site]")) {
    for (const cell of row.querySelectorAll("td[data-status]")) {
      cells.push([row.dataset.site, cell.dataset.status, cell.textContent.trim()]);
    }
    cells.push([row.dataset.site, "", row.querySelector("td[data-total]").textContent.trim()]);
  }
  const totals = {};
  for (const cell of document.querySelectorAll("#matrix-totals td[data-status]")) {
    totals[cell.dataset.status] = cell.textContent.trim();
  }
  const grand = document.querySelector("#matrix-grand-total");
  return {cells: cells, totals: totals, grand: grand ? grand.textContent.trim() : null,
          empty: document.querySelector("#matrix-empty") !== null};
}"""


def read_matrix(page: Page) -> tuple[Cells, Cells, dict[str, int], int | None]:
    """(cells, row totals by site, column totals by status, grand total)."""
    raw = page.evaluate(READ_MATRIX)
    cells = {(site, status): int(text or 0) for site, status, text in raw["cells"] if status}
    rows = {(site, ""): int(text or 0) for site, status, text in raw["cells"] if not status}
    totals = {status: int(text or 0) for status, text in raw["totals"].items()}
    grand = int(raw["grand"] or 0) if raw["grand"] is not None else None
    return cells, rows, totals, grand


def nonzero(cells: Cells) -> Cells:
    return {k: v for k, v in cells.items() if v}


def assert_matrix_is(page: Page, expected: Cells) -> None:
    """Every cell, row total, column total and the grand total agree with `expected`."""
    cells, rows, totals, grand = read_matrix(page)
    assert nonzero(cells) == expected
    sites = {site for site, _ in expected}
    assert {site for site, _ in rows} == sites
    for site in sites:
        assert rows[(site, "")] == sum(n for (s, _), n in expected.items() if s == site)
    for status, total in totals.items():
        assert total == sum(n for (_, st), n in expected.items() if st == status), status
    assert grand == sum(expected.values())


def wait_for_matrix(page: Page, expected: Cells) -> None:
    """Wait until the matrix shows exactly the non-zero cells `expected` (after a fragment swap)."""
    want = [[site, status, n] for (site, status), n in expected.items()]
    page.wait_for_function(
        "want => { const m = ("
        + READ_MATRIX
        + """)();
          const key = c => JSON.stringify(c);
          const got = m.cells.filter(c => c[1] && Number(c[2] || 0) > 0)
                             .map(c => key([c[0], c[1], Number(c[2])])).sort();
          return JSON.stringify(got) === JSON.stringify(want.map(key).sort());
        }""",
        arg=want,
        timeout=WAIT_MS,
    )
    assert_matrix_is(page, expected)


def set_marker(page: Page) -> None:
    """A value only this document holds: gone after any full reload."""
    page.evaluate("() => { window.__marker = 'kept'; }")


def marker_kept(page: Page) -> bool:
    return bool(page.evaluate("() => window.__marker === 'kept'"))


def screenshot(page: Page, name: str) -> Path:
    """A full-page PNG under test-artifacts/monitor/, checked to be a real picture."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert width >= 1000
    assert height >= 400
    assert len(data) > 20_000  # a blank or error page compresses to far less
    return path


def stamps_on(page: Page) -> set[str]:
    return set(
        page.eval_on_selector_all(
            "#recent-failures tr[data-stamp]", "rows => rows.map(r => r.dataset.stamp)"
        )
    )


# --- tests ------------------------------------------------------------------------------------


def test_matrix_counts_equal_the_summary(operator: Login, fleet: Fleet) -> None:
    me = operator("alice", "lhcb")
    page, token = me.page, me.token
    assert page.inner_text("#whoami") == "alice · lhcb"
    expected = fleet.summary(token)
    assert {site for site, _ in expected} == {"LCG.CERN.ch", "LCG.RAL.uk"}
    assert_matrix_is(page, expected)
    statuses = page.eval_on_selector_all(
        "#matrix-totals td[data-status]", "cells => cells.map(c => c.dataset.status)"
    )
    assert statuses == [
        "Submitted",
        "Waiting",
        "Running",
        "Done",
        "Failed",
        "Aborted",
        "Deleted",
        "Unknown",
    ]
    # a cell with pilots links to the list of its pilots (test_monitor_pilot_list_browser.py)
    link = page.get_attribute('tr[data-site="LCG.CERN.ch"] td[data-status="Running"] a', "href")
    assert link is not None
    assert link.startswith("/monitor/pilots?")
    assert "site=LCG.CERN.ch" in link
    assert "status=Running" in link
    # the failures: newest first, with reason, each linking to its pilot page
    failures = stamps_on(page)
    assert fleet.failed_lhcb in failures
    assert failures <= set(fleet.stamps["lhcb"])
    row = page.locator(f'#recent-failures tr[data-stamp="{fleet.failed_lhcb}"]')
    assert "payload exit code 42" in row.inner_text()
    assert page.locator("svg#activity-chart[role=img] title").count() >= 1
    assert page.locator('svg#activity-chart rect[data-kind="submitted"]').count() >= 1
    assert page.locator("#queues-unreported").count() == 1  # no director reported queues here
    screenshot(page, "overview")
    with page.expect_navigation():
        row.locator(f'a[href="/monitor/pilots/{fleet.failed_lhcb}"]').click()
    assert page.inner_text('dd[data-field="Status"]') == "Failed"


def test_a_filter_narrows_the_matrix_without_a_reload(operator: Login, fleet: Fleet) -> None:
    me = operator("alice", "lhcb")
    page, token = me.page, me.token
    vo_choices = page.eval_on_selector_all(
        "#filters select[name=vo] option", "options => options.map(o => o.value)"
    )
    assert vo_choices == ["", "lhcb"]
    set_marker(page)

    page.select_option("#filters select[name=site]", "LCG.CERN.ch")
    wait_for_matrix(page, fleet.summary(token, GridSite="LCG.CERN.ch"))
    assert "site=LCG.CERN.ch" in page.url

    page.select_option("#filters select[name=status]", "Running")
    page.click("#apply-filters")
    expected = fleet.summary(token, GridSite="LCG.CERN.ch", Status="Running")
    assert expected == {("LCG.CERN.ch", "Running"): 3}
    wait_for_matrix(page, expected)
    assert "site=LCG.CERN.ch" in page.url
    assert "status=Running" in page.url
    # the failures follow the site but not the status (they are all Failed or Aborted)
    assert stamps_on(page) == {fleet.failed_lhcb}
    # a CE narrows further; one with nothing in this selection shows the empty-matrix note
    page.select_option("#filters select[name=ce]", "arc.ral.ac.uk")
    page.wait_for_selector("#matrix-empty")
    assert "ce=arc.ral.ac.uk" in page.url
    assert marker_kept(page)  # all of it without a page load

    # the narrowed URL is a page of its own: reloading it shows the same selection
    page.reload()
    assert not marker_kept(page)
    assert page.locator("#matrix-empty").count() == 1
    assert page.input_value("#filters select[name=site]") == "LCG.CERN.ch"


def test_a_pilot_page_shows_its_log_lines(operator: Login, fleet: Fleet) -> None:
    page = operator("alice", "lhcb").page
    page.goto(f"/monitor/pilots/{fleet.logger}")
    assert page.inner_text('dd[data-field="PilotStamp"]') == fleet.logger
    assert page.inner_text('dd[data-field="VO"]') == "lhcb"
    assert page.inner_text('dd[data-field="GridSite"]') == "LCG.RAL.uk"
    assert page.inner_text('dd[data-field="Status"]') == "Running"
    assert page.locator("#no-jobs").count() == 1

    lines = page.locator("#pilot-logs tbody tr.log-line")
    assert lines.count() == len(LOG_LINES)
    messages = page.eval_on_selector_all(
        "#pilot-logs tbody tr.log-line",
        """rows => rows.map(r => [r.className,
                                  r.querySelector("td.log-severity").textContent.trim(),
                                  r.querySelector("td.log-message").textContent.trim()])""",
    )
    assert [(sev, msg) for _, sev, msg in messages] == LOG_LINES  # in time order
    for classes, severity, _ in messages:
        assert f"severity-{severity}" in classes.split()
    errors = page.locator("#pilot-logs tr.log-line.severity-ERROR td.log-message")
    assert errors.all_inner_texts() == [m for s, m in LOG_LINES if s == "ERROR"]
    assert page.inner_text("#logs-range") == f"1\N{EN DASH}{len(LOG_LINES)} of {len(LOG_LINES)}"
    assert page.locator("#logs-next").count() == 0
    screenshot(page, "pilot")

    set_marker(page)
    page.fill("#log-filter", "matcher")
    page.press("#log-filter", "Enter")
    matching = [m for _, m in LOG_LINES if "matcher" in m]
    page.wait_for_function(
        "n => document.querySelectorAll('#pilot-logs tbody tr.log-line').length === n",
        arg=len(matching),
    )
    assert page.locator("td.log-message").all_inner_texts() == matching
    assert "q=matcher" in page.url
    assert marker_kept(page)

    page.fill("#log-filter", "no such words")
    page.press("#log-filter", "Enter")
    page.wait_for_selector("#no-logs")
    assert page.locator("tr.log-line").count() == 0


def test_a_user_of_another_vo_sees_none_of_its_pilots(operator: Login, fleet: Fleet) -> None:
    me = operator("bob", "dteam")
    page, token = me.page, me.token
    assert page.inner_text("#whoami") == "bob · dteam"
    expected = fleet.summary(token)
    assert {site for site, _ in expected} == {"LCG.DESY.de"}
    assert_matrix_is(page, expected)
    assert stamps_on(page) == {fleet.failed_dteam}
    html = page.content()
    for hidden in ("LCG.CERN.ch", "LCG.RAL.uk", "ce1.cern.ch", "arc.ral.ac.uk", "lhcb"):
        assert hidden not in html, hidden
    assert not any(stamp in html for stamp in fleet.stamps["lhcb"])
    vo_choices = page.eval_on_selector_all(
        "#filters select[name=vo] option", "options => options.map(o => o.value)"
    )
    assert vo_choices == ["", "dteam"]

    # asking for another VO's site or VO by URL shows nothing of it either
    page.goto("/monitor?site=LCG.CERN.ch")
    assert page.locator("#matrix-empty").count() == 1
    assert page.locator("#no-failures").count() == 1

    for stamp in (fleet.failed_lhcb, fleet.logger, uuid.uuid4().hex):
        response = page.goto(f"/monitor/pilots/{stamp}")
        assert response is not None
        assert response.status == HTTPStatus.NOT_FOUND
        assert page.inner_text("h1") == "Pilot not found"
        assert page.locator("#pilot-metadata").count() == 0
    fragment = page.request.get(f"/monitor/fragments/pilots/{fleet.logger}/logs")
    assert fragment.status == HTTPStatus.NOT_FOUND
    assert LOG_LINES[0][1] not in fragment.text()

    # the dteam pilot itself is there
    page.goto(f"/monitor/pilots/{fleet.failed_dteam}")
    assert page.inner_text('dd[data-field="VO"]') == "dteam"


def test_a_pilot_token_is_refused_at_the_login_form(contexts: Contexts, fleet: Fleet) -> None:
    context = contexts.new()
    page = context.new_page()
    page.goto("/monitor/login")
    page.fill("textarea#token", fleet.pilot_token)
    with page.expect_response(
        lambda r: r.url.endswith("/monitor/login") and r.request.method == "POST"
    ) as answer:
        page.click("#login-form button[type=submit]")
    # the contract says 401; the server answers 403 for a valid token of the wrong kind
    assert answer.value.status in (HTTPStatus.UNAUTHORIZED, HTTPStatus.FORBIDDEN)
    page.wait_for_selector("#login-error[role=alert]")
    assert page.url.endswith("/monitor/login")
    assert page.input_value("textarea#token") == ""  # the pasted token is not sent back
    assert "sd_monitor" not in {c["name"] for c in context.cookies()}
    page.goto("/monitor")
    page.wait_for_url("**/monitor/login")
    assert page.locator("#whoami").count() == 0


def test_auto_refresh_shows_a_pilot_registered_after_the_page_loaded(
    operator: Login, contexts: Contexts, fleet: Fleet
) -> None:
    me = operator("alice", "lhcb")
    page, token = me.page, me.token
    page.goto("/monitor?refresh=1")
    set_marker(page)
    assert page.locator('tr[data-site="LCG.PIC.es"]').count() == 0
    [(stamp, _)] = fleet.register("lhcb", "LCG.PIC.es", "ce.pic.es", "long", ["Failed"])
    page.wait_for_selector('tr[data-site="LCG.PIC.es"]')
    page.wait_for_selector(f'#recent-failures tr[data-stamp="{stamp}"]')
    assert marker_kept(page)
    assert int(page.get_attribute("body", "data-refreshes") or 0) >= 1
    assert_matrix_is(page, fleet.summary(token))
    assert "refresh=1" in page.url
    # the refreshed fragments are among the bodies scanned for credentials
    assert any("/monitor/fragments/overview" in url for url, _ in contexts.bodies)


def test_logout_ends_the_session(operator: Login, fleet: Fleet) -> None:
    page = operator("alice", "lhcb").page
    context = page.context
    assert "sd_monitor" in {c["name"] for c in context.cookies()}
    with page.expect_navigation():
        page.click("#logout button[type=submit]")
    page.wait_for_url("**/monitor/login")
    assert "sd_monitor" not in {c["name"] for c in context.cookies()}
    page.goto("/monitor")
    page.wait_for_url("**/monitor/login")
    assert page.locator("#login-form").count() == 1
    fragment = page.request.get("/monitor/fragments/overview")
    assert fragment.status == HTTPStatus.UNAUTHORIZED


def test_no_page_holds_a_secret_or_token(contexts: Contexts, fleet: Fleet) -> None:
    """Every HTML body a test's browser receives is scanned when the test ends (the `contexts`
    fixture); here a login and a walk through the pages, and the session cookie itself."""
    assert fleet.secrets
    assert fleet.pilot_token in fleet.tokens
    # this test's own pages: log in and walk the overview, a pilot and its log
    page = contexts.new().new_page()
    token = fleet.user_token("carol", "lhcb")
    page.goto("/monitor/login")
    page.fill("textarea#token", token)
    with page.expect_navigation():
        page.click("#login-form button[type=submit]")
    # each page in a tab of its own: navigating a tab away can discard the body of the page it
    # showed before the response handler reads it (seen once under load), and then that page
    # was neither seen nor scanned
    page.context.new_page().goto(f"/monitor/pilots/{fleet.logger}?q=matcher")
    page.goto("/monitor?status=Failed")
    cookie = next(c for c in page.context.cookies() if c["name"] == "sd_monitor")
    assert cookie["value"] != token
    assert cookie["httpOnly"]
    assert cookie["sameSite"] == "Strict"
    assert cookie["path"] == "/monitor"
    assert page.evaluate("() => document.cookie") == ""  # HttpOnly: not readable by a script
    seen = [url.removeprefix(fleet.live.url) for url, _ in contexts.bodies]
    assert "/monitor/login" in seen
    assert f"/monitor/pilots/{fleet.logger}?q=matcher" in seen
    assert "/monitor?status=Failed" in seen
    assert contexts.leaks() == []
    # and the scan does find a credential where there is one
    contexts.bodies.append(("planted", f"<p>{fleet.secrets[0]}</p>"))
    assert contexts.leaks() == ["planted"]
    contexts.bodies.pop()


def test_a_late_answer_for_an_older_filter_never_replaces_the_newer_one(
    operator: Login, fleet: Fleet
) -> None:
    """Hold back the answer for "site" while the operator adds "status": when the held answer
    is finally let through, the matrix must still be the one of the URL's selection."""
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import Route

    me = operator("alice", "lhcb")
    page, token = me.page, me.token
    held: list[Route] = []

    def hold_site_only(route: Route) -> None:
        url = route.request.url
        if "site=LCG.CERN.ch" in url and "status=" not in url:
            held.append(route)
        else:
            route.continue_()

    page.route("**/monitor/fragments/overview*", hold_site_only)
    page.select_option("#filters select[name=site]", "LCG.CERN.ch")
    page.wait_for_function("() => location.search.includes('site=')", timeout=WAIT_MS)
    page.select_option("#filters select[name=status]", "Running")
    newest = fleet.summary(token, GridSite="LCG.CERN.ch", Status="Running")
    wait_for_matrix(page, newest)
    assert held, "the older request was never made"
    for route in held:
        # the page may have aborted it already: that is the fix at work
        with contextlib.suppress(PlaywrightError):
            route.continue_()
    page.wait_for_function(
        "() => Number(document.body.dataset.discarded || 0) >= 1", timeout=WAIT_MS
    )
    assert nonzero(read_matrix(page)[0]) == newest
    assert "status=Running" in page.url
