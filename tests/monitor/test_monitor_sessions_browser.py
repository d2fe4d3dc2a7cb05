"""Monitor sessions in headless Chromium: a logout ends the session on the server, and another
site's page cannot log an operator in or out (the monitor's own forms, tested in
test_monitor_browser.py, still work)."""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus
from typing import TYPE_CHECKING

from tests.monitor.conftest import Contexts, Fleet, Operator

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, Route

Login = Callable[[str, str], Operator]
EVIL = "http://evil.test"


def serve_evil_page(context: BrowserContext, action: str, token: str = "") -> None:
    """A page on another site (answered by the browser itself: nothing leaves the machine)
    with a form that posts to the monitor, as a forger would have it."""
    field = f'<input type="hidden" name="token" value="{token}">' if token else ""
    html = (
        f'<!doctype html><form id="forged" method="post" action="{action}">{field}'
        '<button type="submit">Win a prize</button></form>'
    )

    def answer(route: Route) -> None:
        route.fulfill(status=HTTPStatus.OK, content_type="text/html", body=html)

    context.route(f"{EVIL}/**", answer)


def test_a_cookie_copied_before_logout_is_refused_after_it(
    operator: Login, contexts: Contexts, fleet: Fleet
) -> None:
    page = operator("alice", "lhcb").page
    [copied] = [c for c in page.context.cookies() if c["name"] == "sd_monitor"]
    with page.expect_navigation():
        page.click("#logout button[type=submit]")
    page.wait_for_url("**/monitor/login")
    elsewhere = contexts.new()
    elsewhere.add_cookies(
        [{"name": copied["name"], "value": copied["value"], "url": f"{fleet.live.url}/monitor"}]
    )
    fragment = elsewhere.request.get("/monitor/fragments/overview")
    assert fragment.status == HTTPStatus.UNAUTHORIZED


def test_another_sites_form_cannot_log_in(contexts: Contexts, fleet: Fleet) -> None:
    context = contexts.new()
    serve_evil_page(context, f"{fleet.live.url}/monitor/login", fleet.live.token("mallory"))
    page = context.new_page()
    page.goto(f"{EVIL}/")
    with page.expect_response(
        lambda r: r.url.endswith("/monitor/login") and r.request.method == "POST"
    ) as answer:
        page.click("#forged button[type=submit]")
    assert answer.value.status == HTTPStatus.FORBIDDEN
    assert "Cross-site request refused" in answer.value.text()
    assert "sd_monitor" not in {c["name"] for c in context.cookies()}


def test_another_sites_form_cannot_log_out(operator: Login, fleet: Fleet) -> None:
    page = operator("alice", "lhcb").page
    serve_evil_page(page.context, f"{fleet.live.url}/monitor/logout")
    page.goto(f"{EVIL}/")
    with page.expect_response(
        lambda r: r.url.endswith("/monitor/logout") and r.request.method == "POST"
    ) as answer:
        page.click("#forged button[type=submit]")
    assert answer.value.status == HTTPStatus.FORBIDDEN
    fragment = page.context.request.get("/monitor/fragments/overview")
    assert fragment.status == HTTPStatus.OK  # still logged in
