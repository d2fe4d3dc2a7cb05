"""Maintenance: what one run purges (DIRAC's defaults), and the server's own schedule, with one
runner among the processes sharing a database, elected by a lease that a dead runner loses."""

from __future__ import annotations

import argparse
import asyncio
import logging
import uuid
from datetime import datetime, timedelta
from http import HTTPStatus

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select, update

from server.app import create_app
from server.cli import maintenance_command
from server.clock import utcnow
from server.context import ServerContext
from server.db.engine import Database
from server.db.schema import LEASES, PILOTS
from server.maintenance import run_maintenance
from server.scheduler import LEASE_KEY, MaintenanceRunner
from server.settings import ServerSettings
from tests.conftest import ISSUER, TEST_VOS, Roles

DAY = timedelta(days=1)


class Clock:
    """An injected clock: naive UTC like `server.clock.utcnow`, moved by hand."""

    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


async def pilot(api: Roles, status: str, age: timedelta) -> str:
    """A pilot with this status, submitted `age` ago."""
    stamp = uuid.uuid4().hex
    r = await api.director.post("/api/pilots/", json={"pilot_stamp": stamp, "vo": "lhcb"})
    assert r.status_code == HTTPStatus.CREATED, r.text
    async with api.sut.app.state.ctx.db.transaction() as conn:
        await conn.execute(
            update(PILOTS)
            .where(PILOTS.c.PilotStamp == stamp)
            .values(Status=status, SubmissionTime=utcnow() - age)
        )
    return stamp


async def stamps(api: Roles) -> set[str]:
    async with api.sut.app.state.ctx.db.transaction() as conn:
        return {r[0] for r in await conn.execute(select(PILOTS.c.PilotStamp))}


def removed(what: str) -> float:
    return (
        REGISTRY.get_sample_value("site_director_server_maintenance_removed_total", {"what": what})
        or 0.0
    )


# --- one run ----------------------------------------------------------------------------------


async def test_purge_honours_dirac_defaults(api: Roles, caplog: pytest.LogCaptureFixture) -> None:
    """PilotStatusAgent: ClearPilotsDelay 30 days for any status, ClearAbortedPilotsDelay 7 for
    Aborted ones, both counted from the submission."""
    settings = ServerSettings()
    assert (settings.pilot_retention_days, settings.aborted_pilot_retention_days) == (30, 7)
    kept = {
        await pilot(api, "Done", 29 * DAY),
        await pilot(api, "Running", 29 * DAY),
        await pilot(api, "Aborted", 6 * DAY),
        await pilot(api, "Failed", 8 * DAY),
        await pilot(api, "Submitted", timedelta(0)),
    }
    await pilot(api, "Done", 31 * DAY)
    await pilot(api, "Running", 31 * DAY)  # DIRAC clears any status past the delay
    await pilot(api, "Aborted", 8 * DAY)
    before = removed("pilots"), removed("aborted_pilots")

    with caplog.at_level(logging.INFO, logger="server.maintenance"):
        report = await run_maintenance(api.sut.app.state.ctx)

    assert await stamps(api) == kept
    assert (report.pilots, report.aborted_pilots) == (2, 1)
    [line] = [r.getMessage() for r in caplog.records if r.name == "server.maintenance"]
    assert line.startswith("maintenance done: pilots=2 aborted_pilots=1 secrets=0 ")
    assert (removed("pilots"), removed("aborted_pilots")) == (before[0] + 2, before[1] + 1)
    last = REGISTRY.get_sample_value("site_director_server_maintenance_last_run_timestamp_seconds")
    assert last is not None
    assert last > 0


async def test_zero_days_keeps_pilots(api: Roles) -> None:
    old = {await pilot(api, "Aborted", 400 * DAY), await pilot(api, "Done", 400 * DAY)}

    report = await run_maintenance(
        api.sut.app.state.ctx, pilot_retention_days=0, aborted_pilot_retention_days=0
    )

    assert (report.pilots, report.aborted_pilots) == (0, 0)
    assert await stamps(api) == old


async def test_the_command_shares_the_run_and_checks_its_flags(
    api: Roles, capsys: pytest.CaptureFixture[str]
) -> None:
    young = await pilot(api, "Done", 2 * DAY)
    await pilot(api, "Done", 4 * DAY)
    settings = api.sut.settings
    args = argparse.Namespace(
        db=settings.database_url,
        data_dir=str(settings.data_dir),
        log_retention_days=None,
        pilot_retention_days=3,
        aborted_retention_days=None,
    )

    assert await asyncio.to_thread(maintenance_command, args) == 0

    assert "pilots=1 aborted_pilots=0 " in capsys.readouterr().out
    assert await stamps(api) == {young}
    args.aborted_retention_days = -1
    assert await asyncio.to_thread(maintenance_command, args) == 2
    assert "--aborted-retention-days must be 0 or more" in capsys.readouterr().err


# --- the schedule -----------------------------------------------------------------------------


async def test_one_runner_at_a_time_and_a_dead_ones_lease_is_taken_over(api: Roles) -> None:
    """Two server processes on one database, each with its own connection pool."""
    sut = api.sut
    second = ServerContext(
        settings=sut.settings, db=Database(sut.settings.database_url), keys=sut.keys
    )
    clock = Clock()
    a = MaintenanceRunner(sut.app.state.ctx, holder="host-a:1", clock=clock)
    b = MaintenanceRunner(second, holder="host-b:1", clock=clock)
    interval = sut.settings.maintenance_interval
    try:
        assert await a.tick() is not None
        assert await b.tick() is None
        for _ in range(3):  # the holder renews at each tick, the other keeps waiting
            clock.advance(interval)
            assert await a.tick() is not None
            assert await b.tick() is None
        assert (a.runs, b.runs) == (4, 0)

        # a dies: its lease lasts two intervals from its last renewal, then b takes over
        clock.advance(2 * interval - 1)
        assert await b.tick() is None
        clock.advance(2)
        assert await b.tick() is not None
        assert b.leading
        assert await a.tick() is None, "a runner coming back finds the lease taken"
        assert not a.leading

        # a runner stopping cleanly gives the lease up: the other takes over at its next tick
        await b.stop()
        assert await a.tick() is not None
        assert (a.runs, b.runs) == (5, 1)
    finally:
        await a.stop()
        await second.db.close()


async def test_the_server_runs_the_maintenance_on_its_schedule(api: Roles) -> None:
    """A second app on the test database, with a short interval: it purges without being
    asked, and gives the lease up when it stops."""
    sut = api.sut
    assert sut.app.state.maintenance is None, "switched off in the test server's settings"
    old = await pilot(api, "Aborted", 8 * DAY)
    young = await pilot(api, "Aborted", timedelta(0))
    settings = ServerSettings(
        data_dir=sut.settings.data_dir,
        db_url=sut.settings.database_url,
        issuer=ISSUER,
        vos=TEST_VOS,
        maintenance_interval=0.05,
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        runner = app.state.maintenance
        assert isinstance(runner, MaintenanceRunner)
        async with asyncio.timeout(60):
            while runner.runs < 2:
                await asyncio.sleep(0.01)
        assert old not in await stamps(api)
        assert young in await stamps(api)
        async with sut.app.state.ctx.db.transaction() as conn:
            holders = [r[0] for r in await conn.execute(select(LEASES.c.Holder))]
        assert holders == [runner.holder]
    async with sut.app.state.ctx.db.transaction() as conn:
        rows = list(await conn.execute(select(LEASES).where(LEASES.c.Queue == LEASE_KEY)))
    assert rows == []
