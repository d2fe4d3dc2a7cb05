"""Issue [2/6]: who may open a registered pilot, and what a pilot token can still do once its
secret is revoked or its pilot has ended; with the stamp alphabet and JobID values every route
enforces. Through HTTP, on every backend."""

from __future__ import annotations

import asyncio
import uuid
from http import HTTPStatus
from typing import Any

import httpx
import pytest

from tests.conftest import Roles

EXCHANGE = "/api/auth/secret-exchange"
REFRESH = "/api/auth/pilot-token"
METADATA = "/api/pilots/metadata"
VACUUM = {"vo": "lhcb", "grid_type": "", "grid_site": "", "status": ""}
FINAL = ["Done", "Failed", "Aborted", "Deleted"]


def new_stamp() -> str:
    return uuid.uuid4().hex


async def unbound_secret(api: Roles, uses: int | None = None) -> str:
    """A vacuum secret: no stamp, many uses (as baked into a VM image)."""
    r = await api.admin.post(
        "/api/pilots/secrets", json={"vo": "lhcb", "pilot_secret_use_count_max": uses}
    )
    assert r.status_code == HTTPStatus.CREATED, r.text
    secret: str = r.json()[0]["pilot_secret"]
    return secret


async def director_pilot(api: Roles) -> tuple[str, str]:
    """A pilot the director registered, with the secret bound to it."""
    s = new_stamp()
    r = await api.director.post(
        "/api/pilots/bulk",
        json={"vo": "lhcb", "pilots": [{"pilot_stamp": s}], "mint_secrets": True},
    )
    assert r.status_code == HTTPStatus.CREATED, r.text
    return s, r.json()["secrets"][0]["pilot_secret"]


async def exchange(api: Roles, s: str, secret: str, **extra: Any) -> httpx.Response:
    return await api.anonymous.post(
        EXCHANGE, json={"pilot_stamp": s, "pilot_secret": secret, **extra}
    )


async def tokens(api: Roles, s: str, secret: str, **extra: Any) -> dict[str, Any]:
    r = await exchange(api, s, secret, **extra)
    assert r.status_code == HTTPStatus.OK, r.text
    pair: dict[str, Any] = r.json()
    return pair


async def status_of(api: Roles, s: str) -> str:
    r = await api.admin.post(
        "/api/pilots/search",
        json={"search": [{"parameter": "PilotStamp", "operator": "eq", "value": s}]},
    )
    [pilot] = r.json()
    status: str = pilot["Status"]
    return status


# --- defect 2: an unbound secret opens only the stamps it registered ---------------------------


async def test_vacuum_secret_cannot_take_over_a_director_pilot(api: Roles) -> None:
    s, _ = await director_pilot(api)
    secret = await unbound_secret(api)
    for extra in ({}, VACUUM, {**VACUUM, "status": "Running"}):
        r = await exchange(api, s, secret, **extra)
        assert r.status_code == HTTPStatus.UNAUTHORIZED, (extra, r.text)
        assert r.json() == {"detail": "Invalid credentials"}
    assert await status_of(api, s) == "Submitted"


async def test_vacuum_secret_cannot_open_a_pilot_registered_without_secret(api: Roles) -> None:
    s = new_stamp()
    r = await api.director.post("/api/pilots/", json={"pilot_stamp": s, "vo": "lhcb"})
    assert r.status_code == HTTPStatus.CREATED, r.text
    secret = await unbound_secret(api)
    assert (await exchange(api, s, secret)).status_code == HTTPStatus.UNAUTHORIZED
    assert (await exchange(api, s, secret, **VACUUM)).status_code == HTTPStatus.UNAUTHORIZED


async def test_vacuum_secret_reopens_only_its_own_registrations(api: Roles) -> None:
    mine, theirs = await unbound_secret(api), await unbound_secret(api)
    s = new_stamp()
    await tokens(api, s, mine, **VACUUM)  # registers s
    # the same secret again: a vacuum pilot retrying after a lost answer
    await tokens(api, s, mine)
    await tokens(api, s, mine, **VACUUM)
    # another vacuum secret of the same VO may not
    assert (await exchange(api, s, theirs)).status_code == HTTPStatus.UNAUTHORIZED
    assert (await exchange(api, s, theirs, **VACUUM)).status_code == HTTPStatus.UNAUTHORIZED
    # and the secret still registers new pilots of its own
    await tokens(api, new_stamp(), mine, **VACUUM)


async def test_a_deleted_vacuum_pilot_leaves_no_claim_on_its_stamp(api: Roles) -> None:
    secret = await unbound_secret(api)
    s = new_stamp()
    await tokens(api, s, secret, **VACUUM)
    r = await api.admin.request("DELETE", "/api/pilots/", json={"pilot_stamps": [s]})
    assert r.status_code == HTTPStatus.OK, r.text
    r = await api.director.post("/api/pilots/", json={"pilot_stamp": s, "vo": "lhcb"})
    assert r.status_code == HTTPStatus.CREATED, r.text
    assert (await exchange(api, s, secret)).status_code == HTTPStatus.UNAUTHORIZED


async def test_racing_vacuum_secrets_one_stamp_one_owner(api: Roles) -> None:
    """Two VM images' secrets racing to register one stamp: only one of them ever gets it."""
    secrets = [await unbound_secret(api) for _ in range(2)]
    s = new_stamp()
    responses = await asyncio.gather(
        *(exchange(api, s, secrets[i % 2], **VACUUM) for i in range(16))
    )
    winners = {secrets[i % 2] for i, r in enumerate(responses) if r.status_code == HTTPStatus.OK}
    assert len(winners) == 1
    [winner] = winners
    loser = next(x for x in secrets if x != winner)
    assert (await exchange(api, s, winner)).status_code == HTTPStatus.OK
    assert (await exchange(api, s, loser)).status_code == HTTPStatus.UNAUTHORIZED


# --- defect 3: revoking a secret revokes its token families; final statuses stay -----------------


async def test_aborted_pilot_stays_dead(api: Roles) -> None:
    """The director aborts: revokes the secret, sets Aborted. The pilot's tokens are dead."""
    s, secret = await director_pilot(api)
    pair = await tokens(api, s, secret)
    r = await api.director.post("/api/pilots/secrets/revoke", json={"pilot_stamps": [s]})
    assert r.status_code == HTTPStatus.OK, r.text
    r = await api.director.patch(METADATA, json={s: {"Status": "Aborted", "StatusReason": "held"}})
    assert r.status_code == HTTPStatus.NO_CONTENT
    r = await api.anonymous.post(
        REFRESH, json={"refresh_token": pair["refresh_token"], "pilot_stamp": s}
    )
    assert r.status_code == HTTPStatus.UNAUTHORIZED
    pilot = api.with_token(pair["access_token"])
    r = await pilot.patch(METADATA, json={s: {"Status": "Running"}})
    assert r.status_code == HTTPStatus.UNAUTHORIZED
    assert await status_of(api, s) == "Aborted"


async def test_revoking_a_secret_reaches_rotated_tokens(api: Roles) -> None:
    s, secret = await director_pilot(api)
    first = await tokens(api, s, secret)
    r = await api.anonymous.post(
        REFRESH, json={"refresh_token": first["refresh_token"], "pilot_stamp": s}
    )
    assert r.status_code == HTTPStatus.OK, r.text
    second = r.json()
    [info] = (await api.admin.get("/api/pilots/secrets", params={"pilot_stamp": s})).json()
    r = await api.admin.post("/api/pilots/secrets/revoke", json={"secret_ids": [info["secret_id"]]})
    assert r.status_code == HTTPStatus.OK
    r = await api.anonymous.post(
        REFRESH, json={"refresh_token": second["refresh_token"], "pilot_stamp": s}
    )
    assert r.status_code == HTTPStatus.UNAUTHORIZED
    r = await api.with_token(second["access_token"]).post(
        "/api/pilots/internal/message", json={"lines": []}
    )
    assert r.status_code == HTTPStatus.UNAUTHORIZED


async def test_revoking_a_vacuum_secret_revokes_its_pilots_families(api: Roles) -> None:
    secret = await unbound_secret(api)
    stamps = [new_stamp(), new_stamp()]
    pairs = [await tokens(api, s, secret, **VACUUM) for s in stamps]
    [info] = (await api.admin.get("/api/pilots/secrets")).json()
    r = await api.admin.post("/api/pilots/secrets/revoke", json={"secret_ids": [info["secret_id"]]})
    assert r.status_code == HTTPStatus.OK
    for s, pair in zip(stamps, pairs, strict=True):
        r = await api.with_token(pair["access_token"]).patch(METADATA, json={s: {"Status": "Done"}})
        assert r.status_code == HTTPStatus.UNAUTHORIZED


async def test_revoking_one_secret_spares_other_pilots(api: Roles) -> None:
    s, secret = await director_pilot(api)
    other, other_secret = await director_pilot(api)
    await tokens(api, s, secret)
    pair = await tokens(api, other, other_secret)
    r = await api.director.post("/api/pilots/secrets/revoke", json={"pilot_stamps": [s]})
    assert r.status_code == HTTPStatus.OK
    r = await api.with_token(pair["access_token"]).patch(
        METADATA, json={other: {"Status": "Running"}}
    )
    assert r.status_code == HTTPStatus.NO_CONTENT


@pytest.mark.parametrize("final", FINAL)
async def test_pilot_token_cannot_leave_a_final_status(api: Roles, final: str) -> None:
    s, secret = await director_pilot(api)
    pilot = api.with_token((await tokens(api, s, secret))["access_token"])
    r = await api.director.patch(METADATA, json={s: {"Status": final, "StatusReason": "director"}})
    assert r.status_code == HTTPStatus.NO_CONTENT
    for change in (
        {"Status": "Running"},
        {"Status": "Waiting", "StatusReason": "back"},
        {"Status": "Done" if final != "Done" else "Failed"},
        {"StatusReason": "rewritten"},
    ):
        r = await pilot.patch(METADATA, json={s: change})
        assert r.status_code == HTTPStatus.FORBIDDEN, (change, r.text)
    assert await status_of(api, s) == final
    # the director (an operator) still may
    r = await api.director.patch(METADATA, json={s: {"Status": "Running"}})
    assert r.status_code == HTTPStatus.NO_CONTENT


async def test_pilot_may_repeat_its_own_final_report(api: Roles) -> None:
    s, secret = await director_pilot(api)
    pilot = api.with_token((await tokens(api, s, secret))["access_token"])
    report = {s: {"Status": "Done", "StatusReason": "finished"}}
    for _ in range(2):  # a retry after a lost answer is not an error
        assert (await pilot.patch(METADATA, json=report)).status_code == HTTPStatus.NO_CONTENT
    r = await pilot.patch(METADATA, json={s: {"Status": "Running"}})
    assert r.status_code == HTTPStatus.FORBIDDEN
    assert await status_of(api, s) == "Done"


# --- defect 4: the token first, then the body ---------------------------------------------------


async def test_revoked_token_is_401_whatever_the_body(api: Roles) -> None:
    s, secret = await director_pilot(api)
    pair = await tokens(api, s, secret)
    r = await api.anonymous.post("/api/auth/revoke", data={"token": pair["refresh_token"]})
    assert r.status_code == HTTPStatus.OK
    pilot = api.with_token(pair["access_token"])
    for body in ({}, {s: {}}, {new_stamp(): {"Status": "Done"}}, {s: {"PilotJobReference": "x"}}):
        r = await pilot.patch(METADATA, json=body)
        assert r.status_code == HTTPStatus.UNAUTHORIZED, (body, r.text)


async def test_live_token_with_an_empty_body_is_204(api: Roles) -> None:
    s, secret = await director_pilot(api)
    pilot = api.with_token((await tokens(api, s, secret))["access_token"])
    assert (await pilot.patch(METADATA, json={})).status_code == HTTPStatus.NO_CONTENT


# --- JobID values: integers only ----------------------------------------------------------------


async def test_fractional_job_ids_are_refused(api: Roles) -> None:
    s, _ = await director_pilot(api)
    r = await api.director.patch("/api/pilots/jobs", json={"pilot_stamp": s, "job_ids": [1]})
    assert r.status_code == HTTPStatus.NO_CONTENT
    for spec in (
        {"parameter": "JobID", "operator": "eq", "value": 1.5},
        {"parameter": "JobID", "operator": "in", "values": [1, 1.5]},
        {"parameter": "JobID", "operator": "eq", "value": "1.5"},
        {"parameter": "JobID", "operator": "eq", "value": -1},
        {"parameter": "JobID", "operator": "eq", "value": 2**63},
    ):
        r = await api.admin.post("/api/pilots/search", json={"search": [spec]})
        assert r.status_code == HTTPStatus.BAD_REQUEST, (spec, r.text)
        r = await api.admin.post("/api/pilots/summary", json={"grouping": [], "search": [spec]})
        assert r.status_code == HTTPStatus.BAD_REQUEST, (spec, r.text)
    for value in (1.5, 2.0, True, "3"):
        r = await api.director.patch(
            "/api/pilots/jobs", json={"pilot_stamp": s, "job_ids": [value]}
        )
        assert r.status_code == HTTPStatus.UNPROCESSABLE_ENTITY, (value, r.text)
        r = await api.director.patch(METADATA, json={s: {"CurrentJobID": value}})
        assert r.status_code == HTTPStatus.UNPROCESSABLE_ENTITY, (value, r.text)
    r = await api.admin.get("/api/pilots/jobs", params={"pilot_stamp": s})
    assert r.json()["job_ids"] == [1]
    # integers, and digit strings, still find the pilot
    for spec in (
        {"parameter": "JobID", "operator": "eq", "value": 1},
        {"parameter": "JobID", "operator": "in", "values": ["1"]},
    ):
        r = await api.admin.post("/api/pilots/search", json={"search": [spec]})
        assert [p["PilotStamp"] for p in r.json()] == [s], spec


# --- the stamp alphabet, on every route that takes a stamp ---------------------------------------

BAD_STAMPS = ["a\x00b", "a b", "../etc", "a/b", "a.b", "\u00e9t\u00e9", "a\nb", "x" * 33, ""]


def stamp_requests(bad: str) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(role, method, path, request arguments) of every route taking a stamp, with `bad`."""
    secret = "0" * 64
    lines = [{"timestamp": "2026-01-01T00:00:00Z", "severity": "INFO", "message": "m"}]
    return [
        ("director", "POST", "/api/pilots/", {"json": {"pilot_stamp": bad, "vo": "lhcb"}}),
        (
            "director",
            "POST",
            "/api/pilots/bulk",
            {"json": {"vo": "lhcb", "pilots": [{"pilot_stamp": bad}]}},
        ),
        ("director", "PATCH", METADATA, {"json": {bad: {"Status": "Running"}}}),
        ("anonymous", "POST", EXCHANGE, {"json": {"pilot_stamp": bad, "pilot_secret": secret}}),
        (
            "anonymous",
            "POST",
            EXCHANGE,
            {"json": {"pilot_stamp": bad, "pilot_secret": secret, **VACUUM}},
        ),
        ("anonymous", "POST", REFRESH, {"json": {"pilot_stamp": bad, "refresh_token": "x.y.z"}}),
        (
            "director",
            "POST",
            "/api/pilots/secrets",
            {"json": {"vo": "lhcb", "pilot_stamps": [bad]}},
        ),
        ("director", "POST", "/api/pilots/secrets/revoke", {"json": {"pilot_stamps": [bad]}}),
        ("admin", "GET", "/api/pilots/secrets", {"params": {"pilot_stamp": bad}}),
        ("director", "PATCH", "/api/pilots/jobs", {"json": {"pilot_stamp": bad, "job_ids": [1]}}),
        ("admin", "GET", "/api/pilots/jobs", {"params": {"pilot_stamp": bad}}),
        ("director", "DELETE", "/api/pilots/", {"json": {"pilot_stamps": [bad]}}),
        (
            "legacy_pilot",
            "POST",
            "/api/pilots/legacy/message",
            {"json": {"pilot_stamp": bad, "lines": lines}},
        ),
    ]


@pytest.mark.parametrize("bad", BAD_STAMPS, ids=repr)
async def test_stamps_outside_the_alphabet_are_422(api: Roles, bad: str) -> None:
    for role, method, path, kwargs in stamp_requests(bad):
        if role == "admin" and method == "GET" and bad == "":
            continue  # an empty query parameter is an absent filter there
        client: httpx.AsyncClient = getattr(api, role)
        r = await client.request(method, path, **kwargs)
        assert r.status_code == HTTPStatus.UNPROCESSABLE_ENTITY, (
            method,
            path,
            r.status_code,
            r.text,
        )
    r = await api.admin.post("/api/pilots/search", json={})
    assert r.json() == []


@pytest.mark.parametrize(
    "good", ["a", "0123456789abcdef0123456789ABCDEF", "F81D4FAE-7DEC-11D0", "x_y"]
)
async def test_stamps_of_the_alphabet_register_and_exchange(api: Roles, good: str) -> None:
    r = await api.director.post(
        "/api/pilots/bulk",
        json={"vo": "lhcb", "pilots": [{"pilot_stamp": good}], "mint_secrets": True},
    )
    assert r.status_code == HTTPStatus.CREATED, r.text
    pair = await tokens(api, good, r.json()["secrets"][0]["pilot_secret"])
    r = await api.with_token(pair["access_token"]).patch(
        METADATA, json={good: {"Status": "Running"}}
    )
    assert r.status_code == HTTPStatus.NO_CONTENT
