"""CE tokens: who may get one, what is in it, and that a CE can verify it from our discovery
documents alone (as A-REX does: openid-configuration -> jwks_uri -> key by `kid`)."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from joserfc import jwt
from joserfc.jwk import KeySet

from server.logic.cetokens import COMPUTE_SCOPES, MAX_LIFETIME
from tests.conftest import Roles

CE = "https://arc.example.org:443/arex"


async def _verify_as_a_ce(api: Roles, token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims, verified with nothing but the public discovery documents."""
    discovery = (await api.anonymous.get("/.well-known/openid-configuration")).json()
    jwks_path = discovery["jwks_uri"].removeprefix(discovery["issuer"])
    keys = KeySet.import_key_set((await api.anonymous.get(jwks_path)).json())
    decoded = jwt.decode(token, keys, algorithms=["RS256"])
    assert decoded.claims["iss"] == discovery["issuer"]
    return dict(decoded.header), dict(decoded.claims)


async def test_director_gets_a_verifiable_rs256_ce_token(api: Roles) -> None:
    response = await api.director.post("/api/auth/ce-token", json={"audience": CE, "lifetime": 600})
    assert response.status_code == HTTPStatus.OK
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 600
    header, claims = await _verify_as_a_ce(api, body["access_token"])
    assert header["alg"] == "RS256"
    assert header["kid"]
    assert claims["aud"] == CE
    assert set(claims["scope"].split()) == set(COMPUTE_SCOPES.split())
    assert {"compute.create", "compute.read", "compute.modify", "compute.cancel"} <= set(
        claims["scope"].split()
    )
    assert claims["sub"] == "director"
    assert claims["exp"] - claims["iat"] == 600
    assert claims["wlcg.ver"] == "1.0"


async def test_admin_may_and_default_lifetime_applies(api: Roles) -> None:
    response = await api.admin.post("/api/auth/ce-token", json={"audience": CE})
    assert response.status_code == HTTPStatus.OK
    _, claims = await _verify_as_a_ce(api, response.json()["access_token"])
    assert 0 < claims["exp"] - claims["iat"] <= MAX_LIFETIME


async def test_only_directors_and_admins(api: Roles) -> None:
    body = {"audience": CE}
    assert (await api.user.post("/api/auth/ce-token", json=body)).status_code == (
        HTTPStatus.FORBIDDEN
    )
    assert (await api.legacy_pilot.post("/api/auth/ce-token", json=body)).status_code == (
        HTTPStatus.FORBIDDEN
    )
    assert (await api.anonymous.post("/api/auth/ce-token", json=body)).status_code == (
        HTTPStatus.UNAUTHORIZED
    )


async def test_bad_requests_are_422(api: Roles) -> None:
    for body in (
        {"audience": "not a url"},
        {"audience": CE, "lifetime": MAX_LIFETIME + 1},
        {"audience": CE, "lifetime": 1},
        {"audience": CE, "extra": 1},
        {},
    ):
        response = await api.director.post("/api/auth/ce-token", json=body)
        assert response.status_code == HTTPStatus.UNPROCESSABLE_ENTITY, body


async def test_a_ce_token_opens_nothing_on_this_server(api: Roles) -> None:
    """A token leaked from a CE must not work as an access token here."""
    token = (await api.admin.post("/api/auth/ce-token", json={"audience": CE})).json()[
        "access_token"
    ]
    stolen = api.with_token(token)
    for method, path in (
        ("POST", "/api/pilots/search"),
        ("POST", "/api/auth/ce-token"),
        ("POST", "/api/pilots/secrets"),
    ):
        response = await stolen.request(method, path, json={"audience": CE})
        assert response.status_code == HTTPStatus.UNAUTHORIZED, path


async def test_htcondor_ce_audience_is_host_and_port(api: Roles) -> None:
    """An HTCondor-CE checks `aud` against its SCITOKENS_SERVER_AUDIENCE: `host:port`, or the
    WLCG profile's `condor://host:port`; the token is otherwise the same WLCG compute token."""
    for audience in ("ce.example.org:9619", "127.0.0.1:9619", "condor://ce.example.org:9619"):
        response = await api.director.post(
            "/api/auth/ce-token", json={"audience": audience, "lifetime": 300}
        )
        assert response.status_code == HTTPStatus.OK, audience
        header, claims = await _verify_as_a_ce(api, response.json()["access_token"])
        assert header["alg"] == "RS256"
        assert claims["aud"] == audience
        assert claims["wlcg.ver"] == "1.0"
        assert claims["scope"] == COMPUTE_SCOPES
        assert claims["sub"] == "director"
        assert claims["nbf"] == claims["iat"]
        assert claims["exp"] - claims["iat"] == 300
        assert claims["jti"]


async def test_malformed_host_port_audiences_are_422(api: Roles) -> None:
    for audience in (
        "ce.example.org",
        "ce.example.org:0",
        "ce.example.org:65536",
        "ce.example.org:9619/path",
        ":9619",
        "condor://ce.example.org",
        "ce example.org:9619",
    ):
        response = await api.director.post("/api/auth/ce-token", json={"audience": audience})
        assert response.status_code == HTTPStatus.UNPROCESSABLE_ENTITY, audience
