"""The submission cycle in bulk (`director.cycle.registration`, `director.cycle.reconcile`): a
few server calls per cycle whatever the number of queues, and the failures between them
(registration refused, a queue failing after its pilots were registered, references lost)
still leave every pilot accounted for. Real server over HTTPS on loopback, local CE running
real processes."""

from __future__ import annotations

from collections import Counter
from typing import Any

from director.client import ce_reference
from director.errors import ServerUnavailable
from tests.conftest import LiveServer
from tests.director.conftest import queue_block, revoked_stamps
from tests.director.cycle.conftest import DirectorOnSite, count_calls, pilots_of

THREE_QUEUES = {
    "slots": 8,
    "queues": {
        name: queue_block(pilots_per_cycle=2, environment={"TEST_PILOT_SLEEP": "60"})
        for name in ("q1", "q2", "q3")
    },
}


async def test_one_cycle_over_three_queues_is_one_search_one_registration_one_patch(
    director_on_site: DirectorOnSite,
) -> None:
    director, site = director_on_site(**THREE_QUEUES)
    calls = count_calls(director)
    outcomes = await director.run_cycle()
    assert [(o.error, o.submitted) for o in outcomes] == [(None, 2)] * 3
    assert calls == Counter(search_page=1, register_bulk=1, patch_metadata=1)
    pilots = await pilots_of(director, site)
    assert len(pilots) == 6
    for o in outcomes:
        for stamp in o.stamps:
            assert pilots[stamp]["Queue"] == o.queue.rsplit("/", 1)[1]
            assert pilots[stamp]["PilotJobReference"] == f"local:{stamp}"


async def test_a_refused_registration_submits_nothing_and_the_next_cycle_does(
    director_on_site: DirectorOnSite,
) -> None:
    director, site = director_on_site(**THREE_QUEUES)
    client = director.client
    assert client is not None
    register = client.register_bulk

    async def refused(body: Any) -> Any:
        raise ServerUnavailable("POST /api/pilots/bulk: 503 test: down")

    client.register_bulk = refused  # type: ignore[method-assign]
    outcomes = await director.run_cycle()
    assert all("test: down" in (o.error or "") for o in outcomes)
    assert all(o.submitted == 0 for o in outcomes)
    assert await pilots_of(director, site) == {}
    for ref in director.queues:
        assert await director.ce_for(ref).list_jobs(director.spec_for(ref)) == []

    client.register_bulk = register  # type: ignore[method-assign]
    outcomes = await director.run_cycle()
    assert [(o.error, o.submitted) for o in outcomes] == [(None, 2)] * 3


async def test_a_queue_failing_after_registration_aborts_its_pilots_and_revokes_them(
    director_on_site: DirectorOnSite, live_server_tls: LiveServer
) -> None:
    """One queue's wrappers cannot be rendered: its registered pilots are Aborted with the
    reason and their secrets revoked in the cycle's bulk calls; the other queues submit."""
    director, site = director_on_site(**THREE_QUEUES)
    bad = director.queues[1]

    real = director.prepared(bad)

    class Broken:
        def render(self, stamp: str, secret: str) -> str:
            raise OSError("test: no space left for the wrapper")

        def secret_uses(self, configured: int | None) -> int | None:
            return real.secret_uses(configured)

        def release(self) -> None:
            pass

    director.factory._prepared[bad.key] = Broken()  # type: ignore[assignment]
    outcomes = {o.queue: o for o in await director.run_cycle()}
    failed = outcomes.pop(bad.key)
    assert "no space left" in (failed.error or "")
    assert [(o.error, o.submitted) for o in outcomes.values()] == [(None, 2)] * 2
    pilots = await pilots_of(director, site)
    assert len(failed.stamps) == 2
    for stamp in failed.stamps:
        assert pilots[stamp]["Status"] == "Aborted"
        assert "not submitted" in pilots[stamp]["StatusReason"]
        assert "no space left" in pilots[stamp]["StatusReason"]
    revoked = await revoked_stamps(live_server_tls)
    assert set(failed.stamps) <= revoked
    assert not {s for o in outcomes.values() for s in o.stamps} & revoked
    assert await director.ce_for(bad).list_jobs(director.spec_for(bad)) == []


async def test_lost_references_of_several_queues_come_back_from_one_search(
    director_on_site: DirectorOnSite,
) -> None:
    """The references' PATCH is lost (as in a crash right after submission): the next cycle's
    one search finds every queue's unreferenced pilots and the CE's jobs put them back."""
    director, site = director_on_site(**THREE_QUEUES)
    client = director.client
    assert client is not None
    patch = client.patch_metadata

    async def lost(updates: Any) -> None:
        return None

    client.patch_metadata = lost  # type: ignore[method-assign]
    first = await director.run_cycle()
    assert sum(o.submitted for o in first) == 6
    pilots = await pilots_of(director, site)
    assert all(ce_reference(p) is None for p in pilots.values())

    client.patch_metadata = patch  # type: ignore[method-assign]
    calls = count_calls(director)
    second = await director.run_cycle()
    assert [o.error for o in second] == [None] * 3
    assert calls["search_page"] == 1
    pilots = await pilots_of(director, site)
    assert len(pilots) == 12  # 2 more per queue: the CE counts the first 2 as waiting
    for stamp, pilot in pilots.items():
        assert pilot["PilotJobReference"] == f"local:{stamp}"
        assert pilot["Status"] != "Aborted"


async def test_queues_keep_no_wrapper_settings_once_their_wrappers_are_rendered(
    director_on_site: DirectorOnSite,
) -> None:
    """The director's memory follows the group, not the number of queues: once a queue's
    wrappers of the cycle are rendered, its prepared wrapper holds neither its settings nor
    their JSON (the next render makes them again, the same), and a pilot file embedded by
    every queue is one entry shared by all of them."""
    director, _ = director_on_site(**THREE_QUEUES)
    outcomes = await director.run_cycle()
    assert [(o.error, o.submitted) for o in outcomes] == [(None, 2)] * 3
    prepared = [director.prepared(ref) for ref in director.queues]
    assert all(p._static is None and p._config is None for p in prepared)
    stamp, secret = "0" * 32, "s" * 64
    first = prepared[0].render(stamp, secret)
    prepared[0].release()
    assert prepared[0].render(stamp, secret) == first
    for p in prepared[1:]:
        p.render(stamp, secret)
    entries = [p._static["config"]["pilot_files"] for p in prepared if p._static is not None]
    assert len(entries) == 3
    assert all(
        mine is theirs for e in entries[1:] for mine, theirs in zip(e, entries[0], strict=True)
    )
