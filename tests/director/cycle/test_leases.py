"""Per-queue leases (`director.cycle.leases`): two directors never work the same queue, and a
stopping one hands its queues over."""

from __future__ import annotations

from typing import Any

from tests.director.conftest import settings_for
from tests.director.cycle.conftest import SiteConfig, pilots_of


async def test_two_directors_never_work_the_same_queue(
    site_config: SiteConfig, make_director: Any
) -> None:
    path, site = site_config()
    first = make_director(settings_for(path, director={"name": "host-a"}))
    second = make_director(settings_for(path, director={"name": "host-b"}))
    [a] = await first.run_cycle()
    [b] = await second.run_cycle()
    assert a.submitted == 2
    assert b.submitted == 0
    assert b.why == "lease held by another director"
    assert len(await pilots_of(first, site)) == 2


async def test_a_stopping_director_hands_its_queues_over(
    site_config: SiteConfig, make_director: Any
) -> None:
    path, _site = site_config()
    first = make_director(settings_for(path, director={"name": "host-a"}))
    second = make_director(settings_for(path, director={"name": "host-b"}))
    [a] = await first.run_cycle()
    [b] = await second.run_cycle()
    assert (a.submitted, b.submitted) == (2, 0)
    await first.release_leases()  # what `run` does on SIGTERM
    [b] = await second.run_cycle()
    assert b.why != "lease held by another director"
    assert b.submitted == 2
    [a] = await first.run_cycle()
    assert a.why == "lease held by another director"
