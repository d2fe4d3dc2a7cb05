"""The pilot management API, through HTTP, on every database backend."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from typing import Any

import httpx
from sqlalchemy import event

from server.routers.pilots import _encode
from tests.conftest import Roles


def stamp() -> str:
    return uuid.uuid4().hex


async def register(client: httpx.AsyncClient, vo: str = "lhcb", **fields: Any) -> str:
    s = fields.pop("pilot_stamp", stamp())
    r = await client.post("/api/pilots/", json={"pilot_stamp": s, "vo": vo, **fields})
    assert r.status_code == HTTPStatus.CREATED, r.text
    return s


async def search(
    client: httpx.AsyncClient, body: dict[str, Any] | None = None, **params: Any
) -> httpx.Response:
    return await client.post("/api/pilots/search", json=body or {}, params=params)


# --- registration -----------------------------------------------------------------------------


async def test_register_then_find_with_diracx_fields(api: Roles) -> None:
    s = await register(
        api.admin, grid_site="LCG.CERN.cern", pilot_reference="ref-1", destination_site="ce.cern.ch"
    )
    r = await search(
        api.admin, {"search": [{"parameter": "PilotStamp", "operator": "eq", "value": s}]}
    )
    assert r.status_code == HTTPStatus.OK
    [pilot] = r.json()
    assert pilot["PilotStamp"] == s
    assert pilot["VO"] == "lhcb"
    assert pilot["GridSite"] == "LCG.CERN.cern"
    assert pilot["PilotJobReference"] == "ref-1"
    assert pilot["DestinationSite"] == "ce.cern.ch"
    assert pilot["Status"] == "Submitted"
    assert pilot["GridType"] == "DIRAC"
    # UTC with `Z`, as DiracX writes it: a client never reads a naive time as local
    for time in (pilot["SubmissionTime"], pilot["LastUpdateTime"]):
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", time)
    assert set(pilot) >= {
        "PilotID",
        "InitialJobID",
        "CurrentJobID",
        "BenchMark",
        "LastUpdateTime",
        "StatusReason",
        "AccountingSent",
        "Queue",
    }


async def test_reference_defaults_to_stamp(api: Roles) -> None:
    s = await register(api.director)
    r = await search(
        api.admin,
        {
            "parameters": ["PilotJobReference"],
            "search": [{"parameter": "PilotStamp", "operator": "eq", "value": s}],
        },
    )
    assert r.json() == [{"PilotJobReference": s}]


async def test_duplicate_stamp_is_409(api: Roles) -> None:
    s = await register(api.admin)
    r = await api.admin.post("/api/pilots/", json={"pilot_stamp": s, "vo": "lhcb"})
    assert r.status_code == HTTPStatus.CONFLICT
    assert s in str(r.json()["detail"])


async def test_unknown_vo_is_400(api: Roles) -> None:
    r = await api.admin.post("/api/pilots/", json={"pilot_stamp": stamp(), "vo": "nosuchvo"})
    assert r.status_code == HTTPStatus.BAD_REQUEST
    assert "nosuchvo" in r.json()["detail"]


async def test_validation_errors_are_422(api: Roles) -> None:
    for body in (
        {"pilot_stamp": "x" * 33, "vo": "lhcb"},
        {"pilot_stamp": "", "vo": "lhcb"},
        {"pilot_stamp": stamp(), "vo": "lhcb", "unexpected": 1},
        {"pilot_stamp": stamp(), "vo": "lhcb", "pilot_status": "Sleeping"},
        {"pilot_stamp": stamp(), "vo": "lhcb", "grid_site": "s" * 129},
        {"vo": "lhcb"},
    ):
        r = await api.admin.post("/api/pilots/", json=body)
        assert r.status_code == HTTPStatus.UNPROCESSABLE_ENTITY, body


async def test_who_may_register(api: Roles) -> None:
    body = {"pilot_stamp": stamp(), "vo": "lhcb"}
    assert (await api.user.post("/api/pilots/", json=body)).status_code == HTTPStatus.FORBIDDEN
    assert (
        await api.other_director.post("/api/pilots/", json=body)
    ).status_code == HTTPStatus.FORBIDDEN
    assert (
        await api.anonymous.post("/api/pilots/", json=body)
    ).status_code == HTTPStatus.UNAUTHORIZED
    # a legacy pilot registers itself in its own VO, one at a time
    assert (
        await api.legacy_pilot.post("/api/pilots/", json=body)
    ).status_code == HTTPStatus.CREATED
    body2 = {"pilot_stamp": stamp(), "vo": "dteam"}
    assert (
        await api.legacy_pilot.post("/api/pilots/", json=body2)
    ).status_code == HTTPStatus.FORBIDDEN
    assert (
        await api.other_director.post("/api/pilots/", json=body2)
    ).status_code == HTTPStatus.CREATED


# --- bulk registration ------------------------------------------------------------------------


async def test_bulk_registration_mints_one_bound_secret_each(api: Roles) -> None:
    stamps = [stamp() for _ in range(50)]
    r = await api.director.post(
        "/api/pilots/bulk",
        json={
            "vo": "lhcb",
            "mint_secrets": True,
            "secret_constraints": {"expiration_minutes": 60, "pilot_secret_use_count_max": 1},
            "pilots": [
                {"pilot_stamp": s, "grid_site": "LCG.Test.ch", "queue": "q1"} for s in stamps
            ],
        },
    )
    assert r.status_code == HTTPStatus.CREATED, r.text
    body = r.json()
    assert [p["pilot_stamp"] for p in body["pilots"]] == stamps
    assert len({p["pilot_id"] for p in body["pilots"]}) == 50
    assert [s["pilot_stamp"] for s in body["secrets"]] == stamps
    assert all(re.fullmatch(r"[0-9a-f]{64}", s["pilot_secret"]) for s in body["secrets"])
    assert len({s["pilot_secret"] for s in body["secrets"]}) == 50
    assert all(isinstance(s["pilot_secret_expires_in"], int) for s in body["secrets"])
    r = await api.director.post("/api/pilots/summary", json={"grouping": ["Queue", "GridSite"]})
    assert r.json() == [{"Queue": "q1", "GridSite": "LCG.Test.ch", "count": 50}]


async def test_bulk_clash_stores_nothing_and_names_the_stamps(api: Roles) -> None:
    taken = await register(api.director)
    fresh = [stamp() for _ in range(5)]
    r = await api.director.post(
        "/api/pilots/bulk",
        json={
            "vo": "lhcb",
            "mint_secrets": True,
            "pilots": [{"pilot_stamp": s} for s in [*fresh, taken]],
        },
    )
    assert r.status_code == HTTPStatus.CONFLICT
    assert r.json()["detail"]["pilot_stamps"] == [taken]
    r = await search(
        api.admin, {"search": [{"parameter": "PilotStamp", "operator": "in", "values": fresh}]}
    )
    assert r.json() == []


async def test_bulk_answers_the_stored_ids_and_rows(api: Roles) -> None:
    """More pilots than one chunk of stamps (900): the ids answered are the stored ones, in
    the request's order, and every column is as registered or defaulted."""
    stamps = [stamp() for _ in range(1000)]
    pilots: list[dict[str, Any]] = [{"pilot_stamp": s} for s in stamps]
    pilots[1] = {
        "pilot_stamp": stamps[1],
        "grid_type": "HTCondorCE",
        "grid_site": "LCG.X.org",
        "destination_site": "ce.x.org",
        "queue": "q",
        "pilot_reference": "htcondor://ce.x.org/1.0",
        "pilot_status": "Waiting",
    }
    before = datetime.now(UTC).replace(tzinfo=None)
    r = await api.director.post("/api/pilots/bulk", json={"vo": "lhcb", "pilots": pilots})
    assert r.status_code == HTTPStatus.CREATED, r.text
    assert r.json()["secrets"] == []
    answered = {p["pilot_stamp"]: p["pilot_id"] for p in r.json()["pilots"]}
    assert list(answered) == stamps
    r = await search(
        api.admin,
        {"search": [{"parameter": "PilotStamp", "operator": "in", "values": stamps}]},
        per_page=1000,
    )
    rows = {p["PilotStamp"]: p for p in r.json()}
    assert {s: rows[s]["PilotID"] for s in stamps} == answered
    default, full = rows[stamps[0]], rows[stamps[1]]
    assert {k: v for k, v in default.items() if k not in ("PilotID", "PilotStamp")} | {
        "SubmissionTime": None,
        "LastUpdateTime": None,
    } == {
        "VO": "lhcb",
        "PilotJobReference": stamps[0],
        "Status": "Submitted",
        "StatusReason": "Unknown",
        "GridType": "DIRAC",
        "GridSite": "Unknown",
        "DestinationSite": "NotAssigned",
        "Queue": "Unknown",
        "SubmissionTime": None,
        "LastUpdateTime": None,
        "InitialJobID": 0,
        "CurrentJobID": 0,
        "BenchMark": 0.0,
        "AccountingSent": False,
    }
    submitted = datetime.fromisoformat(default["SubmissionTime"].replace("Z", ""))
    assert before - timedelta(seconds=1) <= submitted <= datetime.now(UTC).replace(tzinfo=None)
    assert default["LastUpdateTime"] == default["SubmissionTime"]
    assert (full["GridType"], full["GridSite"], full["DestinationSite"], full["Queue"]) == (
        "HTCondorCE",
        "LCG.X.org",
        "ce.x.org",
        "q",
    )
    assert (full["PilotJobReference"], full["Status"]) == ("htcondor://ce.x.org/1.0", "Waiting")


async def test_bulk_clash_past_the_first_chunk_names_every_stamp(api: Roles) -> None:
    taken = sorted([await register(api.director), await register(api.other_director, vo="dteam")])
    fresh = [stamp() for _ in range(950)]
    r = await api.director.post(
        "/api/pilots/bulk",
        json={"vo": "lhcb", "pilots": [{"pilot_stamp": s} for s in [*fresh, *taken]]},
    )
    assert r.status_code == HTTPStatus.CONFLICT
    assert r.json()["detail"]["pilot_stamps"] == taken
    r = await search(
        api.admin, {"search": [{"parameter": "PilotStamp", "operator": "in", "values": fresh}]}
    )
    assert r.json() == []


async def test_bulk_refuses_duplicates_in_request_and_foreign_vo(api: Roles) -> None:
    s = stamp()
    r = await api.director.post(
        "/api/pilots/bulk", json={"vo": "lhcb", "pilots": [{"pilot_stamp": s}, {"pilot_stamp": s}]}
    )
    assert r.status_code == HTTPStatus.BAD_REQUEST
    r = await api.director.post(
        "/api/pilots/bulk", json={"vo": "dteam", "pilots": [{"pilot_stamp": stamp()}]}
    )
    assert r.status_code == HTTPStatus.FORBIDDEN
    r = await api.legacy_pilot.post(
        "/api/pilots/bulk", json={"vo": "lhcb", "pilots": [{"pilot_stamp": stamp()}]}
    )
    assert r.status_code == HTTPStatus.FORBIDDEN
    r = await api.director.post("/api/pilots/bulk", json={"vo": "lhcb", "pilots": []})
    assert r.status_code == HTTPStatus.UNPROCESSABLE_ENTITY


# --- metadata ---------------------------------------------------------------------------------


async def test_patch_metadata(api: Roles) -> None:
    a, b = await register(api.director), await register(api.director)
    r = await api.director.patch(
        "/api/pilots/metadata",
        json={
            a: {"Status": "Running", "BenchMark": 12.5, "StatusReason": "started"},
            b: {"Status": "Waiting", "PilotJobReference": "htcondorce://ce/1.0", "Queue": "q"},
        },
    )
    assert r.status_code == HTTPStatus.NO_CONTENT, r.text
    r = await search(
        api.admin,
        {
            "parameters": [
                "PilotStamp",
                "Status",
                "BenchMark",
                "PilotJobReference",
                "StatusReason",
            ],
            "sort": [{"parameter": "PilotStamp", "direction": "asc"}],
            "search": [{"parameter": "PilotStamp", "operator": "in", "values": [a, b]}],
        },
    )
    rows = {p["PilotStamp"]: p for p in r.json()}
    assert rows[a]["Status"] == "Running"
    assert rows[a]["BenchMark"] == 12.5
    assert rows[a]["StatusReason"] == "started"
    assert rows[a]["PilotJobReference"] == a
    assert rows[b]["Status"] == "Waiting"
    assert rows[b]["PilotJobReference"] == "htcondorce://ce/1.0"


async def test_patch_unknown_stamp_is_404_and_changes_nothing(api: Roles) -> None:
    a = await register(api.director)
    r = await api.director.patch(
        "/api/pilots/metadata",
        json={a: {"Status": "Running"}, "nosuchstamp": {"Status": "Running"}},
    )
    assert r.status_code == HTTPStatus.NOT_FOUND
    r = await search(
        api.admin,
        {
            "parameters": ["Status"],
            "search": [{"parameter": "PilotStamp", "operator": "eq", "value": a}],
        },
    )
    assert r.json() == [{"Status": "Submitted"}]


async def test_patch_one_stamp(api: Roles) -> None:
    """One stamp is one scoped UPDATE; its misses still say 404 or 403, and change nothing."""
    a = await register(api.director)
    other = await register(api.other_director, vo="dteam")
    for _ in range(2):  # the second changes nothing (MySQL's affected rows) and is still a 204
        r = await api.director.patch("/api/pilots/metadata", json={a: {"Status": "Running"}})
        assert r.status_code == HTTPStatus.NO_CONTENT, r.text
    r = await api.director.patch("/api/pilots/metadata", json={"nosuch": {"Status": "Done"}})
    assert r.status_code == HTTPStatus.NOT_FOUND
    assert r.json()["detail"]["pilot_stamps"] == ["nosuch"]
    r = await api.director.patch("/api/pilots/metadata", json={"nosuch": {}})
    assert r.status_code == HTTPStatus.NOT_FOUND
    r = await api.director.patch("/api/pilots/metadata", json={other: {"Status": "Done"}})
    assert r.status_code == HTTPStatus.FORBIDDEN
    r = await search(
        api.admin,
        {
            "parameters": ["PilotStamp", "Status"],
            "search": [{"parameter": "PilotStamp", "operator": "in", "values": [a, other]}],
            "sort": [{"parameter": "VO", "direction": "asc"}],
        },
    )
    assert r.json() == [
        {"PilotStamp": other, "Status": "Submitted"},
        {"PilotStamp": a, "Status": "Running"},
    ]


async def test_patch_many_stamps_all_or_nothing(api: Roles) -> None:
    """Many stamps, each with something to set (the director's references): a stamp unknown
    or of another VO is a 404 (unknown first) or a 403, and nothing changes; the same patch
    twice is a 204 both times."""
    mine = [await register(api.director) for _ in range(3)]
    other = await register(api.other_director, vo="dteam")

    def refs(stamps: list[str]) -> dict[str, Any]:
        return {s: {"PilotJobReference": f"ref-{s}"} for s in stamps}

    r = await api.director.patch("/api/pilots/metadata", json=refs([*mine, other]))
    assert r.status_code == HTTPStatus.FORBIDDEN
    r = await api.director.patch("/api/pilots/metadata", json=refs([*mine, other, "nosuch"]))
    assert r.status_code == HTTPStatus.NOT_FOUND
    assert r.json()["detail"]["pilot_stamps"] == ["nosuch"]
    r = await search(
        api.admin,
        {
            "parameters": ["PilotStamp", "PilotJobReference"],
            "search": [{"parameter": "PilotStamp", "operator": "in", "values": [*mine, other]}],
        },
    )
    assert {p["PilotStamp"]: p["PilotJobReference"] for p in r.json()} == {
        s: s for s in [*mine, other]
    }
    for _ in range(2):
        updates = {**refs(mine[:2]), mine[2]: {"Status": "Aborted", "StatusReason": "why"}}
        r = await api.director.patch("/api/pilots/metadata", json=updates)
        assert r.status_code == HTTPStatus.NO_CONTENT, r.text
    r = await search(
        api.admin,
        {
            "parameters": ["PilotStamp", "PilotJobReference", "Status", "StatusReason"],
            "search": [{"parameter": "PilotStamp", "operator": "in", "values": mine}],
        },
    )
    assert sorted(r.json(), key=lambda p: mine.index(p["PilotStamp"])) == [
        {
            "PilotStamp": mine[0],
            "PilotJobReference": f"ref-{mine[0]}",
            "Status": "Submitted",
            "StatusReason": "Unknown",
        },
        {
            "PilotStamp": mine[1],
            "PilotJobReference": f"ref-{mine[1]}",
            "Status": "Submitted",
            "StatusReason": "Unknown",
        },
        {
            "PilotStamp": mine[2],
            "PilotJobReference": mine[2],
            "Status": "Aborted",
            "StatusReason": "why",
        },
    ]
    r = await api.admin.patch("/api/pilots/metadata", json=refs([mine[0], other]))
    assert r.status_code == HTTPStatus.NO_CONTENT, r.text  # an administrator's scope is all VOs


async def test_patch_boundaries(api: Roles) -> None:
    a, b = await register(api.director), await register(api.director)
    other = await register(api.other_director, vo="dteam")
    r = await api.director.patch("/api/pilots/metadata", json={other: {"Status": "Done"}})
    assert r.status_code == HTTPStatus.FORBIDDEN
    r = await api.legacy_pilot.patch(
        "/api/pilots/metadata", json={a: {"Status": "Done"}, b: {"Status": "Done"}}
    )
    assert r.status_code == HTTPStatus.FORBIDDEN
    r = await api.legacy_pilot.patch("/api/pilots/metadata", json={a: {"Status": "Done"}})
    assert r.status_code == HTTPStatus.NO_CONTENT
    r = await api.user.patch("/api/pilots/metadata", json={a: {"Status": "Done"}})
    assert r.status_code == HTTPStatus.FORBIDDEN
    r = await api.director.patch("/api/pilots/metadata", json={a: {"Status": "Bogus"}})
    assert r.status_code == HTTPStatus.UNPROCESSABLE_ENTITY


# --- search and summary -----------------------------------------------------------------------


async def _fleet(api: Roles) -> list[str]:
    stamps = [f"fleet{i:02d}" + uuid.uuid4().hex[:8] for i in range(12)]
    pilots = [
        {"pilot_stamp": s, "grid_site": f"Site{i % 3}", "queue": f"q{i % 2}"}
        for i, s in enumerate(stamps)
    ]
    r = await api.director.post("/api/pilots/bulk", json={"vo": "lhcb", "pilots": pilots})
    assert r.status_code == HTTPStatus.CREATED
    await api.director.patch(
        "/api/pilots/metadata",
        json={
            s: {"Status": "Running" if i % 4 == 0 else "Waiting", "BenchMark": float(i)}
            for i, s in enumerate(stamps)
        },
    )
    return stamps


async def test_search_paging_and_content_range(api: Roles) -> None:
    await _fleet(api)
    r = await search(api.user, page=1, per_page=5)
    assert r.status_code == HTTPStatus.PARTIAL_CONTENT
    assert r.headers["Content-Range"] == "pilots 0-4/12"
    assert len(r.json()) == 5
    r = await search(api.user, page=3, per_page=5)
    assert r.status_code == HTTPStatus.PARTIAL_CONTENT
    assert r.headers["Content-Range"] == "pilots 10-11/12"
    assert len(r.json()) == 2
    r = await search(api.user, page=4, per_page=5)
    assert r.status_code == HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE
    assert r.headers["Content-Range"] == "pilots */12"
    r = await search(api.user, page=1, per_page=100)
    assert r.status_code == HTTPStatus.OK
    assert "Content-Range" not in r.headers
    pages = [(await search(api.user, page=p, per_page=5)).json() for p in (1, 2, 3)]
    ids = [row["PilotID"] for page in pages for row in page]
    assert len(set(ids)) == 12  # stable order: no pilot twice, none missed


async def test_a_page_and_its_total_are_one_statement(api: Roles) -> None:
    """The total comes with the page (a scalar subquery): one statement per search; the count
    runs alone only when the page is empty, to tell no match (200) from past the end (416)."""
    await _fleet(api)
    engine = api.sut.app.state.ctx.db.engine.sync_engine
    statements: list[str] = []

    def note(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if "PilotAgents" in statement:
            statements.append(statement)

    body = {
        "search": [{"parameter": "Status", "operator": "in", "values": ["Running", "Waiting"]}],
        "sort": [{"parameter": "BenchMark", "direction": "desc"}],
    }
    event.listen(engine, "before_cursor_execute", note)
    try:
        r = await search(api.user, body, page=2, per_page=5)
        assert len(statements) == 1
        assert r.status_code == HTTPStatus.PARTIAL_CONTENT
        assert r.headers["Content-Range"] == "pilots 5-9/12"
        assert [p["BenchMark"] for p in r.json()] == [6.0, 5.0, 4.0, 3.0, 2.0]
        assert "total_matches" not in r.json()[0]
        statements.clear()
        r = await search(api.user, body, page=4, per_page=5)
        assert len(statements) == 2
        assert r.status_code == HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE
        assert r.headers["Content-Range"] == "pilots */12"
    finally:
        event.remove(engine, "before_cursor_execute", note)
    assert (await search(api.user, per_page=10001)).status_code == HTTPStatus.UNPROCESSABLE_ENTITY
    assert (await search(api.user, page=0)).status_code == HTTPStatus.UNPROCESSABLE_ENTITY


async def test_search_operators(api: Roles) -> None:
    stamps = await _fleet(api)

    async def count(*specs: dict[str, Any]) -> int:
        r = await search(api.user, {"search": list(specs)})
        assert r.status_code in (HTTPStatus.OK, HTTPStatus.PARTIAL_CONTENT), r.text
        return len(r.json())

    assert await count({"parameter": "Status", "operator": "eq", "value": "Running"}) == 3
    # the same shape of query with another value (statements are built once per shape)
    assert await count({"parameter": "Status", "operator": "eq", "value": "Waiting"}) == 9
    assert await count({"parameter": "GridSite", "operator": "in", "values": ["Site0"]}) == 4
    assert await count({"parameter": "Status", "operator": "neq", "value": "Running"}) == 9
    assert await count({"parameter": "BenchMark", "operator": "gt", "value": 8}) == 3
    assert await count({"parameter": "BenchMark", "operator": "lt", "value": "2"}) == 2
    assert (
        await count({"parameter": "GridSite", "operator": "in", "values": ["Site0", "Site1"]}) == 8
    )
    assert await count({"parameter": "GridSite", "operator": "not in", "values": ["Site0"]}) == 8
    assert await count({"parameter": "PilotStamp", "operator": "like", "value": "fleet0%"}) == 10
    assert await count({"parameter": "PilotStamp", "operator": "not like", "value": "fleet0%"}) == 2
    assert (
        await count({"parameter": "PilotStamp", "operator": "regex", "value": "^fleet1[01]"}) == 2
    )
    assert (
        await count(
            {"parameter": "Queue", "operator": "eq", "value": "q1"},
            {"parameter": "Status", "operator": "eq", "value": "Waiting"},
        )
        == 6
    )
    r = await search(
        api.user,
        {"parameters": ["PilotStamp"], "sort": [{"parameter": "BenchMark", "direction": "desc"}]},
    )
    assert [row["PilotStamp"] for row in r.json()] == list(reversed(stamps))
    r = await search(
        api.user,
        {
            "parameters": ["GridSite"],
            "distinct": True,
            "sort": [{"parameter": "GridSite", "direction": "asc"}],
        },
    )
    assert r.json() == [{"GridSite": "Site0"}, {"GridSite": "Site1"}, {"GridSite": "Site2"}]


async def test_search_errors_are_400(api: Roles) -> None:
    await _fleet(api)
    for body in (
        {"search": [{"parameter": "NoSuchColumn", "operator": "eq", "value": 1}]},
        {"search": [{"parameter": "PilotID", "operator": "eq", "value": "five"}]},
        {"search": [{"parameter": "BenchMark", "operator": "like", "value": "1%"}]},
        {"parameters": ["Nope"]},
        {"sort": [{"parameter": "Nope", "direction": "asc"}]},
        {"search": [{"parameter": "SubmissionTime", "operator": "gt", "value": "yesterday"}]},
    ):
        r = await search(api.user, body)
        assert r.status_code == HTTPStatus.BAD_REQUEST, (body, r.text)
        assert r.json()["detail"]
    r = await search(
        api.user, {"search": [{"parameter": "Status", "operator": "between", "value": 1}]}
    )
    assert r.status_code == HTTPStatus.UNPROCESSABLE_ENTITY


async def test_search_by_time_and_id(api: Roles) -> None:
    await _fleet(api)
    r = await search(
        api.user,
        {
            "search": [
                {"parameter": "SubmissionTime", "operator": "gt", "value": "2000-01-01T00:00:00Z"}
            ]
        },
    )
    assert len(r.json()) == 12
    first = r.json()[0]["PilotID"]
    r = await search(
        api.user, {"search": [{"parameter": "PilotID", "operator": "eq", "value": str(first)}]}
    )
    assert [p["PilotID"] for p in r.json()] == [first]


async def test_times_are_utc_with_z_and_search_back(api: Roles) -> None:
    """As DiracX writes them (`2026-12-06T14:05:35.845465Z`), on every backend, in rows and
    in summary groups; a time read back finds its pilot again."""
    s = await register(api.admin)
    r = await api.admin.patch("/api/pilots/metadata", json={s: {"Status": "Running"}})
    assert r.status_code == HTTPStatus.NO_CONTENT, r.text
    by_stamp = {"parameter": "PilotStamp", "operator": "eq", "value": s}
    [pilot] = (await search(api.admin, {"search": [by_stamp]})).json()
    for name in ("SubmissionTime", "LastUpdateTime"):
        when = datetime.fromisoformat(pilot[name])
        assert pilot[name].endswith("Z"), pilot[name]
        assert abs(datetime.now(UTC) - when) < timedelta(minutes=5)  # aware, and UTC
    exact = {"parameter": "SubmissionTime", "operator": "eq", "value": pilot["SubmissionTime"]}
    assert [p["PilotStamp"] for p in (await search(api.admin, {"search": [exact]})).json()] == [s]
    r = await api.admin.post(
        "/api/pilots/summary", json={"grouping": ["SubmissionTime"], "search": [by_stamp]}
    )
    assert r.json() == [{"SubmissionTime": pilot["SubmissionTime"], "count": 1}]


def test_the_fallback_encoder_writes_times_as_orjson_does() -> None:
    """A lone surrogate makes orjson refuse a page; the json fallback writes the same times."""
    naive = datetime(2026, 12, 6, 14, 5, 35, 845465)
    assert _encode([naive]) == b'["2026-12-06T14:05:35.845465Z"]'
    assert _encode(["\ud800", naive, naive.replace(microsecond=0)]) == (
        b'["\\ud800","2026-12-06T14:05:35.845465Z","2026-12-06T14:05:35Z"]'
    )


async def test_vo_isolation_in_search_and_summary(api: Roles) -> None:
    await _fleet(api)
    await register(api.other_director, vo="dteam")
    assert len((await search(api.user)).json()) == 12
    assert len((await search(api.other_vo)).json()) == 1
    assert len((await search(api.admin)).json()) == 13
    r = await api.other_vo.post("/api/pilots/summary", json={"grouping": ["VO"]})
    assert r.json() == [{"VO": "dteam", "count": 1}]
    r = await api.admin.post("/api/pilots/summary", json={"grouping": ["VO"]})
    assert r.json() == [{"VO": "dteam", "count": 1}, {"VO": "lhcb", "count": 12}]
    # asking for another VO explicitly still returns only one's own
    r = await search(
        api.other_vo, {"search": [{"parameter": "VO", "operator": "eq", "value": "lhcb"}]}
    )
    assert r.json() == []
    # legacy pilots may not read
    assert (await search(api.legacy_pilot)).status_code == HTTPStatus.FORBIDDEN


async def test_summary_grouping_and_filter(api: Roles) -> None:
    await _fleet(api)
    r = await api.user.post(
        "/api/pilots/summary",
        json={
            "grouping": ["Status"],
            "search": [{"parameter": "GridSite", "operator": "eq", "value": "Site0"}],
        },
    )
    assert r.status_code == HTTPStatus.OK
    assert r.json() == [{"Status": "Running", "count": 1}, {"Status": "Waiting", "count": 3}]
    r = await api.user.post("/api/pilots/summary", json={"grouping": ["Nope"]})
    assert r.status_code == HTTPStatus.BAD_REQUEST


# --- jobs and deletion ------------------------------------------------------------------------


async def test_jobs_association_and_jobid_pseudo_parameter(api: Roles) -> None:
    a, b = await register(api.director), await register(api.director)
    r = await api.director.patch("/api/pilots/jobs", json={"pilot_stamp": a, "job_ids": [7, 9]})
    assert r.status_code == HTTPStatus.NO_CONTENT
    # the same job twice is not an error (retries)
    r = await api.director.patch("/api/pilots/jobs", json={"pilot_stamp": a, "job_ids": [9, 11]})
    assert r.status_code == HTTPStatus.NO_CONTENT
    await api.director.patch("/api/pilots/jobs", json={"pilot_stamp": b, "job_ids": [11]})
    r = await api.user.get("/api/pilots/jobs", params={"pilot_stamp": a})
    assert r.json() == {"pilot_stamp": a, "job_ids": [7, 9, 11]}
    r = await search(
        api.user,
        {
            "parameters": ["PilotStamp", "InitialJobID", "CurrentJobID"],
            "search": [{"parameter": "JobID", "operator": "eq", "value": 11}],
            "sort": [{"parameter": "PilotID", "direction": "asc"}],
        },
    )
    assert [p["PilotStamp"] for p in r.json()] == [a, b]
    assert r.json()[0]["InitialJobID"] == 7
    assert r.json()[0]["CurrentJobID"] == 11
    r = await search(
        api.user, {"search": [{"parameter": "JobID", "operator": "in", "values": [7]}]}
    )
    assert [p["PilotStamp"] for p in r.json()] == [a]
    r = await search(
        api.user, {"search": [{"parameter": "JobID", "operator": "eq", "value": 12345}]}
    )
    assert r.status_code == HTTPStatus.OK
    assert r.json() == []
    r = await search(api.user, {"search": [{"parameter": "JobID", "operator": "gt", "value": 1}]})
    assert r.status_code == HTTPStatus.BAD_REQUEST
    # another VO's stamp answers exactly as an unknown one: existence is not revealed
    foreign = await api.other_vo.get("/api/pilots/jobs", params={"pilot_stamp": a})
    unknown = await api.other_vo.get("/api/pilots/jobs", params={"pilot_stamp": "f" * 32})
    assert foreign.status_code == unknown.status_code == HTTPStatus.NOT_FOUND
    assert foreign.json()["detail"]["message"] == unknown.json()["detail"]["message"]


async def test_delete_by_stamps_and_by_age(api: Roles) -> None:
    stamps = await _fleet(api)
    r = await api.director.request("DELETE", "/api/pilots/", json={"pilot_stamps": stamps[:2]})
    assert r.status_code == HTTPStatus.OK
    assert r.json() == {"deleted": 2}
    r = await api.director.request(
        "DELETE", "/api/pilots/", json={"older_than_days": 0, "statuses": ["Running"]}
    )
    assert r.json() == {"deleted": 2}  # fleet00 (Running) went with the first call
    assert len((await search(api.user)).json()) == 8
    other = await register(api.other_director, vo="dteam")
    r = await api.director.request("DELETE", "/api/pilots/", json={"pilot_stamps": [other]})
    assert r.status_code == HTTPStatus.FORBIDDEN
    r = await api.director.request("DELETE", "/api/pilots/", json={"older_than_days": 0})
    assert r.json() == {"deleted": 8}  # only its own VO
    assert len((await search(api.admin)).json()) == 1
    r = await api.director.request("DELETE", "/api/pilots/", json={})
    assert r.status_code == HTTPStatus.BAD_REQUEST
    r = await api.user.request("DELETE", "/api/pilots/", json={"older_than_days": 0})
    assert r.status_code == HTTPStatus.FORBIDDEN
