"""Every route is guarded by exactly one access policy, and refusals are 401/403, never 500."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import pytest

from server.app import create_app
from server.http.policies import PUBLIC, Policy
from server.settings import ServerSettings
from tests.conftest import Roles
from tests.security import routes as security_routes

#: Routes anyone may call; anything else must authenticate.
PUBLIC_ROUTES = {
    ("GET", "/"),
    ("GET", "/.well-known/openid-configuration"),
    ("GET", "/.well-known/jwks.json"),
    ("GET", "/api/health"),
    ("GET", "/metrics"),
    ("POST", "/api/auth/secret-exchange"),
    ("POST", "/api/auth/pilot-token"),
    ("POST", "/api/auth/revoke"),
}


def api_routes() -> list[tuple[str, str, Any]]:
    """Every API route, through included routers (the walk is shared with the security suite,
    which checks it against the OpenAPI paths so it can never come back empty)."""
    return security_routes.api_routes(create_app(ServerSettings()))


def policies_of(route: Any) -> list[Policy]:
    return [d.call for d in route.dependant.dependencies if isinstance(d.call, Policy)]


def test_every_route_has_exactly_one_policy() -> None:
    assert len(api_routes()) >= 25, "the route walk lost routes"
    for method, path, route in api_routes():
        policies = policies_of(route)
        assert len(policies) == 1, f"{method} {path} has policies {policies}"
        is_public = policies[0] is PUBLIC
        assert is_public == ((method, path) in PUBLIC_ROUTES), (
            f"{method} {path}: public={is_public}, expected {(method, path) in PUBLIC_ROUTES}"
        )


@pytest.mark.parametrize("token", ["", "garbage", "a.b.c", "Bearer", "x" * 5000])
async def test_bad_tokens_are_401_everywhere(api: Roles, token: str) -> None:
    for method, path, _ in api_routes():
        if (method, path) in PUBLIC_ROUTES or "{" in path:
            continue
        client = api.with_token(token) if token else api.anonymous
        r = await client.request(method, path, json={})
        assert r.status_code == HTTPStatus.UNAUTHORIZED, (method, path, r.status_code, r.text)
        assert r.json()["detail"]


async def test_expired_and_foreign_tokens_are_401(api: Roles) -> None:
    from server.identity import ADMIN, mint_user_token
    from server.keys import KeyStore

    expired = api.sut.token("admin", "lhcb", [ADMIN], lifetime=-1)
    r = await api.with_token(expired).post("/api/pilots/search", json={})
    assert r.status_code == HTTPStatus.UNAUTHORIZED
    other_keys = KeyStore(api.sut.settings.data_dir / "other-jwks.json", api.sut.settings.issuer)
    forged = mint_user_token(other_keys, sub="x", vo="lhcb", properties=[ADMIN], lifetime=60)
    r = await api.with_token(forged).post("/api/pilots/search", json={})
    assert r.status_code == HTTPStatus.UNAUTHORIZED
    wrong_iss = KeyStore(api.sut.settings.keyset_path, "https://elsewhere.example")
    token = mint_user_token(wrong_iss, sub="x", vo="lhcb", properties=[ADMIN], lifetime=60)
    r = await api.with_token(token).post("/api/pilots/search", json={})
    assert r.status_code == HTTPStatus.UNAUTHORIZED
