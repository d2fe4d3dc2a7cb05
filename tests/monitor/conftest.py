"""The pilot monitor in a real headless Chromium, against a live server seeded through its API.

The browser is Debian's `/usr/bin/chromium` driven by Playwright (never `playwright install`:
nothing is downloaded). One browser and one seeded server per module; each operator
gets a browser context of their own, so sessions (cookies) never mix. Without Chromium or
Playwright the tests skip, and in CI (SITE_DIRECTOR_REQUIRE_INFRA=1) they fail.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from server.identity import NORMAL_USER, TRUSTED_HOST
from tests.conftest import LiveServer, missing, start_live_server

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page, Response

CHROMIUM = Path("/usr/bin/chromium")
#: Chromium as root in a sandbox-less container, with nothing that calls home: without these it
#: retries the (closed) network for QUIC, components, sync and field trials. Playwright adds
#: --headless and a fresh --user-data-dir of its own for every launch.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "monitor"
LOGS = "/api/pilots/internal/message"
#: Playwright's waits (ms): generous, as a loaded CI machine is slow; a pass never waits this long.
WAIT_MS = 15_000

#: (VO, GridSite, CE, queue, statuses of its pilots): two VOs, three sites, a site with two CEs.
PLAN: list[tuple[str, str, str, str, list[str]]] = [
    ("lhcb", "LCG.CERN.ch", "ce1.cern.ch", "long", ["Running", "Running", "Done", "Failed"]),
    ("lhcb", "LCG.CERN.ch", "ce2.cern.ch", "short", ["Submitted", "Waiting", "Running"]),
    ("lhcb", "LCG.RAL.uk", "arc.ral.ac.uk", "grid", ["Waiting", "Aborted", "Done", "Done"]),
    ("dteam", "LCG.DESY.de", "ce.desy.de", "short", ["Running", "Failed", "Deleted"]),
]
LOG_LINES = [
    ("INFO", "installing DIRAC v9.0"),
    ("INFO", "checking the CVMFS repositories"),
    ("ERROR", "cannot reach the matcher at dirac.example.org"),
    ("WARNING", "retrying in 30 s"),
    ("ERROR", "matcher refused the pilot: no job for this site"),
    ("INFO", "pilot ends after 3 matcher attempts"),
]


@dataclass
class Fleet:
    """What was registered, and every credential that must never appear on a page."""

    live: LiveServer
    stamps: dict[str, list[str]] = field(default_factory=dict)
    logger: str = ""
    failed_lhcb: str = ""
    failed_dteam: str = ""
    pilot_token: str = ""
    secrets: list[str] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)

    def user_token(self, sub: str, vo: str) -> str:
        token = self.live.token(sub, vo, [NORMAL_USER])
        self.tokens.append(token)
        return token

    def api(self, token: str) -> httpx.Client:
        return httpx.Client(
            base_url=self.live.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        )

    def summary(self, token: str, **filters: str) -> dict[tuple[str, str], int]:
        """`POST /api/pilots/summary` by GridSite and Status, as the matrix must show it."""
        search = [{"parameter": k, "operator": "eq", "value": v} for k, v in filters.items()]
        with self.api(token) as client:
            r = client.post(
                "/api/pilots/summary", json={"grouping": ["GridSite", "Status"], "search": search}
            )
        assert r.status_code == HTTPStatus.OK, r.text
        return {(x["GridSite"], x["Status"]): x["count"] for x in r.json()}

    def register(
        self, vo: str, site: str, ce: str, queue: str, statuses: list[str]
    ) -> list[tuple[str, str]]:
        """Bulk-register pilots with a bound secret each, then set their statuses as a director
        does; returns (stamp, secret) pairs."""
        director = self.live.director_token if vo == "lhcb" else self.dteam_director
        self.tokens.append(director)
        stamps = [uuid.uuid4().hex for _ in statuses]
        with self.api(director) as client:
            r = client.post(
                "/api/pilots/bulk",
                json={
                    "vo": vo,
                    "mint_secrets": True,
                    "secret_constraints": {"expiration_minutes": 60},
                    "pilots": [
                        {
                            "pilot_stamp": s,
                            "grid_site": site,
                            "destination_site": ce,
                            "queue": queue,
                        }
                        for s in stamps
                    ],
                },
            )
            assert r.status_code == HTTPStatus.CREATED, r.text
            secrets = [x["pilot_secret"] for x in r.json()["secrets"]]
            updates: dict[str, dict[str, Any]] = {}
            for s, status in zip(stamps, statuses, strict=True):
                if status == "Submitted":
                    continue
                update: dict[str, Any] = {"Status": status}
                if status in ("Failed", "Aborted"):
                    update["StatusReason"] = f"{status} at {ce}: payload exit code 42"
                updates[s] = update
            if updates:
                r = client.patch("/api/pilots/metadata", json=updates)
                assert r.status_code == HTTPStatus.NO_CONTENT, r.text
        self.secrets += secrets
        self.stamps.setdefault(vo, []).extend(stamps)
        return list(zip(stamps, secrets, strict=True))

    @property
    def dteam_director(self) -> str:
        return self.live.token("director-dteam", "dteam", [TRUSTED_HOST])


def _send_logs(fleet: Fleet, stamp: str, secret: str) -> None:
    """As a real pilot: exchange the stamp's secret for a token, then post a batch of lines."""
    with httpx.Client(base_url=fleet.live.url, timeout=30) as anonymous:
        r = anonymous.post(
            "/api/auth/secret-exchange", json={"pilot_stamp": stamp, "pilot_secret": secret}
        )
    assert r.status_code == HTTPStatus.OK, r.text
    fleet.pilot_token = r.json()["access_token"]
    fleet.tokens.append(fleet.pilot_token)
    lines = [
        {
            "timestamp": f"2026-11-28T10:00:{i:02d}.000000Z",
            "severity": severity,
            "message": message,
            "scope": "Pilot",
        }
        for i, (severity, message) in enumerate(LOG_LINES)
    ]
    with fleet.api(fleet.pilot_token) as client:
        r = client.post(LOGS, json={"pilot_stamp": stamp, "lines": lines})
    assert r.status_code == HTTPStatus.NO_CONTENT, r.text


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """A live server of its own (fresh SQLite), so every count on the page is known."""
    live = start_live_server(tmp_path_factory.mktemp("monitor-live"))
    try:
        fleet = Fleet(live)
        for vo, site, ce, queue, statuses in PLAN:
            pairs = fleet.register(vo, site, ce, queue, statuses)
            for (stamp, _), status in zip(pairs, statuses, strict=True):
                if status == "Failed":
                    if vo == "lhcb":
                        fleet.failed_lhcb = fleet.failed_lhcb or stamp
                    else:
                        fleet.failed_dteam = fleet.failed_dteam or stamp
        # the pilot with log lines: a running lhcb pilot at RAL
        [(fleet.logger, secret)] = fleet.register(
            "lhcb", "LCG.RAL.uk", "arc.ral.ac.uk", "grid", ["Running"]
        )
        _send_logs(fleet, fleet.logger, secret)
        yield fleet
    finally:
        live.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless Chromium per module (Debian's; Playwright only drives it).

    Not per session: while Playwright's sync API is open, its event loop counts as running in
    the main thread, and every async test after it would fail with "Runner.run() cannot be
    called from a running event loop". Closed at the module's end, it leaves no trace.
    """
    if not CHROMIUM.exists():
        missing(f"{CHROMIUM} is not installed (Debian packages chromium, chromium-driver)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("the Python package playwright is not installed (pip install -e '.[test]')")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()


@dataclass
class Contexts:
    """Browser contexts (one per operator: own cookies), and every HTML body the server sent
    them, pages and fragments alike, to be searched for credentials."""

    browser: Browser
    fleet: Fleet
    opened: list[BrowserContext] = field(default_factory=list)
    bodies: list[tuple[str, str]] = field(default_factory=list)

    def new(self) -> BrowserContext:
        context = self.browser.new_context(
            base_url=self.fleet.live.url, viewport={"width": 1280, "height": 900}
        )
        context.set_default_timeout(WAIT_MS)
        context.on("response", self._keep)
        self.opened.append(context)
        return context

    def _keep(self, response: Response) -> None:
        from playwright.sync_api import Error as PlaywrightError

        if "text/html" not in response.headers.get("content-type", ""):
            return
        with contextlib.suppress(PlaywrightError):  # a redirect, or a page left: no body
            self.bodies.append((response.url, response.text()))

    def leaks(self) -> list[str]:
        """URLs of the HTML bodies that hold a secret or token of the fleet."""
        credentials = [*self.fleet.secrets, *self.fleet.tokens]
        return [url for url, body in self.bodies if any(c in body for c in credentials)]


@pytest.fixture
def contexts(browser: Browser, fleet: Fleet) -> Iterator[Contexts]:
    made = Contexts(browser, fleet)
    yield made
    for context in made.opened:
        context.close()
    assert made.leaks() == []


def log_in(page: Page, token: str) -> None:
    """As an operator: open the monitor, get sent to the form, paste the token, submit."""
    page.goto("/monitor")
    page.wait_for_url("**/monitor/login")
    page.fill("textarea#token", token)
    with page.expect_navigation():
        page.click("#login-form button[type=submit]")
    page.wait_for_url("**/monitor")


@dataclass
class Operator:
    """A browser page logged in with `token`; the same token asks the API for comparison."""

    page: Page
    token: str


@pytest.fixture
def operator(contexts: Contexts, fleet: Fleet) -> Callable[[str, str], Operator]:
    """Log in as `sub` of `vo` (a NormalUser token pasted into the form), in a fresh context."""

    def make(sub: str, vo: str) -> Operator:
        token = fleet.user_token(sub, vo)
        page = contexts.new().new_page()
        log_in(page, token)
        return Operator(page, token)

    return make
