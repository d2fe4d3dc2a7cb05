"""Learning from empty pilots in the submission cycle (`director.cycle.throttles`): a queue
whose recent Done pilots mostly ran no job gets fewer pilots, one whose pilots carry jobs
again gets its share back, the factor is decided at most once per quarter window and only on
new counts, survives a restart through the queue report, and is kept when the counts cannot
be read (real server over HTTPS on loopback, local CE running real processes)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable

import pytest

from director.client import ServerClient
from director.config import Settings
from director.cycle.throttles import DECIDE_EVERY
from director.errors import ServerUnavailable
from director.loop import Director
from server.models import BulkPilot, BulkRegistration, PilotMetadata, PilotStatus
from tests.conftest import LiveServer
from tests.director.conftest import ManualClock, queue_block
from tests.director.cycle.conftest import DirectorOnSite, only_queue
from tests.director.cycle.test_report import reported

WINDOW = 3600
QUEUE = queue_block(max_total_pilots=100, max_waiting_pilots=100, pilots_per_cycle=4)


async def ended_pilots(director: Director, site: str, *, empty: int, with_jobs: int) -> None:
    """Done pilots of the director's queue on the server, `with_jobs` of them with a job."""
    client = director.client
    assert client is not None
    ref = only_queue(director)
    stamps = [uuid.uuid4().hex for _ in range(empty + with_jobs)]
    await client.register_bulk(
        BulkRegistration(
            vo=ref.vo,
            pilots=[
                BulkPilot(
                    pilot_stamp=s, grid_site=site, destination_site=ref.ce, queue=ref.ce_queue
                )
                for s in stamps
            ],
        )
    )
    await client.patch_metadata(
        {
            s: PilotMetadata(
                Status=PilotStatus.DONE, CurrentJobID=1000 + i if i < with_jobs else None
            )
            for i, s in enumerate(stamps)
        }
    )


def on_site(director_on_site: DirectorOnSite, **policy: object) -> tuple[Director, str]:
    return director_on_site(
        queues={"default": QUEUE},
        slots=100,
        director={"empty_pilots": {"window_s": WINDOW, **policy}},
    )


async def test_mostly_empty_pilots_get_fewer_and_pilots_with_jobs_recover(
    director_on_site: DirectorOnSite, live_server_tls: LiveServer, clock: ManualClock
) -> None:
    director, site = on_site(director_on_site, recover=0.5)
    await ended_pilots(director, site, empty=10, with_jobs=2)

    [outcome] = await director.run_cycle()
    assert (outcome.n, outcome.submitted) == (2, 2), outcome.why
    assert "empty pilots: x0.5 (10/12 empty)" in outcome.why
    row = (await reported(live_server_tls, site))["default"]
    assert (row["EndedPilots"], row["SubmissionFactor"]) == (12, 0.5)
    assert row["EmptyRatio"] == pytest.approx(10 / 12)

    # the same pilots again, or new ones within a quarter window: no new decision
    [outcome] = await director.run_cycle()
    assert outcome.n == 2, outcome.why
    await ended_pilots(director, site, empty=4, with_jobs=0)
    clock.advance(DECIDE_EVERY * WINDOW - 1)
    [outcome] = await director.run_cycle()
    assert outcome.n == 2, outcome.why
    assert "(14/16 empty)" in outcome.why

    # a quarter window later, on new counts: halved again, never below one pilot
    clock.advance(1)
    [outcome] = await director.run_cycle()
    assert outcome.n == 1, outcome.why
    assert "empty pilots: x0.25 (14/16 empty)" in outcome.why

    # its pilots carry jobs again: the factor grows back, in steps
    await ended_pilots(director, site, empty=0, with_jobs=20)
    clock.advance(DECIDE_EVERY * WINDOW)
    [outcome] = await director.run_cycle()
    assert outcome.n == 3, outcome.why  # 0.25 + 0.5
    await ended_pilots(director, site, empty=0, with_jobs=1)
    clock.advance(DECIDE_EVERY * WINDOW)
    [outcome] = await director.run_cycle()
    assert outcome.n == 4, outcome.why
    assert "empty pilots" not in outcome.why
    row = (await reported(live_server_tls, site))["default"]
    assert row["SubmissionFactor"] == 1.0


async def test_a_restarted_director_starts_from_the_reported_factor(
    director_on_site: DirectorOnSite,
    make_director: Callable[[Settings], Director],
    clock: ManualClock,
) -> None:
    director, site = on_site(director_on_site)
    await ended_pilots(director, site, empty=12, with_jobs=0)
    [outcome] = await director.run_cycle()
    assert outcome.n == 2, outcome.why
    await ended_pilots(director, site, empty=1, with_jobs=0)
    clock.advance(DECIDE_EVERY * WINDOW)
    [outcome] = await director.run_cycle()
    assert outcome.n == 1, outcome.why  # x0.25

    again = make_director(director.settings)  # a new process: nothing in memory
    [outcome] = await again.run_cycle()
    # 0.25 as reported (from 1, the same 13 pilots would give 0.5), and no decision on them
    assert outcome.n == 1, outcome.why
    assert "empty pilots: x0.25 (13/13 empty)" in outcome.why
    await ended_pilots(director, site, empty=1, with_jobs=0)
    [outcome] = await again.run_cycle()
    assert "empty pilots: x0.25 (14/14 empty)" in outcome.why  # a quarter window first


async def test_counts_that_cannot_be_read_keep_the_factors(
    director_on_site: DirectorOnSite, caplog: pytest.LogCaptureFixture
) -> None:
    director, site = on_site(director_on_site)
    await ended_pilots(director, site, empty=12, with_jobs=0)
    [outcome] = await director.run_cycle()
    assert outcome.n == 2, outcome.why
    client = director.client
    assert isinstance(client, ServerClient)

    async def down(*_: object) -> object:
        raise ServerUnavailable("GET empty-pilots: no answer")

    client.empty_pilots = down  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, logger="director.cycle.throttles"):
        [outcome] = await director.run_cycle()
    assert outcome.n == 2, outcome.why
    assert "factors kept" in caplog.text


async def test_the_policy_off_submits_as_planned(director_on_site: DirectorOnSite) -> None:
    director, site = on_site(director_on_site, enabled=False)
    await ended_pilots(director, site, empty=12, with_jobs=0)
    [outcome] = await director.run_cycle()
    assert outcome.n == 4, outcome.why
