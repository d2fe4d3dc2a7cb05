"""The submission cycle in bulk: a few server calls per cycle whatever the number of queues,
and the failures between them (registration refused, a queue failing after its pilots were
registered, references lost) still leave every pilot accounted for. Real server over HTTPS on
loopback, local CE running real processes."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from director.client import ce_reference
from director.errors import ServerUnavailable
from director.loop import Director
from tests.conftest import LiveServer
from tests.director.conftest import queue_block, revoked_stamps, settings_for, write_config
from tests.director.test_loop import pilots_of

CALLS = ("search_page", "register_bulk", "patch_metadata", "revoke_secrets")


def count_calls(director: Director) -> Counter[str]:
    """Counts the director's calls of the server's bulk routes from now on."""
    client = director.client
    assert client is not None
    calls: Counter[str] = Counter()

    def counted(name: str, call: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            calls[name] += 1
            return await call(*args, **kwargs)

        return wrapper

    for name in CALLS:
        setattr(client, name, counted(name, getattr(client, name)))
    return calls


def three_queues(live: LiveServer, folder: Path) -> tuple[Path, str]:
    return write_config(
        folder,
        server_url=live.url,
        ca_file=live.ca_file,
        token=live.director_token,
        slots=8,
        queues={
            name: queue_block(pilots_per_cycle=2, environment={"TEST_PILOT_SLEEP": "60"})
            for name in ("q1", "q2", "q3")
        },
    )


async def test_one_cycle_over_three_queues_is_one_search_one_registration_one_patch(
    live_server_tls: LiveServer, tmp_path: Path, make_director: Any
) -> None:
    path, site = three_queues(live_server_tls, tmp_path)
    director = make_director(settings_for(path))
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
    live_server_tls: LiveServer, tmp_path: Path, make_director: Any
) -> None:
    path, site = three_queues(live_server_tls, tmp_path)
    director = make_director(settings_for(path))
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
    live_server_tls: LiveServer, tmp_path: Path, make_director: Any
) -> None:
    """One queue's wrappers cannot be rendered: its registered pilots are Aborted with the
    reason and their secrets revoked in the cycle's bulk calls; the other queues submit."""
    path, site = three_queues(live_server_tls, tmp_path)
    director = make_director(settings_for(path))
    bad = director.queues[1]

    class Broken:
        def render(self, stamp: str, secret: str) -> str:
            raise OSError("test: no space left for the wrapper")

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
    live_server_tls: LiveServer, tmp_path: Path, make_director: Any
) -> None:
    """The references' PATCH is lost (as in a crash right after submission): the next cycle's
    one search finds every queue's unreferenced pilots and the CE's jobs put them back."""
    path, site = three_queues(live_server_tls, tmp_path)
    director = make_director(settings_for(path))
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
