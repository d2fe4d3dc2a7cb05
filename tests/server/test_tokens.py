"""Refresh-token rotation, reuse detection and revocation (both request forms), through HTTP
on every backend; and which tokens each kind of endpoint refuses."""

from __future__ import annotations

import ssl
import uuid
from http import HTTPStatus
from typing import Any

import httpx
from sqlalchemy import insert, select

from server.clock import utcnow
from server.db.schema import REFRESH_TOKENS, REVOKED_FAMILIES
from tests.conftest import LiveServer, Roles

REFRESH = "/api/auth/pilot-token"
REVOKE = "/api/auth/revoke"
LOGS = "/api/pilots/internal/message"
LINE = {"timestamp": "2026-01-02T03:04:05.123456Z", "severity": "INFO", "message": "hi"}


async def pilot_tokens(api: Roles) -> tuple[str, dict[str, Any]]:
    """Register a pilot with a bound secret and exchange it: its stamp and token pair."""
    s = uuid.uuid4().hex
    r = await api.director.post(
        "/api/pilots/bulk",
        json={"vo": "lhcb", "pilots": [{"pilot_stamp": s}], "mint_secrets": True},
    )
    assert r.status_code == HTTPStatus.CREATED, r.text
    secret = r.json()["secrets"][0]["pilot_secret"]
    r = await api.anonymous.post(
        "/api/auth/secret-exchange", json={"pilot_stamp": s, "pilot_secret": secret}
    )
    assert r.status_code == HTTPStatus.OK, r.text
    pair: dict[str, Any] = r.json()
    return s, pair


async def refresh(api: Roles, token: str, s: str) -> httpx.Response:
    return await api.anonymous.post(REFRESH, json={"refresh_token": token, "pilot_stamp": s})


async def can_log(api: Roles, access_token: str) -> int:
    r = await api.with_token(access_token).post(LOGS, json={"lines": [LINE]})
    return r.status_code


async def test_rotation_issues_a_new_pair_in_the_same_family(api: Roles) -> None:
    s, first = await pilot_tokens(api)
    r = await refresh(api, first["refresh_token"], s)
    assert r.status_code == HTTPStatus.OK, r.text
    second = r.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert second["expires_in"] == api.sut.settings.pilot_token_lifetime
    keys = api.sut.keys
    assert keys.verify(second["access_token"])["fam"] == keys.verify(first["access_token"])["fam"]
    assert keys.verify(second["access_token"])["pilot_stamp"] == s
    assert await can_log(api, second["access_token"]) == HTTPStatus.NO_CONTENT
    r = await refresh(api, second["refresh_token"], s)
    assert r.status_code == HTTPStatus.OK


async def test_reuse_revokes_the_family(api: Roles) -> None:
    s, first = await pilot_tokens(api)
    second = (await refresh(api, first["refresh_token"], s)).json()
    r = await refresh(api, first["refresh_token"], s)  # replayed: stolen?
    assert r.status_code == HTTPStatus.UNAUTHORIZED
    assert r.json() == {"detail": "Invalid credentials"}
    # the whole family is dead: the legitimate holder's newer tokens too
    assert (await refresh(api, second["refresh_token"], s)).status_code == HTTPStatus.UNAUTHORIZED
    assert await can_log(api, second["access_token"]) == HTTPStatus.UNAUTHORIZED
    assert await can_log(api, first["access_token"]) == HTTPStatus.UNAUTHORIZED
    # another family of the same pilot is untouched
    _, other = await pilot_tokens(api)
    assert await can_log(api, other["access_token"]) == HTTPStatus.NO_CONTENT


async def test_concurrent_refreshes_with_one_token(api: Roles) -> None:
    """One wins the rotation; the others are reuse, so the family dies with them."""
    import asyncio

    s, pair = await pilot_tokens(api)
    responses = await asyncio.gather(*(refresh(api, pair["refresh_token"], s) for _ in range(6)))
    winners = [r for r in responses if r.status_code == HTTPStatus.OK]
    assert len(winners) == 1
    assert sum(r.status_code == HTTPStatus.UNAUTHORIZED for r in responses) == 5
    new = winners[0].json()
    assert (await refresh(api, new["refresh_token"], s)).status_code == HTTPStatus.UNAUTHORIZED
    assert await can_log(api, new["access_token"]) == HTTPStatus.UNAUTHORIZED


async def test_refresh_refusals(api: Roles) -> None:
    s, pair = await pilot_tokens(api)
    other, _ = await pilot_tokens(api)
    assert (await refresh(api, pair["refresh_token"], other)).status_code == 401  # wrong stamp
    assert (await refresh(api, pair["access_token"], s)).status_code == 401  # not a refresh token
    assert (await refresh(api, "garbage", s)).status_code == 401
    user_token = api.sut.token("alice", "lhcb")
    assert (await refresh(api, user_token, s)).status_code == 401
    # the refusals above did not spend it
    assert (await refresh(api, pair["refresh_token"], s)).status_code == HTTPStatus.OK


async def test_revoke_rfc7009_form(api: Roles) -> None:
    s, pair = await pilot_tokens(api)
    r = await api.anonymous.post(
        REVOKE, data={"token": pair["refresh_token"], "token_type_hint": "refresh_token"}
    )
    assert r.status_code == HTTPStatus.OK, r.text
    assert (await refresh(api, pair["refresh_token"], s)).status_code == 401
    assert await can_log(api, pair["access_token"]) == HTTPStatus.UNAUTHORIZED


async def test_revoke_diracx_query_form(api: Roles) -> None:
    s, pair = await pilot_tokens(api)
    r = await api.anonymous.post(
        REVOKE, params={"refresh_token": pair["refresh_token"], "client_id": "myDIRACClientID"}
    )
    assert r.status_code == HTTPStatus.OK, r.text
    assert (await refresh(api, pair["refresh_token"], s)).status_code == 401
    assert await can_log(api, pair["access_token"]) == HTTPStatus.UNAUTHORIZED


async def test_revoke_by_access_token_kills_the_family(api: Roles) -> None:
    s, pair = await pilot_tokens(api)
    r = await api.anonymous.post(REVOKE, data={"token": pair["access_token"]})
    assert r.status_code == HTTPStatus.OK
    assert (await refresh(api, pair["refresh_token"], s)).status_code == 401


async def test_revoke_unknown_tokens_is_200(api: Roles) -> None:
    for token in ("garbage", "a.b.c", api.sut.token("alice", "lhcb")):
        r = await api.anonymous.post(REVOKE, data={"token": token})
        assert r.status_code == HTTPStatus.OK
    _s, pair = await pilot_tokens(api)
    for _ in range(2):  # twice: idempotent
        r = await api.anonymous.post(REVOKE, data={"token": pair["refresh_token"]})
        assert r.status_code == HTTPStatus.OK


async def test_revoke_malformed_requests(api: Roles) -> None:
    assert (await api.anonymous.post(REVOKE)).status_code == HTTPStatus.BAD_REQUEST
    r = await api.anonymous.post(REVOKE, data={"token_type_hint": "refresh_token"})
    assert r.status_code == HTTPStatus.BAD_REQUEST
    r = await api.anonymous.post(REVOKE, json={"token": "x"})
    assert r.status_code == HTTPStatus.BAD_REQUEST


async def test_pilot_token_refused_on_operator_endpoints(api: Roles) -> None:
    s, pair = await pilot_tokens(api)
    pilot = api.with_token(pair["access_token"])
    calls: list[tuple[str, str, dict[str, Any] | None]] = [
        ("POST", "/api/pilots/search", {}),
        ("POST", "/api/pilots/summary", {"grouping": ["Status"]}),
        ("POST", "/api/pilots/search/logs", {}),
        ("POST", "/api/pilots/secrets", {"vo": "lhcb"}),
        ("GET", "/api/pilots/secrets", None),
        ("POST", "/api/pilots/secrets/revoke", {"pilot_stamps": [s]}),
        ("POST", "/api/pilots/bulk", {"vo": "lhcb", "pilots": [{"pilot_stamp": "x"}]}),
        ("POST", "/api/pilots/", {"pilot_stamp": "y", "vo": "lhcb"}),
        ("POST", "/api/pilots/legacy/message", {"pilot_stamp": s, "lines": [LINE]}),
        ("DELETE", "/api/pilots/", {"pilot_stamps": [s]}),
        ("GET", f"/api/pilots/jobs?pilot_stamp={s}", None),
    ]
    for method, path, body in calls:
        r = await pilot.request(method, path, json=body)
        assert r.status_code == HTTPStatus.FORBIDDEN, (method, path, r.status_code, r.text)


async def test_user_tokens_refused_on_pilot_endpoints(api: Roles) -> None:
    for client in (api.user, api.admin, api.director, api.legacy_pilot):
        r = await client.post(LOGS, json={"lines": [LINE]})
        assert r.status_code == HTTPStatus.FORBIDDEN
    for client in (api.user, api.admin, api.director):
        r = await client.post(
            "/api/pilots/legacy/message", json={"pilot_stamp": "x", "lines": [LINE]}
        )
        assert r.status_code == HTTPStatus.FORBIDDEN


async def test_dirac_pilot_flow_over_verified_tls(live_server_tls: LiveServer) -> None:
    """What the DIRAC pilot's DiracX client sends, in order, over HTTPS with the test CA: the
    exchange (401, then the vacuum retry), logs with `pilot_stamp` in the body, a refresh, and
    the query-parameter revocation; afterwards its tokens are dead."""
    server = live_server_tls
    assert server.ca_file is not None
    admin = {"Authorization": f"Bearer {server.admin_token}"}
    tls = ssl.create_default_context(cafile=str(server.ca_file))
    async with httpx.AsyncClient(base_url=server.url, verify=tls) as client:
        r = await client.post(
            "/api/pilots/secrets",
            headers=admin,
            json={"vo": "lhcb", "pilot_secret_use_count_max": 100},
        )
        assert r.status_code == HTTPStatus.CREATED, r.text
        secret = r.json()[0]["pilot_secret"]
        s = uuid.uuid4().hex
        body = {"pilot_stamp": s, "pilot_secret": secret}
        r = await client.post("/api/auth/secret-exchange", json=body)
        assert r.status_code == HTTPStatus.UNAUTHORIZED
        vacuum = {"vo": "lhcb", "grid_type": "", "grid_site": "", "status": "Running"}
        r = await client.post("/api/auth/secret-exchange", json=body | vacuum)
        assert r.status_code == HTTPStatus.OK, r.text
        pair = r.json()
        bearer = {"Authorization": f"Bearer {pair['access_token']}"}
        r = await client.post(LOGS, headers=bearer, json={"pilot_stamp": s, "lines": [LINE]})
        assert r.status_code == HTTPStatus.NO_CONTENT
        r = await client.post(
            REFRESH, json={"refresh_token": pair["refresh_token"], "pilot_stamp": s}
        )
        assert r.status_code == HTTPStatus.OK
        pair = r.json()
        bearer = {"Authorization": f"Bearer {pair['access_token']}"}
        r = await client.post(
            REVOKE, params={"refresh_token": pair["refresh_token"], "client_id": "myDIRACClientID"}
        )
        assert r.status_code == HTTPStatus.OK
        r = await client.post(LOGS, headers=bearer, json={"lines": [LINE]})
        assert r.status_code == HTTPStatus.UNAUTHORIZED
        r = await client.post(
            REFRESH, json={"refresh_token": pair["refresh_token"], "pilot_stamp": s}
        )
        assert r.status_code == HTTPStatus.UNAUTHORIZED


async def test_revoked_family_cannot_patch_its_pilot(api: Roles) -> None:
    s, pair = await pilot_tokens(api)
    await api.anonymous.post(REVOKE, data={"token": pair["refresh_token"]})
    r = await api.with_token(pair["access_token"]).patch(
        "/api/pilots/metadata", json={s: {"Status": "Running"}}
    )
    assert r.status_code == HTTPStatus.UNAUTHORIZED


async def test_a_live_token_of_a_revoked_family_is_refused_and_stays_unspent(api: Roles) -> None:
    # A revocation marks the family's refresh tokens and records the family. A refresh that
    # was storing the family's next token meanwhile commits that token unmarked: the family's
    # record alone must stop it, and the refused refresh must not spend it either.
    s, pair = await pilot_tokens(api)
    claims = api.sut.keys.verify(pair["refresh_token"])
    family, jti = claims["fam"], str(claims["jti"])
    ctx = api.sut.app.state.ctx
    async with ctx.db.transaction() as conn:
        await conn.execute(insert(REVOKED_FAMILIES).values(FamilyID=family, RevokedAt=utcnow()))
    r = await refresh(api, pair["refresh_token"], s)
    assert r.status_code == HTTPStatus.UNAUTHORIZED
    async with ctx.db.read() as conn:
        by_jti = REFRESH_TOKENS.c["JTI"] == jti
        used = await conn.execute(select(REFRESH_TOKENS.c.Used).where(by_jti))
        assert used.scalar_one() is False
