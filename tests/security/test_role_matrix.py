"""Role and tenant boundaries, generated from the app's route table.

For every route (see `routes.walk`, which fails on a route it has no request for):
- a pilot token is refused (401/403) on every operator route;
- a pilot token cannot act on another pilot through the routes open to pilots;
- user, service and admin tokens are refused on the pilot-only routes;
- no token at all is a 401 on every non-public route;
- tokens of VO lhcb aimed at the pilots, secrets, jobs, logs and leases of VO dteam get
  401/403/404 or an empty answer, never a byte of dteam's data, and change nothing of dteam's
  (checked by comparing an administrator's view of dteam before and after).
No answer anywhere is a 5xx.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import httpx

from server.http import policies
from tests.conftest import Roles
from tests.security.pilots import Pilot, make_pilot
from tests.security.routes import (
    OPERATOR_POLICIES,
    Req,
    Route,
    Target,
    has_route,
    log_lines,
    walk,
)

REFUSED = {HTTPStatus.UNAUTHORIZED, HTTPStatus.FORBIDDEN}
REFUSED_OR_ABSENT = {*REFUSED, HTTPStatus.NOT_FOUND}
QUEUE = "ce.example.org/queue"


@dataclass
class World:
    """Two VOs with a pilot each (lhcb has two), jobs, secrets, logs and a lease in dteam."""

    routes: list[Route]
    mine: Pilot  # lhcb
    sibling: Pilot  # another lhcb pilot
    theirs: Pilot  # dteam
    marker: str  # a string found only in dteam's log lines
    job_id: int

    def target(self, pilot: Pilot) -> Target:
        return Target(
            vo=pilot.vo,
            stamp=pilot.stamp,
            secret_ids=[pilot.secret_id] if pilot.secret_id is not None else [],
            queue=QUEUE,
            lease_holder=f"{pilot.vo}-director",
            job_id=self.job_id,
        )


async def _world(api: Roles) -> World:
    routes = walk(api.sut.app)
    mine = await make_pilot(api, "lhcb")
    sibling = await make_pilot(api, "lhcb")
    theirs = await make_pilot(api, "dteam")
    job_id = 4242
    r = await api.admin.patch(
        "/api/pilots/jobs", json={"pilot_stamp": theirs.stamp, "job_ids": [job_id]}
    )
    assert r.status_code == HTTPStatus.NO_CONTENT, r.text
    marker = f"dteam-only-{uuid.uuid4().hex}"
    if has_route(api.sut.app, "POST", "/api/pilots/internal/message"):
        r = await api.with_token(theirs.access_token).post(
            "/api/pilots/internal/message", json={"lines": log_lines(marker)}
        )
        assert r.status_code == HTTPStatus.NO_CONTENT, r.text
    r = await api.other_director.post(
        "/api/director/leases",
        json={"holder": "dteam-director", "queues": [QUEUE], "ttl_seconds": 3600},
    )
    assert r.json()["granted"] == [QUEUE], r.text
    return World(routes, mine, sibling, theirs, marker, job_id)


async def _send(client: httpx.AsyncClient, route: Route, req: Req) -> httpx.Response:
    return await client.request(route.method, req.path, json=req.json, params=req.params)


def _describe(who: str, route: Route, r: httpx.Response) -> str:
    return f"{who} {route.id}: {r.status_code} {r.text[:200]}"


async def _admin_view(api: Roles, pilot: Pilot, marker: str) -> dict[str, Any]:
    """Everything an administrator can see of one pilot: the 'before' and 'after' picture."""
    view: dict[str, Any] = {}
    search = {"search": [{"parameter": "PilotStamp", "operator": "eq", "value": pilot.stamp}]}
    view["pilot"] = (await api.admin.post("/api/pilots/search", json=search)).json()
    view["vo"] = (
        await api.admin.post(
            "/api/pilots/search",
            json={"search": [{"parameter": "VO", "operator": "eq", "value": pilot.vo}]},
        )
    ).json()
    view["jobs"] = (
        await api.admin.get("/api/pilots/jobs", params={"pilot_stamp": pilot.stamp})
    ).json()
    if has_route(api.sut.app, "GET", "/api/pilots/secrets"):
        secrets = await api.admin.get("/api/pilots/secrets", params={"pilot_stamp": pilot.stamp})
        view["secrets"] = [{**s, "last_used_at": None} for s in secrets.json()]
    if has_route(api.sut.app, "POST", "/api/pilots/search/logs"):
        logs = await api.admin.post("/api/pilots/search/logs", json=search)
        view["logs"] = logs.json()
    probe = await api.other_director.post(
        "/api/director/leases", json={"holder": "probe", "queues": [QUEUE], "ttl_seconds": 1}
    )
    view["lease_still_held"] = probe.json()["refused"] == [QUEUE]
    return view


async def test_pilot_token_is_refused_on_every_operator_route(api: Roles) -> None:
    world = await _world(api)
    pilot = api.with_token(world.mine.access_token)
    bad = []
    checked = 0
    for route in world.routes:
        if route.policy not in OPERATOR_POLICIES:
            continue
        for target in (world.mine, world.sibling):
            r = await _send(pilot, route, route.make(world.target(target)))
            checked += 1
            if r.status_code not in REFUSED:
                bad.append(_describe("pilot", route, r))
    assert checked >= 10, "the walk found too few operator routes"
    assert not bad, bad


async def test_pilot_cannot_act_on_another_pilot(api: Roles) -> None:
    """Routes open to pilot tokens, aimed at a sibling of the same VO and at a dteam pilot."""
    world = await _world(api)
    pilot = api.with_token(world.mine.access_token)
    before = {
        p.stamp: await _admin_view(api, p, world.marker) for p in (world.sibling, world.theirs)
    }
    bad = []
    for route in world.routes:
        if route.policy is not policies.PILOT_SELF:
            continue
        for other in (world.sibling, world.theirs):
            r = await _send(pilot, route, route.make(world.target(other)))
            if r.status_code not in REFUSED_OR_ABSENT:
                bad.append(_describe(f"pilot on {other.vo} pilot", route, r))
    for route in world.routes:
        if route.policy is not policies.PILOT_ONLY:
            continue
        # the body names another pilot: the token decides, the body's stamp is ignored
        for other in (world.sibling, world.theirs):
            r = await _send(pilot, route, route.make(world.target(other)))
            if r.status_code >= HTTPStatus.INTERNAL_SERVER_ERROR:
                bad.append(_describe("pilot", route, r))
    after = {
        p.stamp: await _admin_view(api, p, world.marker) for p in (world.sibling, world.theirs)
    }
    assert not bad, bad
    assert after == before, "a pilot token changed another pilot's records"


async def test_user_and_service_tokens_are_refused_on_pilot_only_routes(api: Roles) -> None:
    world = await _world(api)
    clients = {
        "admin": api.admin,
        "director": api.director,
        "user": api.user,
        "legacy-pilot": api.legacy_pilot,
        "other-vo": api.other_vo,
    }
    bad = []
    pilot_only = [r for r in world.routes if r.policy is policies.PILOT_ONLY]
    for route in pilot_only:
        for who, client in clients.items():
            r = await _send(client, route, route.make(world.target(world.mine)))
            if r.status_code not in REFUSED:
                bad.append(_describe(who, route, r))
    assert not bad, bad


async def test_no_token_is_401_on_every_non_public_route(api: Roles) -> None:
    world = await _world(api)
    bad = []
    for route in world.routes:
        if route.policy is policies.PUBLIC:
            continue
        r = await _send(api.anonymous, route, route.make(world.target(world.mine)))
        if r.status_code != HTTPStatus.UNAUTHORIZED:
            bad.append(_describe("anonymous", route, r))
    assert not bad, bad


async def test_vo_boundary(api: Roles) -> None:
    """Every lhcb caller on every non-public route aimed at dteam: refused or empty, no change."""
    world = await _world(api)
    before = await _admin_view(api, world.theirs, world.marker)
    assert before["pilot"], "the dteam pilot is not visible to the administrator"
    assert before["lease_still_held"]
    secrets_of_theirs = [world.theirs.secret, world.theirs.access_token, world.theirs.refresh_token]
    forbidden_text = [world.theirs.stamp, world.marker, "dteam", *secrets_of_theirs]
    callers = {
        "lhcb-user": api.user,
        "lhcb-director": api.director,
        "lhcb-legacy-pilot": api.legacy_pilot,
        "lhcb-pilot": api.with_token(world.mine.access_token),
    }
    bad = []
    target = world.target(world.theirs)
    for route in world.routes:
        if route.policy is policies.PUBLIC:
            continue
        for who, client in callers.items():
            r = await _send(client, route, route.make(target))
            if r.status_code in REFUSED_OR_ABSENT:
                continue
            if r.is_success:
                leaked = [t for t in forbidden_text if t in r.text]
                if leaked:
                    bad.append(_describe(who, route, r) + f" leaks {leaked}")
                continue
            bad.append(_describe(who, route, r))
    after = await _admin_view(api, world.theirs, world.marker)
    assert not bad, "\n".join(bad)
    assert after == before, f"lhcb callers changed dteam's records:\n{before}\n{after}"


async def test_secret_of_one_vo_cannot_open_a_pilot_of_another(api: Roles) -> None:
    """An lhcb director minting a secret bound to a dteam stamp, or a pilot reusing another's
    secret or refresh token, never gets a token for the dteam pilot."""
    app = api.sut.app
    if not has_route(app, "POST", "/api/auth/secret-exchange"):
        return
    world = await _world(api)
    theirs = world.theirs
    r = await api.director.post(
        "/api/pilots/secrets", json={"vo": "lhcb", "pilot_stamps": [theirs.stamp]}
    )
    assert r.status_code in {*REFUSED, HTTPStatus.BAD_REQUEST, HTTPStatus.CREATED}, r.text
    if r.status_code == HTTPStatus.CREATED:
        smuggled = r.json()[0]["pilot_secret"]
        r = await api.anonymous.post(
            "/api/auth/secret-exchange",
            json={"pilot_stamp": theirs.stamp, "pilot_secret": smuggled},
        )
        assert r.status_code == HTTPStatus.UNAUTHORIZED, r.text
    # lhcb pilot's own secret with the dteam stamp, and with the vacuum fields naming dteam
    for extra in ({}, {"vo": "dteam", "grid_type": "DIRAC", "grid_site": "X", "status": "Running"}):
        r = await api.anonymous.post(
            "/api/auth/secret-exchange",
            json={"pilot_stamp": theirs.stamp, "pilot_secret": world.mine.secret, **extra},
        )
        assert r.status_code == HTTPStatus.UNAUTHORIZED, r.text
    # lhcb pilot's refresh token presented for the dteam stamp
    r = await api.anonymous.post(
        "/api/auth/pilot-token",
        json={"pilot_stamp": theirs.stamp, "refresh_token": world.mine.refresh_token},
    )
    assert r.status_code == HTTPStatus.UNAUTHORIZED, r.text
