"""Kill and fetch-output controls in headless Chromium, as an operator uses them: tick pilots
in the list, confirm with a reason, see the requests; from a pilot's page ask for its output
and, once its director uploaded it, read it beside the log lines. A reader without the
Operator property gets no control."""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from server.identity import OPERATOR
from tests.monitor.conftest import Contexts, Fleet, Operator, log_in

if TYPE_CHECKING:
    from playwright.sync_api import Page

Login = Callable[[str, str], Operator]
QUEUE = {"vo": "lhcb", "site": "LCG.CERN.ch", "ce": "ce2.cern.ch", "queue": "short"}


def operator_page(contexts: Contexts, fleet: Fleet, sub: str = "olivia") -> tuple[Page, str]:
    token = fleet.live.token(sub, "lhcb", [OPERATOR])
    fleet.tokens.append(token)
    page = contexts.new().new_page()
    log_in(page, token)
    return page, token


def api_get(fleet: Fleet, token: str, path: str, **params: str) -> Any:
    with fleet.api(token) as client:
        r = client.get(path, params=params)
    assert r.status_code == HTTPStatus.OK, r.text
    return r.json()


def test_tick_pilots_confirm_and_they_are_asked_killed(contexts: Contexts, fleet: Fleet) -> None:
    page, token = operator_page(contexts, fleet)
    page.goto(f"/monitor/pilots?{urlencode(QUEUE)}&refresh=0")
    rows = page.locator("#pilot-table tbody tr")
    assert rows.count() == 3  # Submitted, Waiting, Running
    chosen = [rows.nth(i).get_attribute("data-stamp") for i in (0, 1)]
    for stamp in chosen:
        page.check(f"input[type=checkbox][value='{stamp}']")
    with page.expect_navigation():
        page.click("#kill-selected")
    assert "/monitor/kills/new?" in page.url
    listed = page.locator("#kill-pilots li")
    assert listed.count() == 2
    assert api_get(fleet, token, "/api/pilots/kills") == []  # a confirmation changes nothing
    page.fill("#kill-form input[name=reason]", "stuck in a black hole")
    with page.expect_navigation():
        page.click("#confirm-kill")
    assert page.locator("h1").inner_text() == "Kill requested"
    states = page.locator("#requests-made td[data-col=state]").all_inner_texts()
    assert states == ["requested", "requested"]
    stored = api_get(fleet, token, "/api/pilots/kills")
    assert {k["pilot_stamp"] for k in stored} == set(chosen)
    assert {k["requested_by"] for k in stored} == {"olivia"}
    assert {k["reason"] for k in stored} == {"stuck in a black hole"}

    # the queue control names every live pilot of the queue
    page.goto(f"/monitor/pilots?{urlencode(QUEUE)}&refresh=0")
    with page.expect_navigation():
        page.click("#kill-queue")
    assert "every live pilot" in page.locator("h1").inner_text()
    page.fill("#kill-form input[name=reason]", "drain the queue")
    with page.expect_navigation():
        page.click("#confirm-kill")
    assert page.locator("#requests-made tbody tr").count() == 3


def test_fetch_output_from_the_pilot_page_and_read_it(contexts: Contexts, fleet: Fleet) -> None:
    page, _ = operator_page(contexts, fleet, "oscar")
    stamp = fleet.failed_lhcb
    page.goto(f"/monitor/pilots/{stamp}?refresh=0")
    assert page.locator("#no-output").is_visible()
    assert page.locator("#kill-pilot").count() == 0  # Failed: already ended
    with page.expect_navigation():
        page.click("#fetch-output")
    with page.expect_navigation():
        page.click("#confirm-output")
    assert page.locator("h1").inner_text() == "Output fetch requested"

    with fleet.api(fleet.live.director_token) as director:
        pending = director.get("/api/pilots/output-requests", params={"state": "pending"})
        assert [r["pilot_stamp"] for r in pending.json()] == [stamp]
        r = director.put(
            "/api/pilots/output",
            json={
                "pilot_stamp": stamp,
                "std_output": "<img src=x onerror=alert(1)>payload exit code 42\n",
                "std_error": "Traceback (most recent call last): boom\n",
                "ce_log": "job 1234.0 exited with status 42",
            },
        )
        assert r.status_code == HTTPStatus.OK, r.text

    page.goto(f"/monitor/pilots/{stamp}?refresh=0")
    out = page.locator("#output-std_output")
    assert out.inner_text().startswith("<img src=x onerror=alert(1)>")  # text, not markup
    assert page.locator("#pilot-output img").count() == 0
    assert "boom" in page.locator("#output-std_error").inner_text()
    assert "status 42" in page.locator("#output-ce_log").inner_text()
    # beside the log lines: the two sections side by side on a wide screen
    log_box = page.locator("#logs-heading").bounding_box()
    output_box = page.locator("#output-heading").bounding_box()
    assert log_box is not None
    assert output_box is not None
    assert output_box["x"] > log_box["x"]
    assert abs(output_box["y"] - log_box["y"]) < 5
    row = page.locator("#pilot-requests tr[data-kind=output]")
    assert "done" in row.inner_text()


def test_a_reader_has_no_control(operator: Login, fleet: Fleet) -> None:
    reader = operator("rita", "lhcb")
    reader.page.goto(f"/monitor/pilots?{urlencode(QUEUE)}&refresh=0")
    assert reader.page.locator("#pilot-table tbody tr").count() == 3
    assert reader.page.locator("#pilot-actions").count() == 0
    assert reader.page.locator("input[type=checkbox]").count() == 0
    reader.page.goto(f"/monitor/pilots/{fleet.logger}?refresh=0")
    assert reader.page.locator("#pilot-controls").count() == 0
