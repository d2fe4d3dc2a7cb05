"""The ban list's second source against the real DiracX 0.7.0: its RSS router on its own
ResourceStatusDB, which the test fills directly (DiracX has no route that writes statuses),
and a director on our live server submitting to local CEs at five sites.

DiracX is installed and started with the benchmarks' machinery (`bench/diracx_baseline.py`:
a venv from PyPI, cached under ~/.cache/site-director-bench, a minute the first time), with
the RSS router on and a ResourceStatusDB on SQLite. Without it the test skips, and fails under
SITE_DIRECTOR_REQUIRE_INFRA=1.
"""

from __future__ import annotations

import logging
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from director.cycle.outcomes import QueueOutcome
from director.loop import Director
from tests.conftest import LiveServer, missing
from tests.director.conftest import queue_block, settings_for, write_config

BENCH = Path(__file__).resolve().parents[2] / "bench"
VO = "lhcb"


@dataclass
class RSS:
    """A running DiracX 0.7.0 with the RSS router, its ResourceStatusDB file and a token."""

    url: str
    db: Path
    token: str

    def set_site(self, name: str, status: str, reason: str = "", vo: str = "all") -> None:
        self._write("SiteStatus", name, status, reason, vo, "Site")

    def set_ce(self, name: str, status: str, reason: str = "", vo: str = "all") -> None:
        # DiracX 0.7.0 lists compute elements of ElementType "ComputeElement" only
        self._write("ResourceStatus", name, status, reason, vo, "ComputeElement")

    def _write(
        self, table: str, name: str, status: str, reason: str, vo: str, element: str
    ) -> None:
        # DateEffective must advance: DiracX's cache revision is (max(DateEffective), count)
        now = (datetime.now(UTC) + timedelta(seconds=1)).strftime("%Y-%m-%d %H:%M:%S.%f")
        with sqlite3.connect(self.db) as conn:
            conn.execute(
                f'INSERT OR REPLACE INTO "{table}" (Name, StatusType, VO, Status, Reason, '  # noqa: S608
                "DateEffective, TokenExpiration, ElementType, LastCheckTime, TokenOwner) "
                "VALUES (?, 'all', ?, ?, ?, ?, '9999-12-31 23:59:59.000000', ?, ?, 'rs_svc')",
                (name, vo, status, reason, now, element, now),
            )

    def statuses(self, kind: str) -> dict[str, Any]:
        r = httpx.get(
            f"{self.url}/api/rss/{kind}", headers={"Authorization": f"Bearer {self.token}"}
        )
        assert r.status_code == 200, r.text
        result: dict[str, Any] = r.json()
        return result

    def wait_for(self, kind: str, name: str, allowed: bool, timeout: float = 60.0) -> None:
        """DiracX serves a cached snapshot and rereads it in the background (5 s soft TTL):
        ask until the change shows."""
        deadline = time.monotonic() + timeout
        while self.statuses(kind).get(name, {}).get("all", {}).get("allowed") is not allowed:
            assert time.monotonic() < deadline, f"DiracX never showed {kind} {name} {allowed}"
            time.sleep(0.5)


@pytest.fixture(scope="module")
def diracx_rss(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RSS]:
    sys.path.insert(0, str(BENCH))
    try:
        import diracx_baseline as baseline
    finally:
        sys.path.remove(str(BENCH))
    try:
        venv = baseline.ensure_venv()
    except (OSError, subprocess.CalledProcessError) as exc:
        missing(f"DiracX 0.7.0 cannot be installed from PyPI: {exc}")
    work = tmp_path_factory.mktemp("diracx-rss")
    try:
        dx = baseline.configure(work, venv=venv)
        db = work / "rss.db"
        dx.env["DIRACX_SERVICE_RSS_ENABLED"] = "true"
        dx.env["DIRACX_DB_URL_RESOURCESTATUSDB"] = f"sqlite+aiosqlite:///{db}"
        # DiracX's own schema for the ResourceStatusDB (and only it: the others exist)
        only_rss = {
            k: v
            for k, v in dx.env.items()
            if not k.startswith("DIRACX_DB_URL_") or k.endswith("RESOURCESTATUSDB")
        }
        subprocess.run(
            [str(venv / "bin" / "python"), "-m", "diracx.db", "init-sql"],
            check=True,
            capture_output=True,
            env=only_rss,
        )
        server = dx.start()
    except (OSError, subprocess.CalledProcessError, RuntimeError, TimeoutError) as exc:
        missing(f"DiracX 0.7.0 does not start: {exc}")
    with server:
        yield RSS(url=dx.url, db=db, token=dx.token(sub="bench-admin"))


def by_queue(outcomes: list[QueueOutcome]) -> dict[str, QueueOutcome]:
    return {o.queue.rsplit("/", 1)[1]: o for o in outcomes}


async def test_dirac_x_resource_status_decides_which_queues_submit(
    diracx_rss: RSS,
    live_server_tls: LiveServer,
    tmp_path: Path,
    make_director: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    uid = uuid.uuid4().hex[:8]
    good, down, other_vo, unlisted = (
        f"Test.Good-{uid}.org",
        f"Test.Down-{uid}.org",
        f"Test.OtherVO-{uid}.org",
        f"Test.Unlisted-{uid}.org",
    )
    ce_ok, ce_drained = f"ce-ok-{uid}.example", f"ce-drained-{uid}.example"
    diracx_rss.set_site(good, "Active")
    diracx_rss.set_site(down, "Banned", "Site in downtime")
    diracx_rss.set_site(other_vo, "Banned", "dteam only", vo="dteam")
    diracx_rss.set_ce(ce_ok, "Active")
    diracx_rss.set_ce(ce_drained, "Banned", "CE drained for upgrade")
    diracx_rss.wait_for("compute", ce_drained, allowed=False)
    diracx_rss.wait_for("site", down, allowed=False)

    token_file = tmp_path / "diracx.token"
    token_file.write_text(diracx_rss.token + "\n")
    path, _ = write_config(
        tmp_path,
        server_url=live_server_tls.url,
        ca_file=live_server_tls.ca_file,
        token=live_server_tls.director_token,
        director={"resource_status": {"url": diracx_rss.url, "token_file": str(token_file)}},
    )
    config = yaml.safe_load(path.read_text())
    local = {"kind": "local", "slots": 4}
    q = queue_block(pilots_per_cycle=1)
    config["sites"] = {
        good: {
            "ces": {
                ce_ok: {"ce": local, "queues": {"allowed": q}},
                ce_drained: {"ce": local, "queues": {"ce-banned": q}},
            }
        },
        down: {"ces": {f"ce-{uid}.down": {"ce": local, "queues": {"site-banned": q}}}},
        other_vo: {"ces": {f"ce-{uid}.other": {"ce": local, "queues": {"other-vo": q}}}},
        unlisted: {"ces": {f"ce-{uid}.unlisted": {"ce": local, "queues": {"unlisted": q}}}},
    }
    path.write_text(yaml.safe_dump(config))
    director: Director = make_director(settings_for(path))
    caplog.set_level(logging.INFO, logger="director")

    for _ in range(2):
        outcomes = by_queue(await director.run_cycle())
        submitted = {name: o.submitted for name, o in outcomes.items()}
        assert submitted == {
            "allowed": 1,
            "ce-banned": 0,
            "site-banned": 0,
            "other-vo": 1,  # banned for dteam only; the token is lhcb's
            "unlisted": 1,  # no status: no opinion (unlisted: submit)
        }, {name: o.why for name, o in outcomes.items()}
        assert outcomes["ce-banned"].why == (
            f"not allowed by DiracX resource status (CE {ce_drained}): CE drained for upgrade"
        )
        assert outcomes["site-banned"].why == (
            f"not allowed by DiracX resource status (site {down}): Site in downtime"
        )
        assert outcomes["ce-banned"].error is None
    refusals = [
        r.getMessage()
        for r in caplog.records
        if r.name == "director.resource_status" and r.levelno == logging.WARNING
    ]
    assert len(refusals) == 2, refusals  # once each, not once per cycle
    assert any(ce_drained in m and "ce-banned" in m for m in refusals)

    # allowed again: the CE submits from the next cycle on
    diracx_rss.set_ce(ce_drained, "Active")
    diracx_rss.wait_for("compute", ce_drained, allowed=True)
    outcomes = by_queue(await director.run_cycle())
    assert outcomes["ce-banned"].submitted == 1, outcomes["ce-banned"].why
    assert outcomes["site-banned"].submitted == 0
    assert any(
        f"CE {ce_drained} allowed again" in r.getMessage()
        for r in caplog.records
        if r.name == "director.resource_status"
    )


async def test_dirac_x_unreachable_means_no_submission(
    diracx_rss: RSS,
    live_server_tls: LiveServer,
    tmp_path: Path,
    make_director: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A refused token is as unknown as no answer: nothing new is submitted, one ERROR line."""
    bad_token = tmp_path / "bad.token"
    bad_token.write_text("not-a-token\n")
    path, _ = write_config(
        tmp_path,
        server_url=live_server_tls.url,
        ca_file=live_server_tls.ca_file,
        token=live_server_tls.director_token,
        director={"resource_status": {"url": diracx_rss.url, "token_file": str(bad_token)}},
    )
    director: Director = make_director(settings_for(path))
    caplog.set_level(logging.INFO, logger="director")
    [outcome] = await director.run_cycle()
    assert outcome.submitted == 0
    assert outcome.error is not None
    assert outcome.error.startswith(f"resource status unknown: GET {diracx_rss.url}/api/rss/site")
    errors = [
        r.getMessage()
        for r in caplog.records
        if r.name == "director.resource_status" and r.levelno == logging.ERROR
    ]
    assert errors == [f"submission cycle: no queue can submit: {outcome.error}"]
