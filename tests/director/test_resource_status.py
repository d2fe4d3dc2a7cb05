"""DiracX's resource status as the ban list's second source, against a stand-in DiracX (an
httpx transport answering as DiracX 0.7.0's RSS router does): which queues it stops, how
often it is asked and logged, and what an unreadable status means. The same against the real
DiracX 0.7.0: test_resource_status_diracx.py."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from director.bans import BanList
from director.config import Settings, load_config
from director.errors import ConfigError
from director.resource_status import ResourceStatus, Status, parse
from server.models import Ban

ALLOWED = {"all": {"allowed": True, "warnings": None}}


def banned(reason: str) -> dict[str, Any]:
    return {"all": {"allowed": False, "reason": reason}}


def settings(tmp_path: Path, **resource_status: Any) -> Settings:
    """Three sites: Good (two CEs), Down, Quiet (listed nowhere below unless a test says)."""
    token = tmp_path / "token"
    token.write_text("server-token\n")
    q = {"max_total_pilots": 2, "max_waiting_pilots": 2, "pilots_per_cycle": 1}
    local = {"kind": "local", "slots": 1}
    config: dict[str, Any] = {
        "server": {"url": "https://server.example", "token_file": str(token)},
        "director": {
            "work_dir": str(tmp_path / "work"),
            "resource_status": {"url": "https://diracx.example", **resource_status},
        },
        "vos": ["lhcb"],
        "sites": {
            "LCG.Good.org": {
                "ces": {
                    "ce1.good.org": {"ce": local, "queues": {"a": q, "b": q}},
                    "ce2.good.org": {"ce": local, "queues": {"c": q}},
                }
            },
            "LCG.Down.org": {"ces": {"ce.down.org": {"ce": local, "queues": {"d": q}}}},
            "LCG.Quiet.org": {"ces": {"ce.quiet.org": {"ce": local, "queues": {"e": q}}}},
        },
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return load_config(path)


class StandIn:
    """Answers `/api/rss/site` and `/api/rss/compute` from two dicts; records each request."""

    def __init__(self) -> None:
        self.sites: dict[str, Any] = {"LCG.Good.org": ALLOWED, "LCG.Down.org": banned("downtime")}
        self.ces: dict[str, Any] = {"ce1.good.org": ALLOWED, "ce2.good.org": banned("drained")}
        self.requests: list[httpx.Request] = []
        self.fail: Callable[[httpx.Request], httpx.Response] | None = None

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.fail is not None:
            return self.fail(request)
        body = {"/api/rss/site": self.sites, "/api/rss/compute": self.ces}.get(request.url.path)
        if body is None:
            return httpx.Response(404, json={"detail": "Not Found"})
        return httpx.Response(200, json=body)


def rss_for(s: Settings, stand_in: StandIn) -> ResourceStatus:
    rss = ResourceStatus.from_settings(s)
    assert rss is not None
    rss.transport = httpx.MockTransport(stand_in)
    return rss


def why(rss: ResourceStatus | BanList, s: Settings) -> dict[str, str | None]:
    return {r.queue: rss.why(r) for r in s.queues()}


def rss_records(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "director.resource_status" and r.levelno == level
    ]


def test_parse_reads_dirac_x_answers_and_refuses_other_shapes() -> None:
    answer = {
        "A": ALLOWED,
        "B": {"all": {"allowed": True, "warnings": "Degraded"}},
        "C": banned("Site in downtime"),
        "D": {"all": {"allowed": False}},
    }
    assert parse(answer) == {
        "A": Status(True, ""),
        "B": Status(True, "Degraded"),
        "C": Status(False, "Site in downtime"),
        "D": Status(False, "not allowed"),
    }
    for bad in ([], {"A": {"allowed": True}}, {"A": {"all": {"allowed": "maybe"}}}):
        with pytest.raises(ValueError, match="not a resource status answer"):
            parse(bad)


async def test_a_site_or_ce_not_allowed_stops_its_queues_only(tmp_path: Path) -> None:
    s = settings(tmp_path)
    stand_in = StandIn()
    rss = rss_for(s, stand_in)
    await rss.refresh(list(s.queues()))
    assert rss.error == ""
    assert why(rss, s) == {
        "a": None,
        "b": None,
        "c": "not allowed by DiracX resource status (CE ce2.good.org): drained",
        "d": "not allowed by DiracX resource status (site LCG.Down.org): downtime",
        "e": None,  # listed nowhere: no opinion (unlisted: submit)
    }
    # one call per element kind for every queue, with the director's token
    assert [r.url.path for r in stand_in.requests] == ["/api/rss/site", "/api/rss/compute"]
    assert {r.headers["Authorization"] for r in stand_in.requests} == {"Bearer server-token"}


async def test_a_banned_site_wins_over_its_ce(tmp_path: Path) -> None:
    s = settings(tmp_path)
    stand_in = StandIn()
    stand_in.ces["ce.down.org"] = banned("CE broken")
    rss = rss_for(s, stand_in)
    await rss.refresh(list(s.queues()))
    assert why(rss, s)["d"] == "not allowed by DiracX resource status (site LCG.Down.org): downtime"


async def test_unlisted_skip_stops_what_dirac_x_does_not_list(tmp_path: Path) -> None:
    s = settings(tmp_path, unlisted="skip")
    rss = rss_for(s, StandIn())
    await rss.refresh(list(s.queues()))
    reasons = why(rss, s)
    assert reasons["a"] is None
    assert reasons["e"] == (
        "not allowed by DiracX resource status (site LCG.Quiet.org): not listed (unlisted: skip)"
    )


async def test_each_refusal_is_logged_once_and_its_end_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    s = settings(tmp_path)
    stand_in = StandIn()
    stand_in.sites["LCG.Quiet.org"] = {"all": {"allowed": True, "warnings": "Degraded"}}
    rss = rss_for(s, stand_in)
    caplog.set_level(logging.INFO, logger="director")
    for _ in range(3):
        await rss.refresh(list(s.queues()))
    warnings = sorted(rss_records(caplog, logging.WARNING))
    assert warnings == [
        "DiracX resource status: CE ce2.good.org not allowed: drained; "
        "no new pilots to LCG.Good.org/ce2.good.org/c",
        "DiracX resource status: site LCG.Down.org not allowed: downtime; "
        "no new pilots to LCG.Down.org/ce.down.org/d",
    ]
    assert rss_records(caplog, logging.INFO) == [
        "DiracX resource status: site LCG.Quiet.org allowed with warnings: Degraded"
    ]

    caplog.clear()
    stand_in.sites["LCG.Down.org"] = ALLOWED
    stand_in.ces["ce2.good.org"] = banned("drained for good")  # a new reason is worth a line
    await rss.refresh(list(s.queues()))
    await rss.refresh(list(s.queues()))
    assert why(rss, s)["d"] is None
    assert rss_records(caplog, logging.INFO) == [
        "DiracX resource status: site LCG.Down.org allowed again: submitting again"
    ]
    assert rss_records(caplog, logging.WARNING) == [
        "DiracX resource status: CE ce2.good.org not allowed: drained for good; "
        "no new pilots to LCG.Good.org/ce2.good.org/c"
    ]


@pytest.mark.parametrize(
    ("failure", "says"),
    [
        (lambda r: (_ for _ in ()).throw(httpx.ConnectError("refused", request=r)), "no answer"),
        (lambda r: httpx.Response(503, json={"detail": "starting"}), "503 starting"),
        (lambda r: httpx.Response(401, json={"detail": "expired"}), "401"),
        (lambda r: httpx.Response(200, json=["not", "a", "mapping"]), "not a resource status"),
    ],
    ids=["unreachable", "5xx", "token-refused", "other-shape"],
)
async def test_an_unknown_status_stops_every_queue_with_one_error_line(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    failure: Callable[[httpx.Request], httpx.Response],
    says: str,
) -> None:
    s = settings(tmp_path)
    stand_in = StandIn()
    rss = rss_for(s, stand_in)
    await rss.refresh(list(s.queues()))
    stand_in.fail = failure
    caplog.set_level(logging.INFO, logger="director")
    await rss.refresh(list(s.queues()))
    assert rss.error.startswith("resource status unknown: GET https://diracx.example/api/rss/site")
    assert says in rss.error
    [error] = rss_records(caplog, logging.ERROR)
    assert error == f"submission cycle: no queue can submit: {rss.error}"
    # unknown is not "allowed again": nothing logged as lifted
    assert not rss_records(caplog, logging.INFO)
    # the dry run plans as if allowed, and says so
    caplog.clear()
    await rss.refresh(list(s.queues()), dry_run=True)
    assert rss.error == ""
    assert all(reason is None for reason in why(rss, s).values())
    [warning] = rss_records(caplog, logging.WARNING)
    assert "planned as if allowed" in warning


class _Server:
    """The server's side of the ban list: one queue ban, or no answer."""

    def __init__(self, bans: list[Ban]) -> None:
        self.bans = bans

    async def list_bans(self) -> list[Ban]:
        return self.bans


async def test_the_ban_list_consults_both_sources(tmp_path: Path) -> None:
    s = settings(tmp_path)
    stand_in = StandIn()
    bans = BanList.from_settings(s)
    assert bans.resource_status is not None
    bans.resource_status.transport = httpx.MockTransport(stand_in)
    server_ban = Ban.model_validate(
        {
            "ban_id": 1,
            "vo": "lhcb",
            "site": "LCG.Good.org",
            "ce": "ce1.good.org",
            "queue": "b",
            "reason": "queue drained",
            "banned_by": "op",
            "banned_at": "2026-01-01T00:00:00Z",
            "until": None,
            "active": True,
        }
    )
    await bans.refresh(_Server([server_ban]), list(s.queues()))  # type: ignore[arg-type]
    assert bans.error == ""
    reasons = why(bans, s)
    assert reasons["a"] is None
    assert reasons["b"] == "banned (LCG.Good.org/ce1.good.org/b): queue drained"
    assert "CE ce2.good.org" in str(reasons["c"])
    assert "site LCG.Down.org" in str(reasons["d"])
    # DiracX unreachable: the ban list's error stops every queue, as the server's would
    stand_in.fail = lambda r: httpx.Response(502, text="bad gateway")
    await bans.refresh(_Server([]), list(s.queues()))  # type: ignore[arg-type]
    assert bans.error.startswith("resource status unknown:")


def test_no_resource_status_configured_means_no_second_source(tmp_path: Path) -> None:
    s = settings(tmp_path)
    s.director.resource_status = None
    assert ResourceStatus.from_settings(s) is None
    assert BanList.from_settings(s).resource_status is None


def test_the_config_block_is_checked_at_load_time(tmp_path: Path) -> None:
    s = settings(tmp_path, token_file=str(tmp_path / "diracx.token"), timeout_seconds=5)
    config = s.director.resource_status
    assert config is not None
    assert config.unlisted == "submit"
    assert config.token_file == tmp_path / "diracx.token"
    with pytest.raises(ConfigError, match=r"director\.resource_status\.unlisted"):
        settings(tmp_path, unlisted="ignore")
    with pytest.raises(ConfigError, match=r"director\.resource_status\.urll"):
        settings(tmp_path, urll="https://x")


async def test_its_own_token_file_is_used(tmp_path: Path) -> None:
    (tmp_path / "diracx.token").write_text("diracx-token\n")
    s = settings(tmp_path, token_file=str(tmp_path / "diracx.token"))
    stand_in = StandIn()
    rss = rss_for(s, stand_in)
    await rss.refresh(list(s.queues()))
    assert {r.headers["Authorization"] for r in stand_in.requests} == {"Bearer diracx-token"}


async def test_a_missing_token_file_is_an_unknown_status(tmp_path: Path) -> None:
    s = settings(tmp_path, token_file=str(tmp_path / "missing.token"))
    stand_in = StandIn()
    rss = rss_for(s, stand_in)
    await rss.refresh(list(s.queues()))
    assert rss.error.startswith("resource status unknown:")
    assert "missing.token" in rss.error
    assert stand_in.requests == []  # nothing sent without a token
