"""Kills and pilot outputs through HTTP, on every database backend: who may ask, read and
record, for which VO; what a request records; the director's pending list, outcomes and
back-off; a kill done ends the pilot Aborted; outputs redacted, cut to their tail, recorded
once when not available; purged with their pilot."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from typing import Any

import httpx
from sqlalchemy import update

from server.db.schema import REQUESTS
from server.identity import OPERATOR, SITE_MANAGER
from server.logic.pilot_requests import MAX_ATTEMPTS, backoff
from server.models import MAX_OUTPUT_CHARS
from tests.conftest import Roles

KILLS = "/api/pilots/kills"
OUTPUT_REQUESTS = "/api/pilots/output-requests"
OUTPUT = "/api/pilots/output"
SECRET = "ab" * 32


def operator(api: Roles, vo: str = "lhcb", sub: str = "carol") -> httpx.AsyncClient:
    return api.with_token(api.sut.token(sub, vo, [OPERATOR]))


async def pilots(
    api: Roles,
    vo: str = "lhcb",
    statuses: tuple[str, ...] = ("Running",),
    *,
    site: str = "LCG.CERN.cern",
    ce: str = "ce1.cern.ch",
    queue: str = "long",
) -> list[str]:
    """Register pilots of `vo` on one queue in these statuses; their stamps."""
    stamps = [uuid.uuid4().hex for _ in statuses]
    client = api.director if vo == "lhcb" else api.other_director
    r = await client.post(
        "/api/pilots/bulk",
        json={
            "vo": vo,
            "pilots": [
                {
                    "pilot_stamp": s,
                    "grid_site": site,
                    "destination_site": ce,
                    "queue": queue,
                    "pilot_reference": f"https://{ce}/{s}",
                }
                for s in stamps
            ],
        },
    )
    assert r.status_code == HTTPStatus.CREATED, r.text
    r = await client.patch(
        "/api/pilots/metadata",
        json={s: {"Status": st} for s, st in zip(stamps, statuses, strict=True)},
    )
    assert r.status_code == HTTPStatus.NO_CONTENT, r.text
    return stamps


async def pilot(api: Roles, stamp: str) -> dict[str, Any]:
    r = await api.admin.post(
        "/api/pilots/search",
        json={"search": [{"parameter": "PilotStamp", "operator": "eq", "value": stamp}]},
    )
    [row] = r.json()
    result: dict[str, Any] = row
    return result


async def kill(client: httpx.AsyncClient, stamps: list[str], reason: str = "black hole") -> Any:
    return await client.post(KILLS, json={"pilot_stamps": stamps, "reason": reason})


async def listed(client: httpx.AsyncClient, url: str = KILLS, **params: Any) -> list[Any]:
    r = await client.get(url, params=params)
    assert r.status_code == HTTPStatus.OK, r.text
    result: list[Any] = r.json()
    return result


async def outcome(
    client: httpx.AsyncClient, request_id: int, what: str, error: str | None = None
) -> httpx.Response:
    return await client.patch(
        KILLS, json={"outcomes": [{"request_id": request_id, "outcome": what, "error": error}]}
    )


async def test_an_operator_kills_pilots_of_its_vo_and_the_request_is_recorded(
    api: Roles,
) -> None:
    running, ended = await pilots(api, statuses=("Running", "Done"))
    before = datetime.now(UTC)
    r = await kill(operator(api), [running, ended, running], reason="  black hole node  ")
    assert r.status_code == HTTPStatus.CREATED, r.text
    made = r.json()
    assert [m["pilot_stamp"] for m in made] == [running, ended]  # each pilot once
    live, done = made
    assert live["state"] == "requested"
    assert done["state"] == "already_ended"  # reported as such, not an error
    assert live["reason"] == "black hole node"
    assert live["requested_by"] == "carol"
    assert live["kind"] == "kill"
    assert (live["attempts"], live["last_error"], live["next_attempt_at"]) == (0, None, None)
    requested_at = datetime.fromisoformat(live["requested_at"].replace("Z", "+00:00"))
    assert before - timedelta(seconds=1) <= requested_at <= datetime.now(UTC) + timedelta(seconds=1)
    assert live["pilot_reference"] == f"https://ce1.cern.ch/{running}"
    assert (live["site"], live["ce"], live["queue"]) == ("LCG.CERN.cern", "ce1.cern.ch", "long")

    again = await kill(operator(api, sub="dave"), [running], reason="again")
    assert again.status_code == HTTPStatus.CREATED, again.text
    assert [a["request_id"] for a in again.json()] == [live["request_id"]]  # the open one

    for reader in (api.user, api.director, api.admin):
        assert {k["request_id"] for k in await listed(reader)} == {m["request_id"] for m in made}
    assert await listed(api.other_vo) == []
    assert [k["request_id"] for k in await listed(api.user, state="open")] == [live["request_id"]]
    assert [k["pilot_stamp"] for k in await listed(api.user, pilot_stamp=ended)] == [ended]
    r = await api.user.get(KILLS, params={"state": "whatever"})
    assert r.status_code == HTTPStatus.BAD_REQUEST, r.text
    r = await api.user.get(KILLS, params={"vo": "dteam"})
    assert r.status_code == HTTPStatus.FORBIDDEN, r.text
    assert (await pilot(api, running))["Status"] == "Running"  # nothing until the director


async def test_who_may_ask_for_a_kill(api: Roles) -> None:
    [mine] = await pilots(api)
    [theirs] = await pilots(api, "dteam")
    for who, client in {
        "user": api.user,
        "director": api.director,
        "legacy-pilot": api.legacy_pilot,
        "site-manager": api.with_token(api.sut.token("sm", "lhcb", [SITE_MANAGER])),
    }.items():
        r = await kill(client, [mine])
        assert r.status_code == HTTPStatus.FORBIDDEN, f"{who}: {r.text}"
        r = await client.post(OUTPUT_REQUESTS, json={"pilot_stamps": [mine]})
        assert r.status_code == HTTPStatus.FORBIDDEN, f"{who}: {r.text}"
    # another VO's pilot is as unknown as a stamp never registered
    unknown = uuid.uuid4().hex
    r = await kill(operator(api), [mine, theirs, unknown])
    assert r.status_code == HTTPStatus.NOT_FOUND, r.text
    assert r.json()["detail"]["pilot_stamps"] == [theirs, unknown]
    r = await operator(api).post(OUTPUT_REQUESTS, json={"pilot_stamps": [theirs]})
    assert r.status_code == HTTPStatus.NOT_FOUND, r.text
    assert await listed(api.admin) == []  # nothing stored, not even for `mine`
    r = await operator(api).post(
        KILLS, json={"queue": {"vo": "dteam", "site": "S", "ce": "C", "queue": "Q"}, "reason": "x"}
    )
    assert r.status_code == HTTPStatus.FORBIDDEN, r.text
    # an operator of both VOs, and an administrator, may
    both = api.with_token(api.sut.token("olga", "lhcb", [OPERATOR], extra_vos=["dteam"]))
    assert (await kill(both, [theirs])).status_code == HTTPStatus.CREATED
    assert (await kill(api.admin, [mine])).status_code == HTTPStatus.CREATED


async def test_a_kill_names_one_selection_and_a_reason(api: Roles) -> None:
    [mine] = await pilots(api)
    client = operator(api)
    for body in (
        {"pilot_stamps": [mine]},  # no reason
        {"pilot_stamps": [mine], "reason": " "},
        {"pilot_stamps": [mine], "reason": "a\x00b"},
        {"pilot_stamps": [], "reason": "x"},
        {"reason": "x"},
        {"pilot_stamps": [mine], "queue": {"site": "S", "ce": "C", "queue": "Q"}, "reason": "x"},
        {"pilot_stamps": ["../etc"], "reason": "x"},
        {"pilot_stamps": [mine], "reason": "x" * 256},
    ):
        r = await client.post(KILLS, json=body)
        assert r.status_code == HTTPStatus.UNPROCESSABLE_ENTITY, f"{body}: {r.text}"


async def test_all_live_pilots_of_a_queue(api: Roles) -> None:
    live = await pilots(api, statuses=("Submitted", "Waiting", "Running", "Done", "Aborted"))
    [elsewhere] = await pilots(api, queue="short")
    [other_vo] = await pilots(api, "dteam")
    r = await operator(api).post(
        KILLS,
        json={
            "queue": {"site": "LCG.CERN.cern", "ce": "ce1.cern.ch", "queue": "long"},
            "reason": "queue drained",
        },
    )
    assert r.status_code == HTTPStatus.CREATED, r.text
    assert [k["pilot_stamp"] for k in r.json()] == live[:3]
    assert {k["state"] for k in r.json()} == {"requested"}
    assert elsewhere not in r.text
    assert other_vo not in r.text


async def test_the_director_carries_a_kill_out_and_the_pilot_ends_aborted(api: Roles) -> None:
    [a, b] = await pilots(api, statuses=("Running", "Waiting"))
    [theirs] = await pilots(api, "dteam")
    made = (await kill(operator(api), [a, b], reason="black hole node")).json()
    [dteam_kill] = (await kill(api.admin, [theirs])).json()
    ids = [m["request_id"] for m in made]

    pending = await listed(api.director, state="pending")
    assert [p["request_id"] for p in pending] == ids  # oldest first, own VO only
    assert [p["request_id"] for p in await listed(api.other_director, state="pending")] == [
        dteam_kill["request_id"]
    ]

    # another VO's director can neither see nor record; nothing changes
    r = await outcome(api.other_director, ids[0], "done")
    assert r.status_code == HTTPStatus.NOT_FOUND, r.text
    r = await outcome(api.director, dteam_kill["request_id"], "done")
    assert r.status_code == HTTPStatus.NOT_FOUND, r.text
    for who in (api.user, operator(api)):
        r = await outcome(who, ids[0], "done")
        assert r.status_code == HTTPStatus.FORBIDDEN, r.text
    assert (await pilot(api, theirs))["Status"] == "Running"

    r = await outcome(api.director, ids[0], "in_progress")
    assert r.json()[0]["state"] == "in_progress"
    r = await outcome(api.director, ids[0], "done")
    assert r.status_code == HTTPStatus.OK, r.text
    [done] = r.json()
    assert (done["state"], done["attempts"], done["pilot_status"]) == ("done", 1, "Aborted")
    record = await pilot(api, a)
    assert record["Status"] == "Aborted"
    assert record["StatusReason"] == "killed by carol: black hole node"
    r = await outcome(api.director, ids[0], "failed", "late")  # re-sent: changes nothing
    assert r.json()[0]["state"] == "done"

    r = await outcome(api.director, ids[1], "already_ended")
    assert r.json()[0]["state"] == "already_ended"
    assert (await pilot(api, b))["Status"] == "Waiting"  # the monitoring step records its end
    assert await listed(api.director, state="pending") == []
    # a new kill of the pilot may be asked once the first is closed
    assert (await kill(operator(api), [b])).json()[0]["request_id"] not in ids


async def test_temporary_failures_back_off_then_fail(api: Roles) -> None:
    [a] = await pilots(api)
    [made] = (await kill(operator(api), [a])).json()
    rid = made["request_id"]
    r = await outcome(api.director, rid, "retry", "CE timed out")
    [first] = r.json()
    assert (first["state"], first["attempts"], first["last_error"]) == (
        "in_progress",
        1,
        "CE timed out",
    )
    due = datetime.fromisoformat(first["next_attempt_at"].replace("Z", "+00:00"))
    assert timedelta(seconds=50) < due - datetime.now(UTC) <= backoff(1)
    assert await listed(api.director, state="pending") == []  # not due yet
    assert [k["request_id"] for k in await listed(api.director, state="open")] == [rid]
    ctx = api.sut.app.state.ctx
    for attempt in range(2, MAX_ATTEMPTS + 1):
        async with ctx.db.transaction() as conn:  # the back-off has passed
            await conn.execute(update(REQUESTS).values(NextAttemptAt=datetime(2000, 1, 1)))
        assert [k["request_id"] for k in await listed(api.director, state="pending")] == [rid]
        [now] = (await outcome(api.director, rid, "retry", f"timeout {attempt}")).json()
    assert now["state"] == "failed"
    assert now["attempts"] == MAX_ATTEMPTS
    assert now["last_error"] == f"gave up after {MAX_ATTEMPTS} attempts: timeout {MAX_ATTEMPTS}"
    assert (await pilot(api, a))["Status"] == "Running"
    [twice] = (await kill(operator(api), [a])).json()
    r = await api.director.patch(
        KILLS,
        json={"outcomes": [{"request_id": twice["request_id"], "outcome": "done"}] * 2},
    )
    assert r.status_code == HTTPStatus.BAD_REQUEST, r.text


def test_backoff_doubles_from_a_minute_to_an_hour() -> None:
    assert [backoff(n).total_seconds() for n in range(1, 9)] == [
        60,
        120,
        240,
        480,
        960,
        1920,
        3600,
        3600,
    ]
    assert backoff(10_000) == timedelta(hours=1)


async def upload(client: httpx.AsyncClient, stamp: str, **fields: Any) -> httpx.Response:
    return await client.put(OUTPUT, json={"pilot_stamp": stamp, **fields})


async def test_an_output_upload_is_redacted_and_read_by_its_vo(api: Roles) -> None:
    [mine] = await pilots(api, statuses=("Failed",))
    [theirs] = await pilots(api, "dteam")
    r = await upload(
        api.director,
        mine,
        std_output=f"Options: ('--pilotSecret', '{SECRET}')\nall fine\n",
        std_error="Traceback: boom\n",
        ce_log="job exited with code 1",
    )
    assert r.status_code == HTTPStatus.OK, r.text
    stored = r.json()
    assert SECRET not in r.text
    assert "<redacted>" in stored["std_output"]
    assert "all fine" in stored["std_output"]
    assert (stored["std_error"], stored["ce_log"]) == (
        "Traceback: boom\n",
        "job exited with code 1",
    )
    assert (stored["truncated"], stored["not_available"], stored["uploaded_by"]) == (
        False,
        None,
        "director",
    )
    for reader in (api.user, api.admin, operator(api)):
        r = await reader.get(OUTPUT, params={"pilot_stamp": mine})
        assert r.status_code == HTTPStatus.OK, r.text
        assert r.json()["std_error"] == "Traceback: boom\n"
    for outsider in (api.other_vo, api.other_director):
        r = await outsider.get(OUTPUT, params={"pilot_stamp": mine})
        assert r.status_code == HTTPStatus.NOT_FOUND, r.text
        assert "boom" not in r.text
    r = await api.user.get(OUTPUT, params={"pilot_stamp": theirs})
    assert r.status_code == HTTPStatus.NOT_FOUND
    r = await api.other_vo.get(OUTPUT, params={"pilot_stamp": theirs})
    assert r.status_code == HTTPStatus.NOT_FOUND  # no output stored
    # only a director of the pilot's VO uploads
    for who in (api.user, operator(api), api.legacy_pilot):
        assert (await upload(who, mine, std_output="x")).status_code == HTTPStatus.FORBIDDEN
    assert (await upload(api.other_director, mine, std_output="x")).status_code == 404
    assert (await upload(api.director, theirs, std_output="x")).status_code == 404
    r = await api.admin.get(OUTPUT, params={"pilot_stamp": theirs})
    assert r.status_code == HTTPStatus.NOT_FOUND


async def test_a_long_output_keeps_its_tail(api: Roles) -> None:
    [mine] = await pilots(api, statuses=("Failed",))
    limit = api.sut.settings.pilot_output_max_bytes
    body = "é" * limit + "the reason it failed"
    r = await upload(api.director, mine, std_output=body, std_error="short")
    assert r.status_code == HTTPStatus.OK, r.text
    stored = r.json()
    assert stored["truncated"] is True
    assert stored["std_output"].endswith("the reason it failed")
    assert stored["std_output"].startswith("[... ")
    assert len(stored["std_output"].encode()) <= limit
    assert stored["std_error"] == "short"
    r = await upload(api.director, mine, std_output="x" * (MAX_OUTPUT_CHARS + 1))
    assert r.status_code == HTTPStatus.UNPROCESSABLE_ENTITY
    for fields in ({}, {"std_output": "x", "not_available": "gone"}, {"not_available": ""}):
        r = await upload(api.director, mine, **fields)
        assert r.status_code == HTTPStatus.UNPROCESSABLE_ENTITY, fields


async def test_an_output_request_is_closed_by_the_upload_and_not_available_is_recorded_once(
    api: Roles,
) -> None:
    [a, b] = await pilots(api, statuses=("Running", "Done"))
    r = await operator(api).post(OUTPUT_REQUESTS, json={"pilot_stamps": [a, b], "reason": "why"})
    assert r.status_code == HTTPStatus.CREATED, r.text
    ra, rb = r.json()
    assert (ra["kind"], ra["state"], rb["state"]) == ("output", "requested", "requested")
    pending = await listed(api.director, OUTPUT_REQUESTS, state="pending")
    assert [p["pilot_stamp"] for p in pending] == [a, b]
    assert await listed(api.director, KILLS) == []

    assert (await upload(api.director, a, std_output="out")).status_code == HTTPStatus.OK
    r = await upload(api.director, b, not_available="the CE purged the job")
    assert r.status_code == HTTPStatus.OK, r.text
    assert r.json()["not_available"] == "the CE purged the job"
    states = {k["pilot_stamp"]: k for k in await listed(api.user, OUTPUT_REQUESTS)}
    assert states[a]["state"] == "done"
    assert states[b]["state"] == "failed"
    assert states[b]["last_error"] == "not available: the CE purged the job"
    assert await listed(api.director, OUTPUT_REQUESTS, state="pending") == []

    # recorded once: a second report changes nothing, and never replaces an output
    r = await upload(api.director, b, not_available="still gone")
    assert r.json()["not_available"] == "the CE purged the job"
    r = await upload(api.director, a, not_available="gone now")
    assert (r.json()["std_output"], r.json()["not_available"]) == ("out", None)
    r = await api.user.get(OUTPUT, params={"pilot_stamp": a})
    assert r.json()["std_output"] == "out"

    # a director that cannot fetch reports it through the request
    [again] = (await operator(api).post(OUTPUT_REQUESTS, json={"pilot_stamps": [a]})).json()
    r = await api.director.patch(
        OUTPUT_REQUESTS,
        json={"outcomes": [{"request_id": again["request_id"], "outcome": "failed", "error": "x"}]},
    )
    assert r.json()[0]["state"] == "failed"
    r = await api.director.patch(
        KILLS, json={"outcomes": [{"request_id": again["request_id"], "outcome": "done"}]}
    )
    assert r.status_code == HTTPStatus.NOT_FOUND  # not a kill request


async def test_requests_and_outputs_go_with_their_pilot(api: Roles) -> None:
    [a] = await pilots(api, statuses=("Failed",))
    await kill(operator(api), [a])
    await upload(api.director, a, std_output="out")
    r = await api.admin.request("DELETE", "/api/pilots/", json={"pilot_stamps": [a]})
    assert r.status_code == HTTPStatus.OK, r.text
    assert await listed(api.admin) == []
    assert (await api.admin.get(OUTPUT, params={"pilot_stamp": a})).status_code == 404
