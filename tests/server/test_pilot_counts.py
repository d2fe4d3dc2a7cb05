"""Pilot counts kept by triggers (SQLite, migration 0009, `server.db.pilot_counts`): after each
kind of write the counts are the pilots' own, a summary answered from them is the scan's answer
for every grouping and filter, and the migration fills them from the pilots there are and
downgrades. On PostgreSQL and MariaDB the summary still scans: the summary test runs there too."""

from __future__ import annotations

import uuid
from http import HTTPStatus
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncConnection

from server.db import pilot_counts
from server.db.engine import Database
from server.db.migrate import alembic_config, upgrade
from server.db.pilots import COLUMNS, _summary_statement
from server.db.search import bound_values, shape
from server.identity import Identity, identity_from_token
from server.logic.pilots import scoped
from server.models import SummaryParams
from tests.conftest import Roles
from tests.server.test_pilots import register

KEY = ", ".join(f'"{k}"' for k in pilot_counts.KEYS)
SCAN = f'SELECT {KEY}, count(*) FROM "PilotAgents" GROUP BY {KEY} ORDER BY {KEY}'  # noqa: S608
COUNTS = f'SELECT {KEY}, "N" FROM "PilotCounts" WHERE "N" > 0 ORDER BY {KEY}'  # noqa: S608


def sqlite_only(api: Roles) -> None:
    if api.sut.backend != "sqlite":
        pytest.skip("pilot counts are kept on SQLite only (server/db/pilot_counts.py says why)")


async def rows(conn: AsyncConnection, query: str) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in await conn.execute(text(query))]


async def assert_counts_are_the_pilots(api: Roles) -> list[tuple[Any, ...]]:
    async with api.sut.app.state.ctx.db.engine.connect() as conn:
        scan = await rows(conn, SCAN)
        assert await rows(conn, COUNTS) == scan
    return scan


async def patch(client: httpx.AsyncClient, updates: dict[str, dict[str, Any]]) -> None:
    r = await client.patch("/api/pilots/metadata", json=updates)
    assert r.status_code == HTTPStatus.NO_CONTENT, r.text


async def test_every_kind_of_write_keeps_the_counts_the_pilots_own(api: Roles) -> None:
    sqlite_only(api)
    a = [await register(api.admin, grid_site="LCG.A.ch", destination_site="ce-a") for _ in range(3)]
    b = await register(api.admin, vo="dteam", grid_site="LCG.B.de")
    assert (await assert_counts_are_the_pilots(api))[0][-1] == 1  # dteam's one pilot
    bulk = [uuid.uuid4().hex for _ in range(5)]
    r = await api.director.post(
        "/api/pilots/bulk",
        json={
            "vo": "lhcb",
            "pilots": [{"pilot_stamp": s, "grid_site": "LCG.A.ch", "queue": "q"} for s in bulk],
            "mint_secrets": True,
        },
    )
    assert r.status_code == HTTPStatus.CREATED, r.text
    await assert_counts_are_the_pilots(api)
    # status changes, one and many, and the key columns themselves
    await patch(api.admin, {a[0]: {"Status": "Running"}, bulk[0]: {"Status": "Running"}})
    await patch(api.admin, {a[0]: {"Status": "Done"}, a[1]: {"Status": "Aborted"}})
    await patch(api.admin, {bulk[1]: {"GridSite": "LCG.C.fr", "DestinationSite": "ce-c"}})
    await patch(api.admin, {bulk[2]: {"Queue": "short", "Status": "Waiting"}})
    await patch(api.admin, {bulk[3]: {"Status": "Submitted"}})  # unchanged: no count moves
    await patch(api.admin, {bulk[4]: {"BenchMark": 12.5}})  # not a key column
    scan = await assert_counts_are_the_pilots(api)
    assert ("lhcb", "LCG.A.ch", "ce-a", "Unknown", "Done", 1) in scan
    # deletions: by stamps, then by age (as maintenance deletes)
    r = await api.admin.request("DELETE", "/api/pilots/", json={"pilot_stamps": [a[2], b]})
    assert (r.status_code, r.json()) == (HTTPStatus.OK, {"deleted": 2}), r.text
    await assert_counts_are_the_pilots(api)
    r = await api.admin.request("DELETE", "/api/pilots/", json={"older_than_days": 0})
    assert (r.status_code, r.json()) == (HTTPStatus.OK, {"deleted": 7}), r.text
    assert await assert_counts_are_the_pilots(api) == []


GROUPINGS = [
    ["GridSite", "Status"],
    ["GridSite", "DestinationSite", "Queue"],
    ["GridSite", "DestinationSite", "Status"],
    ["Status"],
    ["VO", "Queue"],
    ["GridSite", "GridType"],  # not a count key: scanned
]
FILTERS: list[list[dict[str, Any]]] = [
    [],
    [{"parameter": "GridSite", "operator": "eq", "value": "LCG.A.ch"}],
    [{"parameter": "Status", "operator": "in", "values": ["Running", "Done"]}],
    [{"parameter": "Status", "operator": "not in", "values": ["Done"]}],
    [{"parameter": "GridSite", "operator": "neq", "value": "LCG.B.de"}],
    [{"parameter": "GridSite", "operator": "gt", "value": "LCG.A.zz"}],
    [{"parameter": "Queue", "operator": "like", "value": "sh%"}],
    [{"parameter": "DestinationSite", "operator": "regex", "value": "^ce-[ab]$"}],
    [{"parameter": "BenchMark", "operator": "lt", "value": 1}],  # not a count key: scanned
    [{"parameter": "Status", "operator": "eq", "value": "Nowhere"}],  # nothing
]


async def scanned(api: Roles, client: httpx.AsyncClient, body: dict[str, Any]) -> Any:
    """The summary as the scan of the pilots answers it, for the client's identity."""
    params = SummaryParams.model_validate(body)
    identity = _identity_of(api, client)
    specs = scoped(list(params.search), identity)
    async with api.sut.app.state.ctx.db.engine.connect() as conn:
        result = await conn.execute(
            _summary_statement(tuple(params.grouping), shape(specs)), bound_values(COLUMNS, specs)
        )
        return [dict(zip(result.keys(), row, strict=True)) for row in result.all()]


def _identity_of(api: Roles, client: httpx.AsyncClient) -> Identity:
    token = client.headers["authorization"].removeprefix("Bearer ")
    return identity_from_token(api.sut.app.state.ctx.keys, token)


@pytest.mark.parametrize("grouping", GROUPINGS, ids="+".join)
async def test_a_summary_is_the_scan_s_answer_for_every_grouping_and_filter(
    api: Roles, grouping: list[str]
) -> None:
    for vo, site, ce, queue in [
        ("lhcb", "LCG.A.ch", "ce-a", "long"),
        ("lhcb", "LCG.A.ch", "ce-b", "short"),
        ("lhcb", "LCG.B.de", "ce-c", "long"),
        ("dteam", "LCG.A.ch", "ce-a", "long"),
    ]:
        for status in ("Running", "Done", "Submitted"):
            s = await register(api.admin, vo=vo, grid_site=site, destination_site=ce)
            await patch(api.admin, {s: {"Status": status, "Queue": queue}})
    for search in FILTERS:
        body = {"grouping": grouping, "search": search}
        for client in (api.admin, api.user, api.other_vo):
            r = await client.post("/api/pilots/summary", json=body)
            assert r.status_code == HTTPStatus.OK, (body, r.text)
            assert r.json() == await scanned(api, client, body), body


LATE = {"ce": "ce-b", "site": "B", "status": "Done"}


def _downgrade(connection: Connection, revision: str) -> None:
    from alembic import command

    command.downgrade(alembic_config(connection), revision)


async def test_the_migration_fills_the_counts_from_the_pilots_and_downgrades(
    tmp_path: Path,
) -> None:
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'counts.db'}")
    insert = text(
        'INSERT INTO "PilotAgents" ("InitialJobID", "CurrentJobID", "PilotJobReference", '
        '"PilotStamp", "DestinationSite", "Queue", "GridSite", "VO", "GridType", "BenchMark", '
        '"Status", "StatusReason", "AccountingSent") VALUES (0, 0, \'\', :stamp, :ce, \'q\', '
        ":site, 'lhcb', 'DIRAC', 0, :status, '', 0)"
    )
    pilots = [("ce-a", "A", "Running")] * 3 + [("ce-a", "A", "Done"), ("ce-b", "B", "Running")]
    try:
        await upgrade(database, "0008")
        async with database.engine.begin() as conn:
            for ce, site, status in pilots:
                values = {"stamp": uuid.uuid4().hex, "ce": ce, "site": site, "status": status}
                await conn.execute(insert, values)
        await upgrade(database)  # to head: 0009
        async with database.engine.begin() as conn:
            scan = await rows(conn, SCAN)
            assert scan == [
                ("lhcb", "A", "ce-a", "q", "Done", 1),
                ("lhcb", "A", "ce-a", "q", "Running", 3),
                ("lhcb", "B", "ce-b", "q", "Running", 1),
            ]
            assert await rows(conn, COUNTS) == scan
            await conn.execute(
                insert, {"stamp": "late", "ce": "ce-b", "site": "B", "status": "Done"}
            )
            assert await rows(conn, COUNTS) == await rows(conn, SCAN)
        async with database.engine.begin() as conn:
            await conn.run_sync(_downgrade, "0008")
        async with database.engine.begin() as conn:
            left = await rows(conn, "SELECT name FROM sqlite_master WHERE name LIKE '%ounts%'")
            assert left == []  # the table and its three triggers
            await conn.execute(
                insert, {"stamp": "after", "ce": "ce-b", "site": "B", "status": "Done"}
            )
        await upgrade(database)  # and up again: filled from the pilots, the late ones too
        async with database.engine.begin() as conn:
            assert await rows(conn, COUNTS) == await rows(conn, SCAN)
            assert ("lhcb", "B", "ce-b", "q", "Done", 2) in await rows(conn, COUNTS)
    finally:
        await database.close()


async def test_on_sqlite_a_summary_by_count_keys_is_read_from_the_counts(api: Roles) -> None:
    """The counts, not the pilots, answer (a count set by hand shows); other groupings scan."""
    sqlite_only(api)
    site = f"LCG.{uuid.uuid4().hex[:8]}.ch"  # the module's other tests' pilots left out
    await register(api.admin, grid_site=site)
    only = [{"parameter": "GridSite", "operator": "eq", "value": site}]
    by_status = {"grouping": ["GridSite", "Status"], "search": only}
    r = await api.admin.post("/api/pilots/summary", json=by_status)
    assert r.json() == [{"GridSite": site, "Status": "Submitted", "count": 1}]
    count = text('UPDATE "PilotCounts" SET "N" = :n WHERE "GridSite" = :site')
    async with api.sut.app.state.ctx.db.engine.begin() as conn:
        await conn.execute(count, {"n": 5, "site": site})
    try:
        r = await api.admin.post("/api/pilots/summary", json=by_status)
        assert r.json() == [{"GridSite": site, "Status": "Submitted", "count": 5}]
        by_type = {"grouping": ["GridSite", "GridType"], "search": only}
        r = await api.admin.post("/api/pilots/summary", json=by_type)
        assert r.json() == [{"GridSite": site, "GridType": "DIRAC", "count": 1}]
    finally:  # the next test starts from true counts (the reset deletes pilots, not counts)
        async with api.sut.app.state.ctx.db.engine.begin() as conn:
            await conn.execute(count, {"n": 1, "site": site})
