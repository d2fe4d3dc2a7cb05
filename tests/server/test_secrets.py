"""Pilot secrets through HTTP on every backend: minting, listing, changing, revoking, purging."""

from __future__ import annotations

import re
import time
import uuid
from http import HTTPStatus
from typing import Any

import httpx

from server.logic import secrets as logic
from tests.conftest import Roles


def stamp() -> str:
    return uuid.uuid4().hex


async def register(client: httpx.AsyncClient, vo: str = "lhcb", **fields: Any) -> str:
    s = fields.pop("pilot_stamp", stamp())
    r = await client.post("/api/pilots/", json={"pilot_stamp": s, "vo": vo, **fields})
    assert r.status_code == HTTPStatus.CREATED, r.text
    return s


async def mint(client: httpx.AsyncClient, **body: Any) -> list[dict[str, Any]]:
    r = await client.post("/api/pilots/secrets", json={"vo": "lhcb", **body})
    assert r.status_code == HTTPStatus.CREATED, r.text
    minted: list[dict[str, Any]] = r.json()
    return minted


async def listing(api: Roles, **params: Any) -> list[dict[str, Any]]:
    r = await api.admin.get("/api/pilots/secrets", params=params)
    assert r.status_code == HTTPStatus.OK, r.text
    found: list[dict[str, Any]] = r.json()
    return found


async def test_mint_n_unbound_with_diracx_shape(api: Roles) -> None:
    before = int(time.time())
    minted = await mint(api.director, n=3, expiration_minutes=10, pilot_secret_use_count_max=2)
    assert len(minted) == 3
    assert len({m["pilot_secret"] for m in minted}) == 3
    for m in minted:
        assert re.fullmatch(r"[0-9a-f]{64}", m["pilot_secret"])
        assert m["pilot_stamp"] is None
        assert before + 600 - 2 <= m["pilot_secret_expires_in"] <= int(time.time()) + 600
    infos = await listing(api)
    assert len(infos) == 3
    assert {i["remaining_uses"] for i in infos} == {2}
    assert all(i["vos"] == ["lhcb"] and i["pilot_stamps"] == [] for i in infos)


async def test_defaults_are_one_unlimited_secret(api: Roles) -> None:
    [m] = await mint(api.admin)
    assert m["pilot_secret_expires_in"] is None
    [info] = await listing(api)
    assert info["remaining_uses"] is None
    assert info["expires_at"] is None
    assert info["revoked"] is False


async def test_bound_secrets_follow_stamps_in_order(api: Roles) -> None:
    stamps = [await register(api.director) for _ in range(3)]
    minted = await mint(api.director, pilot_stamps=stamps, sites=["LCG.CERN.cern"], ces=["ce1"])
    assert [m["pilot_stamp"] for m in minted] == stamps
    [info] = await listing(api, pilot_stamp=stamps[1])
    assert info["pilot_stamps"] == [stamps[1]]
    assert info["sites"] == ["LCG.CERN.cern"]
    assert info["ces"] == ["ce1"]


async def test_listing_pages(api: Roles) -> None:
    await mint(api.admin, n=3)
    assert len(await listing(api, page=2, per_page=2)) == 1
    assert await listing(api, page=10**9, per_page=10_000) == []


async def test_listing_never_shows_the_secret(api: Roles) -> None:
    [m] = await mint(api.admin)
    r = await api.admin.get("/api/pilots/secrets")
    assert m["pilot_secret"] not in r.text
    assert "hash" not in r.text.lower()


async def test_mint_ten_thousand(api: Roles) -> None:
    minted = await mint(api.director, n=10_000)
    assert len({m["pilot_secret"] for m in minted}) == 10_000


async def test_mint_refusals(api: Roles) -> None:
    body = {"vo": "lhcb"}
    cases: list[tuple[httpx.AsyncClient, dict[str, Any], int]] = [
        (api.other_director, body, HTTPStatus.FORBIDDEN),  # another VO's director
        (api.director, {"vo": "lhcb", "vos": ["dteam"]}, HTTPStatus.FORBIDDEN),
        (api.user, body, HTTPStatus.FORBIDDEN),  # a normal user
        (api.legacy_pilot, body, HTTPStatus.FORBIDDEN),
        (api.anonymous, body, HTTPStatus.UNAUTHORIZED),
        (api.admin, {"vo": "nope"}, HTTPStatus.BAD_REQUEST),
        (api.admin, {"vo": "lhcb", "n": 10_001}, HTTPStatus.UNPROCESSABLE_ENTITY),
        (api.admin, {"vo": "lhcb", "n": 0}, HTTPStatus.UNPROCESSABLE_ENTITY),
        (api.admin, {"vo": "lhcb", "n": 2, "pilot_stamps": ["a"]}, HTTPStatus.BAD_REQUEST),
        (api.admin, {"vo": "lhcb", "pilot_stamps": ["a", "a"]}, HTTPStatus.BAD_REQUEST),
        (api.admin, {"vo": "lhcb", "expiration_minutes": 0}, HTTPStatus.UNPROCESSABLE_ENTITY),
        (api.admin, {"vo": "lhcb", "unknown": 1}, HTTPStatus.UNPROCESSABLE_ENTITY),
    ]
    for client, b, expected in cases:
        r = await client.post("/api/pilots/secrets", json=b)
        assert r.status_code == expected, (b, r.status_code, r.text)
    assert await listing(api) == []


async def test_cannot_bind_another_vos_pilot(api: Roles) -> None:
    theirs = await register(api.other_director, vo="dteam")
    r = await api.director.post(
        "/api/pilots/secrets", json={"vo": "lhcb", "pilot_stamps": [theirs]}
    )
    assert r.status_code == HTTPStatus.FORBIDDEN
    assert await listing(api) == []


async def test_only_admins_list_and_patch(api: Roles) -> None:
    await mint(api.admin)
    for client in (api.director, api.user, api.legacy_pilot):
        assert (await client.get("/api/pilots/secrets")).status_code == HTTPStatus.FORBIDDEN
    [info] = await listing(api)
    r = await api.director.patch(f"/api/pilots/secrets/{info['secret_id']}", json={})
    assert r.status_code == HTTPStatus.FORBIDDEN


async def test_patch_constraints(api: Roles) -> None:
    await mint(api.admin, pilot_secret_use_count_max=1, sites=["A"])
    [info] = await listing(api)
    url = f"/api/pilots/secrets/{info['secret_id']}"
    r = await api.admin.patch(
        url, json={"pilot_secret_use_count_max": 5, "expiration_minutes": 60, "queues": ["q"]}
    )
    assert r.status_code == HTTPStatus.OK, r.text
    changed = r.json()
    assert changed["remaining_uses"] == 5
    assert changed["queues"] == ["q"]
    assert changed["sites"] == ["A"]  # untouched
    assert changed["expires_at"] > time.time() + 3500
    r = await api.admin.patch(url, json={"pilot_secret_use_count_max": None, "sites": None})
    assert r.json()["remaining_uses"] is None
    assert r.json()["sites"] == []
    assert (
        await api.admin.patch("/api/pilots/secrets/999999", json={"queues": []})
    ).status_code == (HTTPStatus.NOT_FOUND)


async def test_revoke_by_id_and_by_stamp(api: Roles) -> None:
    s1, s2 = await register(api.director), await register(api.director)
    await mint(api.director, pilot_stamps=[s1, s2])
    await mint(api.director, n=1)
    infos = await listing(api)
    unbound = next(i for i in infos if not i["pilot_stamps"])
    r = await api.director.post("/api/pilots/secrets/revoke", json={"pilot_stamps": [s1]})
    assert r.status_code == HTTPStatus.OK
    assert r.json() == {"revoked": 1}
    r = await api.admin.post(
        "/api/pilots/secrets/revoke", json={"secret_ids": [unbound["secret_id"]]}
    )
    assert r.json() == {"revoked": 1}
    revoked = {tuple(i["pilot_stamps"]): i["revoked"] for i in await listing(api)}
    assert revoked == {(s1,): True, (s2,): False, (): True}
    # revoking again changes nothing
    r = await api.director.post("/api/pilots/secrets/revoke", json={"pilot_stamps": [s1]})
    assert r.json() == {"revoked": 0}


async def test_revoke_is_vo_scoped(api: Roles) -> None:
    s = await register(api.director)
    await mint(api.director, pilot_stamps=[s])
    for client in (api.other_director, api.legacy_pilot):
        r = await client.post("/api/pilots/secrets/revoke", json={"pilot_stamps": [s]})
        assert r.status_code == HTTPStatus.FORBIDDEN
    r = await api.user.post("/api/pilots/secrets/revoke", json={"pilot_stamps": [s]})
    assert r.status_code == HTTPStatus.FORBIDDEN
    r = await api.director.post("/api/pilots/secrets/revoke", json={})
    assert r.status_code == HTTPStatus.BAD_REQUEST
    assert [i["revoked"] for i in await listing(api)] == [False]


async def test_bulk_registration_mints_bound_secrets(api: Roles) -> None:
    stamps = [stamp() for _ in range(5)]
    r = await api.director.post(
        "/api/pilots/bulk",
        json={
            "vo": "lhcb",
            "pilots": [{"pilot_stamp": s} for s in stamps],
            "mint_secrets": True,
            "secret_constraints": {"pilot_secret_use_count_max": 1},
        },
    )
    assert r.status_code == HTTPStatus.CREATED, r.text
    assert [m["pilot_stamp"] for m in r.json()["secrets"]] == stamps
    infos = await listing(api)
    assert sorted(s for i in infos for s in i["pilot_stamps"]) == sorted(stamps)


async def test_purge_drops_expired_used_up_and_revoked(api: Roles) -> None:
    from datetime import timedelta

    from server.clock import utcnow

    await mint(api.admin, expiration_minutes=1)
    await mint(api.admin, pilot_secret_use_count_max=1)
    await mint(api.admin)
    infos = await listing(api)
    used = next(i for i in infos if i["remaining_uses"] == 1)
    await api.admin.patch(
        f"/api/pilots/secrets/{used['secret_id']}", json={"pilot_secret_use_count_max": 0}
    )
    ctx = api.sut.app.state.ctx
    assert await logic.purge(ctx, utcnow()) == 1  # the used-up one
    assert await logic.purge(ctx, utcnow() + timedelta(minutes=2)) == 1  # the expired one
    [left] = await listing(api)
    assert left["expires_at"] is None
    assert left["remaining_uses"] is None


async def test_maintenance_command_purges_through_the_cli(api: Roles) -> None:
    """The real `site-director maintenance` process against the same database."""
    import asyncio
    import sys
    from pathlib import Path

    await mint(api.admin, pilot_secret_use_count_max=1)
    await mint(api.admin)
    [used, _] = sorted(await listing(api), key=lambda i: i["remaining_uses"] is None)
    await api.admin.post("/api/pilots/secrets/revoke", json={"secret_ids": [used["secret_id"]]})
    settings = api.sut.settings
    script = Path(sys.executable).parent / "site-director"
    proc = await asyncio.create_subprocess_exec(
        str(script),
        "maintenance",
        "--db",
        settings.database_url,
        "--data-dir",
        str(settings.data_dir),
        "--log-retention-days",
        "30",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode == 0, err.decode()
    assert "secrets=1 " in out.decode()
    [left] = await listing(api)
    assert left["remaining_uses"] is None
