"""Real pilots for the security tests: registered with a bound secret, with a real token when
the secret exchange exists (minted from the server's keys until then)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from http import HTTPStatus

from server.identity import mint_pilot_access_token, mint_refresh_token
from tests.conftest import Roles
from tests.security.routes import has_route, new_stamp


@dataclass
class Pilot:
    vo: str
    stamp: str
    secret: str
    secret_id: int | None
    access_token: str
    refresh_token: str


async def make_pilot(api: Roles, vo: str, *, exchange: bool = True) -> Pilot:
    """Register a pilot of `vo` with one secret bound to it, and get it a token."""
    stamp = new_stamp()
    r = await api.admin.post(
        "/api/pilots/bulk",
        json={
            "vo": vo,
            "pilots": [{"pilot_stamp": stamp, "queue": "ce.example.org/queue"}],
            "mint_secrets": True,
            "secret_constraints": {"pilot_secret_use_count_max": 5},
        },
    )
    assert r.status_code == HTTPStatus.CREATED, r.text
    secret = r.json()["secrets"][0]["pilot_secret"]
    secret_id = await _secret_id(api, stamp)
    app = api.sut.app
    if exchange and has_route(app, "POST", "/api/auth/secret-exchange"):
        r = await api.anonymous.post(
            "/api/auth/secret-exchange", json={"pilot_stamp": stamp, "pilot_secret": secret}
        )
        assert r.status_code == HTTPStatus.OK, r.text
        tokens = r.json()
        return Pilot(vo, stamp, secret, secret_id, tokens["access_token"], tokens["refresh_token"])
    family = uuid.uuid4().hex
    keys = api.sut.keys
    access = mint_pilot_access_token(keys, vo=vo, stamp=stamp, lifetime=600, family_id=family)
    refresh = mint_refresh_token(
        keys, vo=vo, stamp=stamp, lifetime=3600, family_id=family, jti=uuid.uuid4().hex
    )
    return Pilot(vo, stamp, secret, secret_id, access, refresh)


async def _secret_id(api: Roles, stamp: str) -> int | None:
    if not has_route(api.sut.app, "GET", "/api/pilots/secrets"):
        return None
    r = await api.admin.get("/api/pilots/secrets", params={"pilot_stamp": stamp})
    assert r.status_code == HTTPStatus.OK, r.text
    ids = [s["secret_id"] for s in r.json()]
    return ids[0] if ids else None
