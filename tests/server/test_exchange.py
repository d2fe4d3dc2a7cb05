"""The secret exchange through HTTP on every backend: every constraint, every refusal, the
vacuum case, and the use count under concurrency."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from http import HTTPStatus
from typing import Any

import httpx
from sqlalchemy import update

from server.clock import utcnow
from server.db.schema import SECRETS
from tests.conftest import LiveServer, Roles

REFUSED = {"detail": "Invalid credentials"}
EXCHANGE = "/api/auth/secret-exchange"


def stamp() -> str:
    return uuid.uuid4().hex


async def register_bulk(
    api: Roles,
    client: httpx.AsyncClient | None = None,
    vo: str = "lhcb",
    mint: dict[str, Any] | None = None,
    **pilot: Any,
) -> tuple[str, str | None]:
    """Register one pilot the director's way; returns its stamp and (if minted) its secret."""
    s = pilot.pop("pilot_stamp", stamp())
    body: dict[str, Any] = {"vo": vo, "pilots": [{"pilot_stamp": s, **pilot}]}
    if mint is not None:
        body |= {"mint_secrets": True, "secret_constraints": mint}
    r = await (client or api.director).post("/api/pilots/bulk", json=body)
    assert r.status_code == HTTPStatus.CREATED, r.text
    secrets = r.json()["secrets"]
    return s, (secrets[0]["pilot_secret"] if secrets else None)


async def mint(api: Roles, **body: Any) -> str:
    r = await api.admin.post("/api/pilots/secrets", json={"vo": "lhcb", **body})
    assert r.status_code == HTTPStatus.CREATED, r.text
    secret: str = r.json()[0]["pilot_secret"]
    return secret


async def exchange(api: Roles, s: str, secret: str, **extra: Any) -> httpx.Response:
    return await api.anonymous.post(
        EXCHANGE, json={"pilot_stamp": s, "pilot_secret": secret, **extra}
    )


async def assert_refused(api: Roles, s: str, secret: str, **extra: Any) -> None:
    r = await exchange(api, s, secret, **extra)
    assert r.status_code == HTTPStatus.UNAUTHORIZED, r.text
    assert r.json() == REFUSED


async def test_bound_secret_gives_a_pilot_token(api: Roles) -> None:
    s, secret = await register_bulk(api, mint={})
    assert secret is not None
    r = await exchange(api, s, secret)
    assert r.status_code == HTTPStatus.OK, r.text
    assert r.headers["cache-control"] == "no-store"
    body = r.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == api.sut.settings.pilot_token_lifetime
    claims = api.sut.keys.verify(body["access_token"], typ="at+jwt")
    assert claims["sub"] == f"lhcb:{s}"
    assert claims["vo"] == "lhcb"
    assert claims["pilot_stamp"] == s
    assert claims["iss"] == api.sut.settings.issuer
    assert claims["exp"] - claims["iat"] == body["expires_in"]
    assert "dirac_properties" not in claims
    refresh = api.sut.keys.verify(body["refresh_token"], typ="rt+jwt")
    assert refresh["fam"] == claims["fam"]
    # the token works for the pilot's own record, and nothing else
    pilot = api.with_token(body["access_token"])
    r = await pilot.patch("/api/pilots/metadata", json={s: {"Status": "Running"}})
    assert r.status_code == HTTPStatus.NO_CONTENT, r.text
    other, _ = await register_bulk(api)
    r = await pilot.patch("/api/pilots/metadata", json={other: {"Status": "Running"}})
    assert r.status_code == HTTPStatus.FORBIDDEN


async def test_each_exchange_starts_a_new_family(api: Roles) -> None:
    s, secret = await register_bulk(api, mint={"pilot_secret_use_count_max": 2})
    assert secret is not None
    families = set()
    for _ in range(2):
        r = await exchange(api, s, secret)
        families.add(api.sut.keys.verify(r.json()["access_token"])["fam"])
    assert len(families) == 2


async def test_wrong_or_unknown_secret(api: Roles) -> None:
    s, secret = await register_bulk(api, mint={})
    assert secret is not None
    await assert_refused(api, s, "0" * 64)
    await assert_refused(api, s, secret.upper())
    await assert_refused(api, s, "not-hex")


async def test_bound_to_another_stamp(api: Roles) -> None:
    _, secret = await register_bulk(api, mint={})
    other, _ = await register_bulk(api)
    assert secret is not None
    await assert_refused(api, other, secret)
    await assert_refused(api, stamp(), secret, vo="lhcb", grid_type="", grid_site="", status="")


async def test_revoked_secret(api: Roles) -> None:
    s, secret = await register_bulk(api, mint={})
    assert secret is not None
    r = await api.director.post("/api/pilots/secrets/revoke", json={"pilot_stamps": [s]})
    assert r.status_code == HTTPStatus.OK
    await assert_refused(api, s, secret)


async def test_expired_secret_has_no_leeway(api: Roles) -> None:
    s, secret = await register_bulk(api, mint={"expiration_minutes": 5})
    assert secret is not None
    async with api.sut.app.state.ctx.db.transaction() as conn:
        await conn.execute(update(SECRETS).values(ExpiresAt=utcnow() - timedelta(seconds=1)))
    await assert_refused(api, s, secret)


async def test_use_count(api: Roles) -> None:
    s, secret = await register_bulk(api, mint={"pilot_secret_use_count_max": 2})
    assert secret is not None
    for _ in range(2):
        assert (await exchange(api, s, secret)).status_code == HTTPStatus.OK
    await assert_refused(api, s, secret)
    [info] = (await api.admin.get("/api/pilots/secrets")).json()
    assert info["remaining_uses"] == 0
    assert info["last_used_at"] is not None


async def test_a_refused_exchange_spends_no_use(api: Roles) -> None:
    """On SQLite and PostgreSQL one UPDATE reads the secret and spends the use before the
    constraints are checked; a refusal must roll that back: the secret keeps its last use,
    whether the refusals come one by one or race the good exchange."""
    place = {"grid_site": "LCG.CERN.cern", "destination_site": "ce1.cern.ch", "queue": "long"}
    s, _ = await register_bulk(api, **place)
    other, _ = await register_bulk(api, **place)
    secret = await mint(
        api, pilot_stamps=[s], sites=["LCG.CERN.cern"], pilot_secret_use_count_max=1
    )
    wrong_site = await mint(
        api, pilot_stamps=[s], sites=["LCG.RAL.uk"], pilot_secret_use_count_max=1
    )
    for _ in range(3):
        await assert_refused(api, other, secret)  # bound to another stamp
        await assert_refused(api, s, wrong_site)  # the pilot's site is not allowed
    vacuum = await mint(api, sites=["VAC.Good.uk"], pilot_secret_use_count_max=1)
    await assert_refused(
        api, stamp(), vacuum, vo="lhcb", grid_type="", grid_site="VAC.Bad.uk", status=""
    )
    ok = await exchange(
        api, stamp(), vacuum, vo="lhcb", grid_type="", grid_site="VAC.Good.uk", status=""
    )
    assert ok.status_code == HTTPStatus.OK
    # twenty refused attempts racing the one good one: it still gets the last use
    bad = {"pilot_stamp": other, "pilot_secret": secret}
    good = {"pilot_stamp": s, "pilot_secret": secret}
    bodies = [bad] * 10 + [good] + [bad] * 10
    responses = await asyncio.gather(*(api.anonymous.post(EXCHANGE, json=b) for b in bodies))
    codes = [r.status_code for r in responses]
    assert codes[10] == HTTPStatus.OK
    assert codes.count(HTTPStatus.OK) == 1
    await assert_refused(api, s, secret)  # and then it is spent


async def test_secret_of_another_vo(api: Roles) -> None:
    s, _ = await register_bulk(api)
    secret = await mint(api, vo="dteam")
    await assert_refused(api, s, secret)
    # bound to the stamp, but for another VO than the pilot's: refused all the same
    r = await api.admin.post("/api/pilots/secrets", json={"vo": "dteam", "pilot_stamps": [s]})
    assert r.status_code == HTTPStatus.FORBIDDEN  # minting checks the pilot's VO already


async def test_registered_pilot_gets_its_own_vo(api: Roles) -> None:
    s, _ = await register_bulk(api, client=api.other_director, vo="dteam")
    secret = await mint(api, vo="lhcb", vos=["dteam"], pilot_stamps=[s])
    r = await exchange(api, s, secret, vo="lhcb")  # the body's VO does not count
    assert r.status_code == HTTPStatus.OK
    assert api.sut.keys.verify(r.json()["access_token"])["vo"] == "dteam"


async def test_site_ce_queue_constraints(api: Roles) -> None:
    place = {"grid_site": "LCG.CERN.cern", "destination_site": "ce1.cern.ch", "queue": "long"}
    s, _ = await register_bulk(api, **place)
    for constraint in (
        {"sites": ["LCG.RAL.uk"]},
        {"ces": ["ce2.cern.ch"]},
        {"queues": ["short"]},
        {"sites": ["LCG.CERN.cern"], "queues": ["short", "medium"]},
    ):
        await assert_refused(api, s, await mint(api, pilot_stamps=[s], **constraint))
    good = await mint(
        api,
        pilot_stamps=[s],
        sites=["LCG.CERN.cern", "LCG.RAL.uk"],
        ces=["ce1.cern.ch"],
        queues=["long"],
    )
    assert (await exchange(api, s, good)).status_code == HTTPStatus.OK


async def test_unregistered_stamp_without_vacuum_fields(api: Roles) -> None:
    secret = await mint(api, pilot_secret_use_count_max=10)
    await assert_refused(api, stamp(), secret)
    r = await api.admin.post("/api/pilots/search", json={})
    assert r.json() == []


async def test_vacuum_pilot_registers_itself(api: Roles) -> None:
    secret = await mint(api, pilot_secret_use_count_max=10)
    s = stamp()
    vacuum = {"vo": "lhcb", "grid_type": "Vac", "grid_site": "VAC.Site.uk", "status": "Running"}
    r = await exchange(api, s, secret, **vacuum)
    assert r.status_code == HTTPStatus.OK, r.text
    assert api.sut.keys.verify(r.json()["access_token"])["vo"] == "lhcb"
    found = (
        await api.admin.post(
            "/api/pilots/search",
            json={"search": [{"parameter": "PilotStamp", "operator": "eq", "value": s}]},
        )
    ).json()
    assert [(p["VO"], p["GridType"], p["GridSite"], p["Status"]) for p in found] == [
        ("lhcb", "Vac", "VAC.Site.uk", "Running")
    ]
    # now registered: the plain exchange works too
    assert (await exchange(api, s, secret)).status_code == HTTPStatus.OK


async def test_vacuum_empty_strings_are_defaults(api: Roles) -> None:
    secret = await mint(api)
    s = stamp()
    r = await exchange(api, s, secret, vo="", grid_type="", grid_site="", status="")
    assert r.status_code == HTTPStatus.OK, r.text
    [p] = (await api.admin.post("/api/pilots/search", json={})).json()
    assert (p["PilotStamp"], p["VO"], p["GridType"], p["GridSite"], p["Status"]) == (
        s,
        "lhcb",
        "DIRAC",
        "Unknown",
        "Running",
    )


async def test_vacuum_refusals(api: Roles) -> None:
    multi_vo = await mint(api, vos=["dteam"])
    site_bound = await mint(api, sites=["VAC.Good.uk"])
    lhcb_only = await mint(api)
    fields = {"grid_type": "", "grid_site": "", "status": ""}
    await assert_refused(api, stamp(), multi_vo, vo="", **fields)  # which VO?
    await assert_refused(api, stamp(), lhcb_only, vo="dteam", **fields)
    await assert_refused(api, stamp(), lhcb_only, vo="unknown", **fields)
    await assert_refused(
        api, stamp(), lhcb_only, vo="lhcb", grid_type="", grid_site="", status="Bogus"
    )
    await assert_refused(
        api, stamp(), site_bound, vo="lhcb", grid_type="", grid_site="VAC.Bad.uk", status=""
    )
    ok = await exchange(
        api, stamp(), site_bound, vo="lhcb", grid_type="", grid_site="VAC.Good.uk", status=""
    )
    assert ok.status_code == HTTPStatus.OK
    assert len((await api.admin.post("/api/pilots/search", json={})).json()) == 1


async def test_refusals_look_alike(api: Roles) -> None:
    """Unknown secret, wrong stamp, used up, revoked: the same status and the same body."""
    s, secret = await register_bulk(api, mint={"pilot_secret_use_count_max": 1})
    assert secret is not None
    await exchange(api, s, secret)
    bodies = set()
    for args in ((s, secret), (s, "f" * 64), (stamp(), secret)):
        r = await exchange(api, *args)
        bodies.add((r.status_code, r.text))
    assert len(bodies) == 1


async def test_malformed_bodies_are_422(api: Roles) -> None:
    for body in ({}, {"pilot_stamp": "x"}, {"pilot_stamp": "x" * 33, "pilot_secret": "a"}):
        r = await api.anonymous.post(EXCHANGE, json=body)
        assert r.status_code == HTTPStatus.UNPROCESSABLE_ENTITY


async def _race(client: httpx.AsyncClient, s: str, secret: str, n: int) -> list[int]:
    body = {"pilot_stamp": s, "pilot_secret": secret}
    responses = await asyncio.gather(*(client.post(EXCHANGE, json=body) for _ in range(n)))
    return [r.status_code for r in responses]


async def test_concurrent_exchanges_spend_exactly_k_uses(api: Roles) -> None:
    s, secret = await register_bulk(api, mint={"pilot_secret_use_count_max": 5})
    assert secret is not None
    codes = await _race(api.anonymous, s, secret, 20)
    assert codes.count(HTTPStatus.OK) == 5
    assert codes.count(HTTPStatus.UNAUTHORIZED) == 15


async def test_concurrent_exchanges_on_the_live_server(live_server: LiveServer) -> None:
    headers = {"Authorization": f"Bearer {live_server.director_token}"}
    async with httpx.AsyncClient(base_url=live_server.url, timeout=30) as client:
        s = stamp()
        r = await client.post(
            "/api/pilots/bulk",
            headers=headers,
            json={
                "vo": "lhcb",
                "pilots": [{"pilot_stamp": s}],
                "mint_secrets": True,
                "secret_constraints": {"pilot_secret_use_count_max": 7},
            },
        )
        assert r.status_code == HTTPStatus.CREATED, r.text
        secret = r.json()["secrets"][0]["pilot_secret"]
        codes = await _race(client, s, secret, 25)
    assert codes.count(HTTPStatus.OK) == 7
    assert codes.count(HTTPStatus.UNAUTHORIZED) == 18
