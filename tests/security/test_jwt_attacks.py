"""Forged, stale and misused JWTs: every one is a 401 on an operator route and a pilot route.

Each attack starts from a genuine token's claims (an admin's, a real pilot's) and changes one
thing; a control test shows the same harness, changing nothing, makes tokens the server
accepts, so each 401 below is the attack's doing and not a broken harness.
"""

from __future__ import annotations

import functools
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import pytest

from server.http import policies
from server.identity import ADMIN, REFRESH_TYP, mint_refresh_token
from tests.conftest import Roles
from tests.security.forge import (
    Signer,
    b64url,
    claims_of,
    hs256,
    public_pem,
    segment,
    server_signers,
    unsigned,
)
from tests.security.pilots import Pilot, make_pilot
from tests.security.routes import Req, Target, has_route, walk


@dataclass
class Kit:
    """What an attacker (or the test, playing the server) has at hand."""

    ed: Signer  # the server's own signing keys: only for re-signing controls and kid games
    rsa: Signer
    public: dict[str, dict[str, Any]]  # the server's public JWKs by kid (from jwks.json)
    attacker: Signer
    attacker_rsa: Signer
    refresh_token: str  # a genuine refresh token of the pilot
    ce_token: str | None  # a genuine CE token (RS256, aud = a CE) from /api/auth/ce-token


Attack = Callable[[dict[str, Any], Kit], str]


def _with(claims: dict[str, Any], **changes: Any) -> dict[str, Any]:
    out = {**claims, **changes}
    return {k: v for k, v in out.items() if v is not None}


def _swap_payload(token: str, claims: dict[str, Any]) -> str:
    header, _, signature = token.split(".")
    return f"{header}.{segment(claims)}.{signature}"


def _tamper(change: Callable[[dict[str, Any]], dict[str, Any]]) -> Attack:
    def attack(claims: dict[str, Any], kit: Kit) -> str:
        genuine = kit.ed.token(claims)
        return _swap_payload(genuine, change(dict(claims)))

    return attack


def _escalate(claims: dict[str, Any]) -> dict[str, Any]:
    if "pilot_stamp" in claims:
        return _with(claims, pilot_stamp=None, dirac_properties=[ADMIN], dirac_group="lhcb_admin")
    return _with(claims, dirac_properties=[ADMIN, "TrustedHost"], dirac_vos=["dteam"])


def _other_vo(claims: dict[str, Any]) -> dict[str, Any]:
    return _with(claims, vo="dteam")


def now() -> int:
    """Read at attack time, not import time."""
    return int(time.time())


ATTACKS: dict[str, Attack] = {
    "alg-none": lambda c, k: unsigned(c, "none", kid=k.ed.kid),
    "alg-None": lambda c, k: unsigned(c, "None", kid=k.ed.kid),
    "alg-NONE-no-kid": lambda c, k: unsigned(c, "NONE"),
    "alg-none-with-genuine-signature": lambda c, k: (
        unsigned(c, "none", kid=k.ed.kid) + k.ed.token(c).split(".")[2]
    ),
    "hs256-ed25519-public-pem": lambda c, k: hs256(c, public_pem(k.public[k.ed.kid]), kid=k.ed.kid),
    "hs256-rsa-public-pem": lambda c, k: hs256(c, public_pem(k.public[k.rsa.kid]), kid=k.rsa.kid),
    "hs256-ed25519-public-jwk-json": lambda c, k: hs256(
        c, json.dumps(k.public[k.ed.kid]).encode(), kid=k.ed.kid
    ),
    "hs256-rsa-public-jwk-json": lambda c, k: hs256(
        c, json.dumps(k.public[k.rsa.kid]).encode(), kid=k.rsa.kid
    ),
    "hs256-ed25519-raw-x": lambda c, k: hs256(c, k.public[k.ed.kid]["x"].encode(), kid=k.ed.kid),
    "hs256-no-kid": lambda c, k: hs256(c, public_pem(k.public[k.ed.kid])),
    "unknown-kid": lambda c, k: k.attacker.token(c, kid="no-such-key"),
    "unknown-kid-rsa": lambda c, k: k.attacker_rsa.token(c, kid="no-such-rsa-key"),
    "attacker-key-server-kid": lambda c, k: k.attacker.token(c, kid=k.ed.kid),
    "attacker-rsa-key-server-rsa-kid": lambda c, k: k.attacker_rsa.token(c, kid=k.rsa.kid),
    "no-kid": lambda c, k: k.ed.token(c, kid=None),
    "no-kid-rsa": lambda c, k: k.rsa.token(c, kid=None),
    "rsa-signature-under-ed25519-kid": lambda c, k: k.rsa.token(c, kid=k.ed.kid),
    "expired-now-minus-1": lambda c, k: k.ed.token(_with(c, exp=now() - 1)),
    "expired-exactly-now": lambda c, k: k.ed.token(_with(c, exp=now())),
    "expired-long-ago": lambda c, k: k.ed.token(_with(c, iat=now() - 7200, exp=now() - 3600)),
    "no-exp": lambda c, k: k.ed.token(_with(c, exp=None)),
    "exp-as-string": lambda c, k: k.ed.token(_with(c, exp=str(now() + 600))),
    "exp-as-float": lambda c, k: k.ed.token(_with(c, exp=now() + 600.5)),
    "not-yet-valid": lambda c, k: k.ed.token(_with(c, nbf=now() + 3600)),
    "wrong-iss": lambda c, k: k.ed.token(_with(c, iss="https://evil.example")),
    "iss-with-trailing-slash": lambda c, k: k.ed.token(_with(c, iss=c["iss"] + "/")),
    "no-iss": lambda c, k: k.ed.token(_with(c, iss=None)),
    "no-sub": lambda c, k: k.ed.token(_with(c, sub=None)),
    "no-jti": lambda c, k: k.ed.token(_with(c, jti=None)),
    "tampered-vo": _tamper(_other_vo),
    "tampered-properties": _tamper(_escalate),
    "tampered-exp": _tamper(lambda c: _with(c, exp=c["exp"] + 10**6)),
    "refresh-token-as-access": lambda c, k: k.refresh_token,
    "ce-token-as-access": lambda c, k: k.ce_token or pytest.skip("no /api/auth/ce-token"),
    "refresh-typ-signed-by-server": lambda c, k: k.ed.token(c, typ=REFRESH_TYP),
    "no-typ": lambda c, k: k.ed.token(c, typ=None),
    "typ-JWT": lambda c, k: k.ed.token(c, typ="JWT"),
    "embedded-jwk": lambda c, k: k.attacker.token(c, jwk=k.attacker.public_jwk),
    "embedded-jwk-server-kid": lambda c, k: k.attacker.token(
        c, kid=k.ed.kid, jwk={**k.attacker.public_jwk, "kid": k.ed.kid}
    ),
    "embedded-jwk-no-kid": lambda c, k: k.attacker.token(c, kid=None, jwk=k.attacker.public_jwk),
    "jku-to-attacker": lambda c, k: k.attacker.token(c, jku="http://127.0.0.1:9/jwks.json"),
    "x5u-to-attacker": lambda c, k: k.attacker.token(c, x5u="http://127.0.0.1:9/cert.pem"),
    "unknown-critical-header": lambda c, k: k.ed.token(
        c, crit=["x-must-understand"], **{"x-must-understand": True}
    ),
    "truncated-signature": lambda c, k: k.ed.token(c)[:-6],
    "signature-removed": lambda c, k: k.ed.token(c).rsplit(".", 1)[0] + ".",
    "signature-of-other-token": lambda c, k: (
        k.ed.token(c).rsplit(".", 1)[0]
        + "."
        + k.ed.token(_with(c, jti=uuid.uuid4().hex)).rsplit(".", 1)[1]
    ),
    "two-segments": lambda c, k: k.ed.token(c).rsplit(".", 1)[0],
    "extra-segment": lambda c, k: k.ed.token(c) + ".AAAA",
    "json-serialization": lambda c, k: json.dumps(
        dict(zip(("protected", "payload", "signature"), k.ed.token(c).split("."), strict=True))
    ),
    "header-not-json": lambda c, k: b64url(b"not json") + "." + k.ed.token(c).split(".", 1)[1],
    "payload-not-object": lambda c, k: k.ed.token(c).split(".")[0] + "." + b64url(b"[1]") + ".x",
}


@functools.cache
def _attacker(kind: str) -> Signer:
    """One attacker key per kind for the whole run (RSA generation is slow)."""
    return Signer.generate(kind, kid=f"attacker-{kind.lower()}")


@dataclass
class Scene:
    kit: Kit
    admin_claims: dict[str, Any]
    pilot_claims: dict[str, Any]
    pilot: Pilot
    pilot_requests: list[tuple[str, Req]]  # routes a pilot token opens, aimed at its own stamp


async def _scene(api: Roles) -> Scene:
    signers = server_signers(api.sut.settings.keyset_path)
    r = await api.anonymous.get("/.well-known/jwks.json")
    public = {k["kid"]: k for k in r.json()["keys"]}
    pilot = await make_pilot(api, "lhcb")
    admin_claims = claims_of(api.sut.token("admin", "lhcb", [ADMIN]))
    pilot_claims = claims_of(pilot.access_token)
    refresh = pilot.refresh_token or mint_refresh_token(
        api.sut.keys,
        vo="lhcb",
        stamp=pilot.stamp,
        lifetime=600,
        family_id=pilot_claims.get("fam", "f"),
        jti=uuid.uuid4().hex,
    )
    ce_token = None
    if has_route(api.sut.app, "POST", "/api/auth/ce-token"):
        r = await api.director.post(
            "/api/auth/ce-token", json={"audience": "https://ce.example.org:8443/arex"}
        )
        assert r.status_code == HTTPStatus.OK, r.text
        ce_token = r.json()["access_token"]
    kit = Kit(
        ed=signers["EdDSA"],
        rsa=signers["RS256"],
        public=public,
        attacker=_attacker("OKP"),
        attacker_rsa=_attacker("RSA"),
        refresh_token=refresh,
        ce_token=ce_token,
    )
    target = Target(vo="lhcb", stamp=pilot.stamp, secret_ids=[])
    pilot_requests = [
        (route.method, route.make(target))
        for route in walk(api.sut.app)
        if route.policy in (policies.PILOT_SELF, policies.PILOT_ONLY) and route.method != "DELETE"
    ]
    assert pilot_requests, "no route takes a pilot token"
    return Scene(kit, admin_claims, pilot_claims, pilot, pilot_requests)


OPERATOR_REQUEST = ("POST", Req("/api/pilots/search", {}))


async def test_control_the_harness_makes_tokens_the_server_accepts(api: Roles) -> None:
    """Re-signing genuine claims with the server's key (Ed25519 and RSA) is accepted."""
    scene = await _scene(api)
    for signer in (scene.kit.ed, scene.kit.rsa):
        method, req = OPERATOR_REQUEST
        r = await api.with_token(signer.token(scene.admin_claims)).request(
            method, req.path, json=req.json
        )
        assert r.status_code == HTTPStatus.OK, (signer.alg, r.text)
        for method, req in scene.pilot_requests:
            token = signer.token(scene.pilot_claims)
            r = await api.with_token(token).request(
                method, req.path, json=req.json, params=req.params
            )
            assert r.is_success, (signer.alg, method, req.path, r.status_code, r.text)


@pytest.mark.parametrize("name", sorted(ATTACKS))
async def test_attack_is_401(api: Roles, name: str) -> None:
    scene = await _scene(api)
    attack = ATTACKS[name]
    refused: list[str] = []
    cases = [(scene.admin_claims, [OPERATOR_REQUEST]), (scene.pilot_claims, scene.pilot_requests)]
    for claims, requests in cases:
        token = attack(dict(claims), scene.kit)
        for method, req in requests:
            r = await api.with_token(token).request(
                method, req.path, json=req.json, params=req.params
            )
            if r.status_code != HTTPStatus.UNAUTHORIZED:
                refused.append(f"{method} {req.path}: {r.status_code} {r.text[:200]}")
    assert not refused, f"attack {name!r} was not a 401: {refused}"


async def test_tokens_are_accepted_only_in_the_authorization_header(api: Roles) -> None:
    """No token in a query string or cookie is honoured (they end up in logs and caches)."""
    token = api.sut.token("admin", "lhcb", [ADMIN])
    r = await api.anonymous.post("/api/pilots/search", json={}, params={"access_token": token})
    assert r.status_code == HTTPStatus.UNAUTHORIZED
    r = await api.anonymous.post(
        "/api/pilots/search", json={}, headers={"Cookie": f"access_token={token}"}
    )
    assert r.status_code == HTTPStatus.UNAUTHORIZED
    for scheme in ("Basic", "Token", "Bearer\t", "bearer" + token):
        r = await api.anonymous.post(
            "/api/pilots/search", json={}, headers={"Authorization": f"{scheme} {token}"}
        )
        assert r.status_code == HTTPStatus.UNAUTHORIZED, scheme
