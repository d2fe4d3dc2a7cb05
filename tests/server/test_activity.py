"""The monitor's time buckets, counted by the database itself on every backend, at the edges."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from server.db import activity
from server.db import pilots as db
from server.models import PilotStatus, ScalarOperator, ScalarSearch
from tests.conftest import Roles

START = datetime(2026, 11, 27, 14, 0)
HOUR = timedelta(hours=1)


async def insert(api: Roles, *times: datetime, vo: str = "lhcb") -> None:
    rows = [
        db.pilot_row(
            vo, (uuid.uuid4().hex, "DIRAC", "Site", "ce", "q", None, PilotStatus.DONE.value), t
        )
        for t in times
    ]
    async with api.sut.app.state.ctx.db.transaction() as conn:
        await db.insert_pilots(conn, rows)


async def counts(api: Roles, **kw: object) -> list[int]:
    async with api.sut.app.state.ctx.db.read() as conn:
        return await activity.counts_per_bucket(
            conn, time_column="SubmissionTime", start=START, width=HOUR, buckets=24, **kw
        )  # type: ignore[arg-type]


async def test_each_time_lands_in_its_own_bucket(api: Roles) -> None:
    micro = timedelta(microseconds=1)
    await insert(
        api,
        START - micro,  # before the first bucket: not counted
        START,  # the first instant of bucket 0
        START + HOUR - micro,  # the last instant of bucket 0
        START + HOUR,  # bucket 1
        START + 5 * HOUR + timedelta(minutes=30),
        START + 5 * HOUR + timedelta(minutes=59, seconds=59),
        START + 24 * HOUR - micro,  # the last instant of the last bucket
        START + 24 * HOUR,  # after the last bucket: not counted
    )
    expected = [0] * 24
    expected[0], expected[1], expected[5], expected[23] = 2, 1, 2, 1
    assert await counts(api, specs=[]) == expected


async def test_buckets_honour_the_search_conditions(api: Roles) -> None:
    await insert(api, START + HOUR, START + 2 * HOUR)
    await insert(api, START + HOUR, vo="dteam")
    only_lhcb = [ScalarSearch(parameter="VO", operator=ScalarOperator.EQ, value="lhcb")]
    found = await counts(api, specs=only_lhcb)
    assert found[1:3] == [1, 1]
    assert sum(found) == 2
