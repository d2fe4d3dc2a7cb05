"""Bans through HTTP, on every database backend: who may ban, allow and list, for which VO;
what a ban records; expiry; bounded bodies."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from typing import Any

import httpx
from sqlalchemy import update

from server.db.schema import BANS
from server.identity import ADMIN, SITE_MANAGER
from tests.conftest import Roles
from tests.security.pilots import make_pilot

URL = "/api/bans"


def site_manager(api: Roles, vo: str = "lhcb", sub: str = "carol") -> httpx.AsyncClient:
    return api.with_token(api.sut.token(sub, vo, [SITE_MANAGER]))


def target(**fields: Any) -> dict[str, Any]:
    return {"site": "LCG.CERN.cern", **fields}


async def ban(client: httpx.AsyncClient, **fields: Any) -> httpx.Response:
    return await client.post(URL, json={"reason": "downtime", **target(**fields)})


async def bans(client: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    r = await client.get(URL, params=params)
    assert r.status_code == HTTPStatus.OK, r.text
    result: list[dict[str, Any]] = r.json()
    return result


async def test_a_site_manager_bans_lists_and_allows_in_its_vo(api: Roles) -> None:
    manager = site_manager(api)
    before = datetime.now(UTC)
    r = await ban(manager, ce="ce1.cern.ch", reason="  CE draining for an upgrade  ")
    assert r.status_code == HTTPStatus.CREATED, r.text
    made = r.json()
    assert made["vo"] == "lhcb"  # the caller's VO by default
    assert (made["site"], made["ce"], made["queue"]) == ("LCG.CERN.cern", "ce1.cern.ch", None)
    assert made["reason"] == "CE draining for an upgrade"
    assert made["banned_by"] == "carol"
    assert made["banned_at"].endswith("Z")
    banned_at = datetime.fromisoformat(made["banned_at"].replace("Z", "+00:00"))
    assert before - timedelta(seconds=1) <= banned_at <= datetime.now(UTC) + timedelta(seconds=1)
    assert made["until"] is None
    assert made["active"] is True

    for reader in (api.user, api.director, manager, api.admin):
        assert [b["ban_id"] for b in await bans(reader)] == [made["ban_id"]]
    assert await bans(api.other_vo) == []

    r = await manager.post(f"{URL}/allow", json=target(ce="ce1.cern.ch"))
    assert r.status_code == HTTPStatus.OK, r.text
    [lifted] = r.json()
    assert lifted["ban_id"] == made["ban_id"]
    assert lifted["allowed_by"] == "carol"
    assert lifted["active"] is False
    assert await bans(api.user) == []
    history = await bans(api.user, history="true")
    assert [(b["ban_id"], b["allowed_by"]) for b in history] == [(made["ban_id"], "carol")]


async def test_site_ce_and_queue_bans_are_separate_targets(api: Roles) -> None:
    manager = site_manager(api)
    assert (await ban(manager)).status_code == HTTPStatus.CREATED
    assert (await ban(manager, ce="ce1")).status_code == HTTPStatus.CREATED
    assert (await ban(manager, ce="ce1", queue="long")).status_code == HTTPStatus.CREATED
    again = await ban(manager, ce="ce1", queue="long", reason="again")
    assert again.status_code == HTTPStatus.CONFLICT, again.text
    listed = await bans(manager)
    assert [(b["site"], b["ce"], b["queue"]) for b in listed] == [
        ("LCG.CERN.cern", None, None),
        ("LCG.CERN.cern", "ce1", None),
        ("LCG.CERN.cern", "ce1", "long"),
    ]
    # allowing the CE leaves the site's and the queue's bans in force
    r = await manager.post(f"{URL}/allow", json=target(ce="ce1"))
    assert r.status_code == HTTPStatus.OK
    assert [(b["ce"], b["queue"]) for b in await bans(manager)] == [(None, None), ("ce1", "long")]
    # and a target with no ban in force is a 404
    r = await manager.post(f"{URL}/allow", json=target(ce="ce1"))
    assert r.status_code == HTTPStatus.NOT_FOUND, r.text


async def test_an_expired_ban_no_longer_applies(api: Roles) -> None:
    manager = site_manager(api)
    until = datetime.now(UTC) + timedelta(hours=2)
    r = await manager.post(
        URL, json={**target(), "reason": "short downtime", "until": until.isoformat()}
    )
    assert r.status_code == HTTPStatus.CREATED, r.text
    assert r.json()["until"].startswith(until.strftime("%Y-%m-%dT%H:%M"))
    assert len(await bans(manager)) == 1
    # time passes: the ban's end is now in the past
    async with api.sut.app.state.ctx.db.transaction() as conn:
        await conn.execute(
            update(BANS).values(Until=datetime.now(UTC).replace(tzinfo=None) - timedelta(minutes=1))
        )
    assert await bans(manager) == []
    [old] = await bans(manager, history="true")
    assert old["active"] is False
    assert old["allowed_by"] is None
    # nothing in force to allow; the target can be banned again
    r = await manager.post(f"{URL}/allow", json=target())
    assert r.status_code == HTTPStatus.NOT_FOUND
    assert (await ban(manager)).status_code == HTTPStatus.CREATED
    assert len(await bans(manager)) == 1


async def test_until_in_the_past_is_refused(api: Roles) -> None:
    past = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    r = await site_manager(api).post(URL, json={**target(), "reason": "x", "until": past})
    assert r.status_code == HTTPStatus.BAD_REQUEST, r.text


async def test_one_vo_cannot_ban_allow_or_list_anothers(api: Roles) -> None:
    theirs = site_manager(api, "dteam", "dave")
    assert (await ban(theirs, vo="dteam")).status_code == HTTPStatus.CREATED
    mine = site_manager(api, "lhcb")
    r = await ban(mine, vo="dteam")
    assert r.status_code == HTTPStatus.FORBIDDEN, r.text
    r = await mine.post(f"{URL}/allow", json=target(vo="dteam"))
    assert r.status_code == HTTPStatus.FORBIDDEN, r.text
    for client in (mine, api.user, api.director):
        r = await client.get(URL, params={"vo": "dteam"})
        assert r.status_code == HTTPStatus.FORBIDDEN, r.text
        assert await bans(client) == []
        assert await bans(client, history="true") == []
    # dteam's ban is untouched; the administrator sees and manages every VO's
    assert [b["vo"] for b in await bans(api.admin)] == ["dteam"]
    assert [b["vo"] for b in await bans(theirs)] == ["dteam"]
    r = await api.admin.post(f"{URL}/allow", json=target(vo="dteam"))
    assert r.status_code == HTTPStatus.OK, r.text
    assert r.json()[0]["allowed_by"] == "admin"
    r = await ban(api.admin, vo="dteam", ce="ce.dteam")
    assert r.status_code == HTTPStatus.CREATED, r.text
    # an administrator still names a VO this server serves
    assert (await ban(api.admin, vo="atlas")).status_code == HTTPStatus.BAD_REQUEST


async def test_a_service_token_for_several_vos_manages_each(api: Roles) -> None:
    both = api.with_token(api.sut.token("ops", "lhcb", [SITE_MANAGER], extra_vos=["dteam"]))
    assert (await ban(both, vo="dteam")).status_code == HTTPStatus.CREATED
    assert (await ban(both)).status_code == HTTPStatus.CREATED
    assert sorted(b["vo"] for b in await bans(both)) == ["dteam", "lhcb"]


async def test_who_may_ban_and_allow(api: Roles) -> None:
    pilot = await make_pilot(api, "lhcb")
    refused = {
        "user": api.user,
        "director": api.director,
        "legacy-pilot": api.legacy_pilot,
        "pilot": api.with_token(pilot.access_token),
    }
    for who, client in refused.items():
        for path in (URL, f"{URL}/allow"):
            r = await client.post(path, json={"reason": "x", **target()})
            assert r.status_code == HTTPStatus.FORBIDDEN, (who, path, r.text)
    # pilots and GenericPilot tokens do not read the list either
    for client in (refused["pilot"], refused["legacy-pilot"]):
        assert (await client.get(URL)).status_code == HTTPStatus.FORBIDDEN
    for client in (api.anonymous,):
        assert (await client.get(URL)).status_code == HTTPStatus.UNAUTHORIZED
        assert (await ban(client)).status_code == HTTPStatus.UNAUTHORIZED
    admin_manager = api.with_token(api.sut.token("root", "lhcb", [ADMIN]))
    assert (await ban(admin_manager)).status_code == HTTPStatus.CREATED


async def test_bodies_are_bounded_and_checked(api: Roles) -> None:
    manager = site_manager(api)
    bad_bodies = [
        {"site": "S"},  # no reason
        {"site": "S", "reason": "   "},  # a blank reason
        {"site": "S", "reason": "x" * 256},
        {"site": "S" * 129, "reason": "x"},
        {"site": "S", "ce": "c" * 129, "reason": "x"},
        {"site": "S", "ce": "c", "queue": "q" * 129, "reason": "x"},
        {"site": "S", "queue": "q", "reason": "x"},  # a queue without its CE
        {"site": "S\nforged log line", "reason": "x"},
        {"site": "S", "reason": "line\x00"},
        {"site": "", "reason": "x"},
        {"site": "S", "reason": "x", "vo": "v" * 129},
        {"site": "S", "reason": "x", "until": "9999-12-31T23:59:59Z"},
        {"site": "S", "reason": "x", "extra": 1},
        {"site": ["S"], "reason": "x"},
    ]
    for body in bad_bodies:
        r = await manager.post(URL, json=body)
        assert r.status_code == HTTPStatus.UNPROCESSABLE_ENTITY, (body, r.text)
    r = await manager.get(URL, params={"vo": "v" * 129})
    assert r.status_code == HTTPStatus.UNPROCESSABLE_ENTITY
    assert await bans(manager, history="true") == []
    # the longest values that fit are stored whole
    long = {"site": "S" * 128, "ce": "c" * 128, "queue": "q" * 128, "reason": "é" * 255}
    r = await manager.post(URL, json=long)
    assert r.status_code == HTTPStatus.CREATED, r.text
    assert {k: r.json()[k] for k in long} == long
