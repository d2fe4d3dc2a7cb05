"""Empty pilots, on every database backend: the jobs a pilot ran are learnt from
`PATCH /api/pilots/jobs` and from the JobAgent's log line; `GET /api/director/queues/empty-pilots`
counts each queue's Done pilots of a window with and without a job, within the caller's VOs;
the queue report carries the director's empty ratio and submission factor."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from typing import Any

import httpx
from pydantic import SecretStr
from sqlalchemy import update

from director.client import ServerClient, TokenSource
from director.empty_pilots import EmptyPilotCounts, counts_by_queue
from server.clock import utcnow
from server.db.schema import PILOTS
from server.identity import TRUSTED_HOST
from tests.conftest import Roles
from tests.server.test_director_queues import put, queue, states

URL = "/api/director/queues/empty-pilots"
LOGS = "/api/pilots/internal/message"

#: A JobAgent line as DIRAC v9's gLogger prints it (JobAgent.execute, "Received", ...).
RECEIVED = (
    "2026-12-08T10:00:00,123456Z WorkloadManagement/JobAgent INFO: "
    "Received JobID={job}, JobType=User, Owner=alice, JobGroup=lhcb_user"
)


async def register(
    api: Roles,
    n: int,
    *,
    ce: str = "ce1.lhcb.org",
    queue_name: str = "long",
    vo: str = "lhcb",
    director: httpx.AsyncClient | None = None,
    secrets: bool = False,
) -> tuple[list[str], list[str]]:
    stamps = [uuid.uuid4().hex for _ in range(n)]
    body: dict[str, Any] = {
        "vo": vo,
        "pilots": [
            {
                "pilot_stamp": s,
                "grid_site": f"Site.{vo}.org",
                "destination_site": ce,
                "queue": queue_name,
            }
            for s in stamps
        ],
        "mint_secrets": secrets,
    }
    r = await (director or api.director).post("/api/pilots/bulk", json=body)
    assert r.status_code == HTTPStatus.CREATED, r.text
    return stamps, [s["pilot_secret"] for s in r.json()["secrets"]]


async def set_status(client: httpx.AsyncClient, stamps: list[str], status: str = "Done") -> None:
    r = await client.patch("/api/pilots/metadata", json={s: {"Status": status} for s in stamps})
    assert r.status_code == HTTPStatus.NO_CONTENT, r.text


async def give_jobs(client: httpx.AsyncClient, stamp: str, *jobs: int) -> None:
    r = await client.patch("/api/pilots/jobs", json={"pilot_stamp": stamp, "job_ids": list(jobs)})
    assert r.status_code == HTTPStatus.NO_CONTENT, r.text


async def pilot_client(api: Roles, stamp: str, secret: str) -> httpx.AsyncClient:
    r = await api.anonymous.post(
        "/api/auth/secret-exchange", json={"pilot_stamp": stamp, "pilot_secret": secret}
    )
    assert r.status_code == HTTPStatus.OK, r.text
    return api.with_token(r.json()["access_token"])


async def send_lines(client: httpx.AsyncClient, stamp: str, *messages: str) -> None:
    lines = [
        {"timestamp": "2026-12-08T10:00:00Z", "severity": "INFO", "message": m, "scope": "Pilot"}
        for m in messages
    ]
    r = await client.post(LOGS, json={"pilot_stamp": stamp, "lines": lines})
    assert r.status_code == HTTPStatus.NO_CONTENT, r.text


async def jobs_of(api: Roles, stamp: str) -> list[int]:
    r = await api.user.get("/api/pilots/jobs", params={"pilot_stamp": stamp})
    assert r.status_code == HTTPStatus.OK, r.text
    jobs: list[int] = r.json()["job_ids"]
    return jobs


async def counts(client: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    r = await client.get(URL, params=params)
    assert r.status_code == HTTPStatus.OK, r.text
    rows: list[dict[str, Any]] = r.json()
    return rows


async def age(api: Roles, stamps: list[str], by: timedelta) -> None:
    """Move these pilots' LastUpdateTime (when they ended) back in time."""
    async with api.sut.app.state.ctx.db.transaction() as conn:
        await conn.execute(
            update(PILOTS)
            .where(PILOTS.c.PilotStamp.in_(stamps))
            .values(LastUpdateTime=utcnow() - by)
        )


async def test_done_pilots_per_queue_with_and_without_jobs(api: Roles) -> None:
    # ce1/long: 4 Done (1 with jobs through the API, 1 with CurrentJobID, 2 empty),
    # 1 Running with a job and 1 Failed (neither is counted: only Done pilots end empty)
    long_, _ = await register(api, 6)
    await set_status(api.director, long_[:4])
    await give_jobs(api.director, long_[0], 101, 102)
    r = await api.director.patch("/api/pilots/metadata", json={long_[1]: {"CurrentJobID": 7}})
    assert r.status_code == HTTPStatus.NO_CONTENT
    await set_status(api.director, [long_[4]], "Running")
    await give_jobs(api.director, long_[4], 103)
    await set_status(api.director, [long_[5]], "Failed")
    # ce2/short: 3 Done, all empty; another VO's queue: not shown to lhcb
    short, _ = await register(api, 3, ce="ce2.lhcb.org", queue_name="short")
    await set_status(api.director, short)
    dteam, _ = await register(api, 2, vo="dteam", ce="ce.dteam.org", director=api.other_director)
    await set_status(api.other_director, dteam)
    await give_jobs(api.other_director, dteam[0], 555)

    rows = await counts(api.director)
    assert rows == [
        {
            "vo": "lhcb",
            "site": "Site.lhcb.org",
            "ce": "ce1.lhcb.org",
            "queue": "long",
            "empty": 2,
            "with_jobs": 2,
        },
        {
            "vo": "lhcb",
            "site": "Site.lhcb.org",
            "ce": "ce2.lhcb.org",
            "queue": "short",
            "empty": 3,
            "with_jobs": 0,
        },
    ]
    assert await counts(api.user) == rows  # a reader of the VO sees the same
    assert await counts(api.other_vo) == [
        {
            "vo": "dteam",
            "site": "Site.dteam.org",
            "ce": "ce.dteam.org",
            "queue": "long",
            "empty": 1,
            "with_jobs": 1,
        }
    ]
    assert [r["vo"] for r in await counts(api.admin)] == ["dteam", "lhcb", "lhcb"]


async def test_the_window_counts_pilots_that_ended_in_it(api: Roles) -> None:
    old, _ = await register(api, 2)
    recent, _ = await register(api, 1)
    await set_status(api.director, old + recent)
    await age(api, old, timedelta(hours=2))
    (row,) = await counts(api.director)  # default: the last hour
    assert (row["empty"], row["with_jobs"]) == (1, 0)
    since = datetime.now(UTC) - timedelta(hours=3)
    (row,) = await counts(api.director, since=since.isoformat())
    assert row["empty"] == 3
    naive = since.replace(tzinfo=None).isoformat()  # a naive time is UTC
    assert (await counts(api.director, since=naive))[0]["empty"] == 3
    later = datetime.now(UTC) + timedelta(minutes=5)
    assert await counts(api.director, since=later.isoformat()) == []


async def test_a_window_too_far_back_or_a_bad_time_is_refused(api: Roles) -> None:
    too_old = datetime.now(UTC) - timedelta(days=8)
    r = await api.director.get(URL, params={"since": too_old.isoformat()})
    assert r.status_code == HTTPStatus.BAD_REQUEST
    assert "too far back" in r.json()["detail"]
    r = await api.director.get(URL, params={"since": "yesterday"})
    assert r.status_code == HTTPStatus.UNPROCESSABLE_ENTITY


async def test_only_readers_read_the_counts(api: Roles) -> None:
    stamps, secrets = await register(api, 1, secrets=True)
    pilot = await pilot_client(api, stamps[0], secrets[0])
    assert (await pilot.get(URL)).status_code == HTTPStatus.FORBIDDEN
    assert (await api.legacy_pilot.get(URL)).status_code == HTTPStatus.FORBIDDEN
    assert (await api.anonymous.get(URL)).status_code == HTTPStatus.UNAUTHORIZED


async def test_the_jobagent_line_records_the_job_the_pilot_received(api: Roles) -> None:
    stamps, secrets = await register(api, 3, secrets=True)
    busy, idle, chunked = stamps
    client = await pilot_client(api, busy, secrets[0])
    await send_lines(
        client,
        busy,
        "Executing command dirac-agent WorkloadManagement/JobAgent -o MaxCycles=10",
        RECEIVED.format(job=4711),
    )
    assert await jobs_of(api, busy) == [4711]
    # the pilot re-sends a batch (timer and explicit flushes): nothing changes
    await send_lines(client, busy, RECEIVED.format(job=4711))
    assert await jobs_of(api, busy) == [4711]
    # a pilot whose JobAgent matched nothing stays without a job
    client = await pilot_client(api, idle, secrets[1])
    await send_lines(
        client,
        idle,
        "2026-12-08T10:00:00,1Z WorkloadManagement/JobAgent NOTICE: "
        "Job request OK, but no match found No match found",
        "user output: Received JobID=99, JobType=User",  # not the JobAgent speaking
    )
    assert await jobs_of(api, idle) == []
    # the pilot's remote logger ships output in chunks: several lines in one message
    client = await pilot_client(api, chunked, secrets[2])
    await send_lines(client, chunked, RECEIVED.format(job=8) + "\n" + RECEIVED.format(job=9))
    assert await jobs_of(api, chunked) == [8, 9]
    await set_status(api.director, stamps)
    (row,) = await counts(api.director)
    assert (row["empty"], row["with_jobs"]) == (1, 2)


async def test_the_queue_report_carries_the_empty_ratio_and_factor(api: Roles) -> None:
    r = await put(
        api.director,
        queue("throttled", ended_pilots=12, empty_ratio=0.9, submission_factor=0.25),
        queue("plain"),
    )
    assert r.status_code == HTTPStatus.NO_CONTENT, r.text
    plain, throttled = sorted(await states(api.user), key=lambda row: row["Queue"])
    assert (throttled["EndedPilots"], throttled["EmptyRatio"]) == (12, 0.9)
    assert throttled["SubmissionFactor"] == 0.25
    assert (plain["EndedPilots"], plain["EmptyRatio"], plain["SubmissionFactor"]) == (
        None,
        None,
        None,
    )
    for bad in ({"empty_ratio": 1.5}, {"submission_factor": -0.1}, {"ended_pilots": -1}):
        r = await put(api.director, queue("bad", **bad))
        assert r.status_code == HTTPStatus.UNPROCESSABLE_ENTITY, bad


async def test_the_directors_client_reads_the_counts_keyed_by_queue(api: Roles) -> None:
    stamps, _ = await register(api, 3)
    await set_status(api.director, stamps)
    await give_jobs(api.director, stamps[0], 1)
    token = api.sut.token("director", "lhcb", [TRUSTED_HOST])
    client = ServerClient(
        "http://testserver",
        TokenSource(value=SecretStr(token)),
        transport=httpx.ASGITransport(app=api.sut.app),
    )
    try:
        rows = await client.empty_pilots(datetime.now(UTC) - timedelta(minutes=30))
    finally:
        await client.aclose()
    assert counts_by_queue(rows) == {
        ("lhcb", "Site.lhcb.org", "ce1.lhcb.org", "long"): EmptyPilotCounts(empty=2, with_jobs=1)
    }
