"""Directors' queue reports through HTTP, on every database backend: stored, replaced,
scoped by VO, and refused with a reason when malformed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from typing import Any

import httpx

from server.identity import TRUSTED_HOST
from tests.conftest import Roles

URL = "/api/director/queues"


def queue(name: str = "default", vo: str = "lhcb", **fields: Any) -> dict[str, Any]:
    site = f"Site.{vo}.org"
    body: dict[str, Any] = {
        "queue_key": f"{site}/ce.{vo}.org/{name}",
        "vo": vo,
        "site": site,
        "ce": f"ce.{vo}.org",
        "queue": name,
        "ce_kind": "htcondor",
        "max_total_pilots": 10,
        "max_waiting_pilots": 5,
        "pilots_per_cycle": 3,
        "enabled": True,
    }
    body.update(fields)
    return body


async def put(client: httpx.AsyncClient, *queues: dict[str, Any]) -> httpx.Response:
    return await client.put(URL, json={"queues": list(queues)})


async def states(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    r = await client.get(URL)
    assert r.status_code == HTTPStatus.OK, r.text
    rows: list[dict[str, Any]] = r.json()
    return rows


async def test_report_and_read_back(api: Roles) -> None:
    until = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=5)
    cycle = datetime(2026, 12, 1, 10, 30, tzinfo=UTC)
    r = await put(
        api.director,
        queue(
            "busy",
            failures=2,
            backoff_until=until.isoformat(),
            last_error="CE refused: queue full",
            last_cycle_at=cycle.isoformat(),
            last_submitted=0,
            last_waiting=4,
            last_running=7,
        ),
        queue("idle", enabled=False),
    )
    assert r.status_code == HTTPStatus.NO_CONTENT, r.text
    busy, idle = sorted(await states(api.user), key=lambda row: row["Queue"])
    assert busy["Director"] == "director"
    assert busy["QueueKey"] == "Site.lhcb.org/ce.lhcb.org/busy"
    assert (busy["VO"], busy["Site"], busy["CE"], busy["CEKind"]) == (
        "lhcb",
        "Site.lhcb.org",
        "ce.lhcb.org",
        "htcondor",
    )
    assert (busy["MaxTotalPilots"], busy["MaxWaitingPilots"], busy["PilotsPerCycle"]) == (10, 5, 3)
    assert busy["Enabled"] is True
    assert busy["Failures"] == 2
    # UTC with `Z` on the wire, as DiracX writes it and every other time the server returns
    assert busy["LastCycleAt"] == "2026-12-01T10:30:00Z"
    assert datetime.fromisoformat(busy["BackoffUntil"]) == until
    assert busy["ReportedAt"].endswith("Z")
    assert busy["LastError"] == "CE refused: queue full"
    assert (busy["LastSubmitted"], busy["LastWaiting"], busy["LastRunning"]) == (0, 4, 7)
    assert busy["ReportedAt"]
    assert idle["Enabled"] is False
    assert idle["Failures"] == 0
    assert idle["BackoffUntil"] is None
    assert idle["LastCycleAt"] is None
    assert (idle["LastSubmitted"], idle["LastWaiting"], idle["LastRunning"]) == (None, None, None)


async def test_times_with_an_offset_are_stored_as_utc(api: Roles) -> None:
    r = await put(api.director, queue(last_cycle_at="2026-12-01T11:30:00+01:00"))
    assert r.status_code == HTTPStatus.NO_CONTENT, r.text
    [row] = await states(api.admin)
    assert row["LastCycleAt"] == "2026-12-01T10:30:00Z"


async def test_a_second_report_replaces_the_first(api: Roles) -> None:
    assert (await put(api.director, queue("a"), queue("b"))).status_code == HTTPStatus.NO_CONTENT
    r = await put(api.director, queue("b", max_total_pilots=20), queue("c"))
    assert r.status_code == HTTPStatus.NO_CONTENT, r.text
    rows = {row["Queue"]: row for row in await states(api.admin)}
    assert set(rows) == {"b", "c"}  # "a" is no longer served
    assert rows["b"]["MaxTotalPilots"] == 20
    # an empty report: the director serves nothing any more
    assert (await put(api.director)).status_code == HTTPStatus.NO_CONTENT
    assert await states(api.admin) == []


async def test_directors_keep_their_own_rows(api: Roles) -> None:
    """Two directors of one VO report the same queue: each report replaces only its own."""
    second = api.with_token(api.sut.token("director-b", "lhcb", [TRUSTED_HOST]))
    assert (await put(api.director, queue("a"))).status_code == HTTPStatus.NO_CONTENT
    assert (await put(second, queue("a"), queue("b"))).status_code == HTTPStatus.NO_CONTENT
    assert (await put(api.director)).status_code == HTTPStatus.NO_CONTENT
    rows = await states(api.admin)
    assert sorted((r["Director"], r["Queue"]) for r in rows) == [
        ("director-b", "a"),
        ("director-b", "b"),
    ]


async def test_readers_see_only_their_vos(api: Roles) -> None:
    assert (await put(api.director, queue("mine"))).status_code == HTTPStatus.NO_CONTENT
    r = await put(api.other_director, queue("theirs", vo="dteam"))
    assert r.status_code == HTTPStatus.NO_CONTENT, r.text
    for client in (api.user, api.director):
        rows = await states(client)
        assert [row["Queue"] for row in rows] == ["mine"]
        assert "dteam" not in (await client.get(URL)).text
    assert [row["Queue"] for row in await states(api.other_vo)] == ["theirs"]
    assert sorted(row["VO"] for row in await states(api.admin)) == ["dteam", "lhcb"]


async def test_a_director_cannot_report_for_a_vo_it_does_not_serve(api: Roles) -> None:
    r = await put(api.other_director, queue("theirs", vo="dteam"))
    assert r.status_code == HTTPStatus.NO_CONTENT, r.text
    before = await states(api.admin)
    r = await put(api.director, queue("mine"), queue("intruder", vo="dteam"))
    assert r.status_code == HTTPStatus.FORBIDDEN, r.text
    assert r.json()["detail"]
    assert await states(api.admin) == before  # nothing stored, nothing of dteam's touched


async def test_same_sub_in_two_vos_never_touches_the_other_vo(api: Roles) -> None:
    """A dteam director token that shares its `sub` with lhcb's: lhcb's report (even an
    empty one) leaves dteam's rows alone, and the same queue key may exist in both."""
    dteam = api.with_token(api.sut.token("director", "dteam", [TRUSTED_HOST]))
    key = {"queue_key": "Shared.org/ce.shared.org/q"}
    assert (await put(dteam, queue("q", vo="dteam", **key))).status_code == HTTPStatus.NO_CONTENT
    assert (await put(api.director, queue("q", **key))).status_code == HTTPStatus.NO_CONTENT
    assert sorted(r["VO"] for r in await states(api.admin)) == ["dteam", "lhcb"]
    assert (await put(api.director)).status_code == HTTPStatus.NO_CONTENT
    assert [r["VO"] for r in await states(api.admin)] == ["dteam"]


async def test_who_may_report_and_read(api: Roles) -> None:
    for client in (api.user, api.other_vo, api.legacy_pilot):
        r = await put(client, queue())
        assert r.status_code == HTTPStatus.FORBIDDEN, r.text
    assert (await put(api.anonymous, queue())).status_code == HTTPStatus.UNAUTHORIZED
    assert (await api.anonymous.get(URL)).status_code == HTTPStatus.UNAUTHORIZED
    assert (await api.legacy_pilot.get(URL)).status_code == HTTPStatus.FORBIDDEN
    assert (await put(api.admin, queue(), queue(vo="dteam"))).status_code == HTTPStatus.NO_CONTENT


async def test_unknown_vo_is_400(api: Roles) -> None:
    r = await put(api.admin, queue(vo="nosuchvo"))
    assert r.status_code == HTTPStatus.BAD_REQUEST
    assert "nosuchvo" in r.json()["detail"]


BAD_QUEUES: dict[str, tuple[dict[str, Any], str]] = {
    "negative limit": ({"max_total_pilots": -1}, "max_total_pilots"),
    "limit beyond 32 bits": ({"pilots_per_cycle": 2**31}, "pilots_per_cycle"),
    "long error": ({"last_error": "x" * 256}, "last_error"),
    "empty site": ({"site": ""}, "site"),
    "long queue key": ({"queue_key": "q" * 385}, "queue_key"),
    "long kind": ({"ce_kind": "k" * 33}, "ce_kind"),
    "not a time": ({"backoff_until": "soon"}, "backoff_until"),
    "time out of range": ({"last_cycle_at": "0001-01-01T00:00:00"}, "last_cycle_at"),
    "time past year 9999 in UTC": ({"last_cycle_at": "9999-12-31T23:00:00-05:00"}, "last_cycle_at"),
    "unknown field": ({"secret": "x"}, "secret"),
}


async def test_bad_input_is_422_with_a_reason(api: Roles) -> None:
    for name, (fields, where) in BAD_QUEUES.items():
        r = await put(api.director, queue(**fields))
        assert r.status_code == HTTPStatus.UNPROCESSABLE_ENTITY, (name, r.text)
        [error] = r.json()["detail"]
        assert error["msg"], name
        assert where in error["loc"], (name, error)
    r = await put(api.director, queue("twice"), queue("twice"))
    assert r.status_code == HTTPStatus.UNPROCESSABLE_ENTITY
    assert "reported twice" in r.text
    missing = queue()
    del missing["enabled"]
    r = await put(api.director, missing)
    assert r.status_code == HTTPStatus.UNPROCESSABLE_ENTITY
    assert "enabled" in r.text
    r = await api.director.put(URL, json={"queues": [queue()] * 10_001})
    assert r.status_code == HTTPStatus.UNPROCESSABLE_ENTITY
    assert await states(api.admin) == []  # nothing of it was stored
