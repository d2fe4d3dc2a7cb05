"""Pilot logs through HTTP on every backend: ingestion, redaction, limits, search, retention."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from http import HTTPStatus
from typing import Any

import httpx
import pytest

from server.clock import utcnow
from server.db.logs import Quota
from server.errors import RateLimited, TooLarge
from server.logic import logs as logic
from server.logic.logs import Limits, admit, redact
from tests.conftest import Roles

LOGS = "/api/pilots/internal/message"
LEGACY = "/api/pilots/legacy/message"
SEARCH = "/api/pilots/search/logs"
SECRET = "0123456789abcdef" * 4


def line(
    message: str = "hello", severity: str = "INFO", second: int = 5, **kw: Any
) -> dict[str, Any]:
    return {
        "timestamp": f"2026-01-02T03:04:{second:02d}.123456Z",
        "severity": severity,
        "message": message,
        "scope": kw.get("scope", "Pilot"),
    }


async def pilot(
    api: Roles, director: httpx.AsyncClient | None = None, vo: str = "lhcb"
) -> tuple[str, httpx.AsyncClient]:
    """A registered pilot and a client holding its token from the secret exchange."""
    s = uuid.uuid4().hex
    r = await (director or api.director).post(
        "/api/pilots/bulk", json={"vo": vo, "pilots": [{"pilot_stamp": s}], "mint_secrets": True}
    )
    assert r.status_code == HTTPStatus.CREATED, r.text
    secret = r.json()["secrets"][0]["pilot_secret"]
    r = await api.anonymous.post(
        "/api/auth/secret-exchange", json={"pilot_stamp": s, "pilot_secret": secret}
    )
    assert r.status_code == HTTPStatus.OK, r.text
    return s, api.with_token(r.json()["access_token"])


async def search(
    client: httpx.AsyncClient, body: dict[str, Any] | None = None, **params: Any
) -> httpx.Response:
    return await client.post(SEARCH, json=body or {}, params=params)


async def test_ingest_and_search_with_diracx_keys(api: Roles) -> None:
    s, client = await pilot(api)
    lines = [line("second", second=7), line("first", "DEBUG", second=6, scope="JobAgent")]
    r = await client.post(LOGS, json={"pilot_stamp": "ignored", "lines": lines})
    assert r.status_code == HTTPStatus.NO_CONTENT, r.text
    r = await search(api.user)
    assert r.status_code == HTTPStatus.OK
    rows = r.json()
    assert [x["Message"] for x in rows] == ["first", "second"]  # time order
    first = rows[0]
    assert set(first) == {
        "PilotStamp",
        "PilotID",
        "VO",
        "TimeStamp",
        "Severity",
        "Scope",
        "Message",
    }
    assert (first["PilotStamp"], first["VO"], first["Severity"], first["Scope"]) == (
        s,
        "lhcb",
        "DEBUG",
        "JobAgent",
    )
    assert first["TimeStamp"] == "2026-01-02T03:04:06.123456Z"


async def test_empty_large_and_duplicate_batches(api: Roles) -> None:
    _, client = await pilot(api)
    assert (await client.post(LOGS, json={"lines": []})).status_code == HTTPStatus.NO_CONTENT
    batch = [line(f"line {i}", second=i % 60) for i in range(600)]
    assert (await client.post(LOGS, json={"lines": batch})).status_code == HTTPStatus.NO_CONTENT
    assert (
        await client.post(LOGS, json={"lines": batch[:10]})
    ).status_code == HTTPStatus.NO_CONTENT
    r = await search(api.admin, per_page=10_000)
    assert len(r.json()) == 610


async def test_every_severity_and_escaped_messages(api: Roles) -> None:
    _, client = await pilot(api)
    lines = [
        line(f'quote " and \\ and \n newline {sev}', sev)
        for sev in ("DEBUG", "INFO", "WARNING", "ERROR", "COMMAND")
    ]
    assert (await client.post(LOGS, json={"lines": lines})).status_code == HTTPStatus.NO_CONTENT
    rows = (await search(api.admin)).json()
    assert sorted(x["Severity"] for x in rows) == ["COMMAND", "DEBUG", "ERROR", "INFO", "WARNING"]
    assert all(x["Message"].startswith('quote " and \\ and \n newline') for x in rows)


async def test_nul_and_lone_surrogates_are_stored_replaced(api: Roles) -> None:
    _, client = await pilot(api)
    body = (
        '{"lines": [{"timestamp": "2026-01-02T03:04:05Z", "severity": "INFO",'
        ' "message": "a\\u0000b\\ud800c", "scope": "P\\u0000"}]}'
    )
    r = await client.post(LOGS, content=body, headers={"content-type": "application/json"})
    assert r.status_code == HTTPStatus.NO_CONTENT, r.text
    [row] = (await search(api.admin)).json()
    assert row["Message"].startswith("a\ufffdb")
    assert row["Message"].endswith("c")
    assert row["Scope"] == "P\ufffd"


async def test_bad_lines_refuse_the_batch(api: Roles) -> None:
    _, client = await pilot(api)
    for bad in (line(severity="LOUD"), {**line(), "timestamp": "yesterday"}):
        r = await client.post(LOGS, json={"lines": [line(), bad]})
        assert r.status_code == HTTPStatus.BAD_REQUEST, r.text
    r = await client.post(LOGS, json={"lines": [{"severity": "INFO"}]})
    assert r.status_code == HTTPStatus.UNPROCESSABLE_ENTITY
    assert (await search(api.admin)).json() == []


@pytest.mark.parametrize(
    "message",
    [
        f"Options list: [('-S', 'LHCb-Production'), ('--pilotSecret', '{SECRET}'), ('-N', 'ce1')]",
        f"Options list: [(\\'--pilotSecret\\', \\'{SECRET}\\')]",
        f"/usr/bin/python3 dirac-pilot.py --pilotSecret={SECRET} -M 1",
        f"/usr/bin/python3 dirac-pilot.py --pilotSecret {SECRET} -M 1",
        f'exchange body {{"pilot_stamp": "x", "pilot_secret": "{SECRET}"}}',
        f"pilotSecret set; value later: {SECRET}",
    ],
)
async def test_secret_is_redacted_in_every_form(api: Roles, message: str) -> None:
    _, client = await pilot(api)
    r = await client.post(LOGS, json={"lines": [line(message, "DEBUG")]})
    assert r.status_code == HTTPStatus.NO_CONTENT
    [row] = (await search(api.admin)).json()
    assert SECRET not in row["Message"]
    assert "<redacted>" in row["Message"]


def test_redaction_keeps_the_rest() -> None:
    text = f"Options list: [('-S', 'Prod'), ('--pilotSecret', '{SECRET}'), ('-N', 'ce1')]"
    assert (
        redact(text)
        == "Options list: [('-S', 'Prod'), ('--pilotSecret', '<redacted>'), ('-N', 'ce1')]"
    )
    assert redact("--pilotSecret=abc -N ce") == "--pilotSecret=<redacted> -N ce"
    assert redact(f"a plain hex {SECRET}") == f"a plain hex {SECRET}"  # no mention: left alone
    assert redact("nothing to see") == "nothing to see"


async def test_legacy_pilot_logs_within_its_vo(api: Roles) -> None:
    mine, _ = await pilot(api)
    theirs, _ = await pilot(api, api.other_director, "dteam")
    r = await api.legacy_pilot.post(LEGACY, json={"pilot_stamp": mine, "lines": [line("legacy")]})
    assert r.status_code == HTTPStatus.NO_CONTENT, r.text
    r = await api.legacy_pilot.post(LEGACY, json={"pilot_stamp": theirs, "lines": [line()]})
    assert r.status_code == HTTPStatus.FORBIDDEN
    r = await api.legacy_pilot.post(LEGACY, json={"pilot_stamp": "nobody", "lines": [line()]})
    assert r.status_code == HTTPStatus.NOT_FOUND
    [row] = (await search(api.admin)).json()
    assert (row["PilotStamp"], row["Message"]) == (mine, "legacy")


async def test_search_is_vo_scoped(api: Roles) -> None:
    _, lhcb = await pilot(api)
    _, dteam = await pilot(api, api.other_director, "dteam")
    await lhcb.post(LOGS, json={"lines": [line("from lhcb")]})
    await dteam.post(LOGS, json={"lines": [line("from dteam")]})
    assert [x["Message"] for x in (await search(api.user)).json()] == ["from lhcb"]
    assert [x["Message"] for x in (await search(api.other_vo)).json()] == ["from dteam"]
    assert len((await search(api.admin)).json()) == 2
    # asking for the other VO explicitly finds nothing
    body = {"search": [{"parameter": "VO", "operator": "eq", "value": "dteam"}]}
    assert (await search(api.user, body)).json() == []
    for client in (api.legacy_pilot, api.anonymous):
        assert (await search(client)).status_code in (HTTPStatus.FORBIDDEN, HTTPStatus.UNAUTHORIZED)


async def test_search_filters_paging_and_content_range(api: Roles) -> None:
    s, client = await pilot(api)
    await client.post(
        LOGS,
        json={"lines": [line(f"m{i}", "ERROR" if i % 2 else "INFO", second=i) for i in range(10)]},
    )
    body = {
        "parameters": ["Message", "Severity"],
        "search": [
            {"parameter": "Severity", "operator": "eq", "value": "ERROR"},
            {"parameter": "PilotStamp", "operator": "eq", "value": s},
        ],
    }
    r = await search(api.user, body, page=1, per_page=2)
    assert r.status_code == HTTPStatus.PARTIAL_CONTENT
    assert r.headers["content-range"] == "logs 0-1/5"
    assert r.json() == [
        {"Message": "m1", "Severity": "ERROR"},
        {"Message": "m3", "Severity": "ERROR"},
    ]
    r = await search(api.user, body, page=3, per_page=2)
    assert r.headers["content-range"] == "logs 4-4/5"
    r = await search(api.user, body, page=4, per_page=2)
    assert r.status_code == HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE
    r = await search(
        api.user, {"sort": [{"parameter": "TimeStamp", "direction": "desc"}]}, per_page=1
    )
    assert r.json()[0]["Message"] == "m9"
    r = await search(api.user, {"parameters": ["ReceivedTime"]})
    assert r.status_code == HTTPStatus.BAD_REQUEST


async def test_line_count_and_size_limits(api: Roles) -> None:
    limits = api.sut.settings
    _, client = await pilot(api)
    too_many = [line() for _ in range(limits.log_max_lines_per_request + 1)]
    r = await client.post(LOGS, json={"lines": too_many})
    assert r.status_code == HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    assert "lines" in r.json()["detail"]
    too_long = "x" * (limits.log_max_line_bytes + 1)
    r = await client.post(LOGS, json={"lines": [line(), line(too_long)]})
    assert r.status_code == HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    assert (await search(api.admin)).json() == []


async def test_quota_and_rate_limits_refuse_whole_batches(
    api: Roles, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = api.sut.settings
    monkeypatch.setattr(settings, "log_max_bytes_per_pilot", 1024)
    monkeypatch.setattr(settings, "log_rate_lines_per_minute", 30)
    _, client = await pilot(api)
    _, other = await pilot(api)
    r = await client.post(LOGS, json={"lines": [line("a" * 500), line("b" * 500)]})
    assert r.status_code == HTTPStatus.NO_CONTENT
    r = await client.post(LOGS, json={"lines": [line("c" * 20), line("d" * 20)]})
    assert r.status_code == HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    assert "quota" in r.json()["detail"]
    # rate: 30 lines a minute per pilot
    r = await other.post(LOGS, json={"lines": [line() for _ in range(25)]})
    assert r.status_code == HTTPStatus.NO_CONTENT
    r = await other.post(LOGS, json={"lines": [line() for _ in range(6)]})
    assert r.status_code == HTTPStatus.TOO_MANY_REQUESTS
    assert 1 <= int(r.headers["retry-after"]) <= 60
    r = await other.post(LOGS, json={"lines": [line() for _ in range(5)]})
    assert r.status_code == HTTPStatus.NO_CONTENT
    assert len((await search(api.admin, per_page=1000)).json()) == 2 + 25 + 5


def test_admit_arithmetic() -> None:
    limits = Limits(
        max_lines=100, max_line_bytes=100, max_bytes_per_pilot=1000, lines_per_minute=10
    )
    t0 = datetime(2026, 1, 1)
    q = Quota(0, t0, 0)
    q = admit(q, lines=10, nbytes=100, now=t0 + timedelta(seconds=10), limits=limits)
    assert q == Quota(100, t0, 10)
    with pytest.raises(RateLimited) as refused:
        admit(q, lines=1, nbytes=1, now=t0 + timedelta(seconds=20), limits=limits)
    assert refused.value.retry_after == 40
    q = admit(q, lines=10, nbytes=850, now=t0 + timedelta(seconds=60), limits=limits)
    assert q == Quota(950, t0 + timedelta(seconds=60), 10)
    with pytest.raises(TooLarge):
        admit(q, lines=1, nbytes=51, now=t0 + timedelta(hours=1), limits=limits)


async def test_retention(api: Roles) -> None:
    _kept, client = await pilot(api)
    gone, doomed = await pilot(api)
    await client.post(LOGS, json={"lines": [line("keep")]})
    await doomed.post(LOGS, json={"lines": [line("drop")]})
    r = await api.director.request("DELETE", "/api/pilots/", json={"pilot_stamps": [gone]})
    assert r.status_code == HTTPStatus.OK
    ctx = api.sut.app.state.ctx
    assert await logic.purge(ctx, older_than_days=30) == 1  # the deleted pilot's line
    assert [x["Message"] for x in (await search(api.admin)).json()] == ["keep"]
    assert await logic.purge(ctx, older_than_days=1, now=utcnow() + timedelta(days=2)) == 1
    assert (await search(api.admin)).json() == []


@pytest.mark.parametrize("sent_before", [False, True], ids=["first batch", "later batch"])
async def test_a_revoked_family_sends_no_lines(api: Roles, sent_before: bool) -> None:
    # The family is checked by the statement that finds the pilot: on PostgreSQL one that also
    # locks its quota row, which exists from the pilot's second batch on, and before that the
    # fallback; both must refuse.
    s = uuid.uuid4().hex
    r = await api.director.post(
        "/api/pilots/bulk",
        json={"vo": "lhcb", "pilots": [{"pilot_stamp": s}], "mint_secrets": True},
    )
    secret = r.json()["secrets"][0]["pilot_secret"]
    r = await api.anonymous.post(
        "/api/auth/secret-exchange", json={"pilot_stamp": s, "pilot_secret": secret}
    )
    pair = r.json()
    sender = api.with_token(pair["access_token"])
    if sent_before:
        r = await sender.post(LOGS, json={"lines": [line("before")]})
        assert r.status_code == HTTPStatus.NO_CONTENT, r.text
    r = await api.anonymous.post("/api/auth/revoke", data={"token": pair["refresh_token"]})
    assert r.status_code == HTTPStatus.OK
    r = await sender.post(LOGS, json={"lines": [line("after")]})
    assert r.status_code == HTTPStatus.UNAUTHORIZED, r.text
    query = {"search": [{"parameter": "PilotStamp", "operator": "eq", "value": s}]}
    r = await search(api.admin, query)
    assert [row["Message"] for row in r.json()] == (["before"] if sent_before else [])
