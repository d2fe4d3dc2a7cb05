"""Director leases: one holder per queue, expiry hands a queue over, VOs do not collide."""

from __future__ import annotations

import asyncio
from http import HTTPStatus

from tests.conftest import Roles


async def lease(client, holder: str, queues: list[str], ttl: int = 60) -> dict[str, list[str]]:  # type: ignore[no-untyped-def]
    r = await client.post(
        "/api/director/leases", json={"holder": holder, "queues": queues, "ttl_seconds": ttl}
    )
    assert r.status_code == HTTPStatus.OK, r.text
    return r.json()  # type: ignore[no-any-return]


async def test_one_holder_per_queue_and_renewal(api: Roles) -> None:
    assert await lease(api.director, "host-a", ["q1", "q2"]) == {
        "granted": ["q1", "q2"],
        "refused": [],
    }
    assert await lease(api.director, "host-b", ["q2", "q3"]) == {
        "granted": ["q3"],
        "refused": ["q2"],
    }
    # renewal by the holder keeps it
    assert await lease(api.director, "host-a", ["q1", "q2"]) == {
        "granted": ["q1", "q2"],
        "refused": [],
    }


async def test_expired_lease_is_taken_over_and_release_frees(api: Roles) -> None:
    await lease(api.director, "host-a", ["q1"], ttl=1)
    assert (await lease(api.director, "host-b", ["q1"]))["refused"] == ["q1"]
    await asyncio.sleep(1.2)  # real expiry of a real lease row
    assert (await lease(api.director, "host-b", ["q1"]))["granted"] == ["q1"]
    r = await api.director.request(
        "DELETE", "/api/director/leases", json={"holder": "host-b", "queues": ["q1"]}
    )
    assert r.status_code == HTTPStatus.NO_CONTENT
    assert (await lease(api.director, "host-a", ["q1"]))["granted"] == ["q1"]


async def test_racing_directors_get_disjoint_queues(api: Roles) -> None:
    queues = [f"q{i}" for i in range(20)]
    results = await asyncio.gather(*[lease(api.director, f"host-{i}", queues) for i in range(4)])
    granted = [q for r in results for q in r["granted"]]
    assert sorted(granted) == sorted(queues)  # every queue has exactly one holder


async def test_leases_are_per_vo_and_for_directors_only(api: Roles) -> None:
    await lease(api.director, "lhcb-host", ["shared-queue"])
    assert (await lease(api.other_director, "dteam-host", ["shared-queue"]))["granted"] == [
        "shared-queue"
    ]
    r = await api.user.post(
        "/api/director/leases", json={"holder": "x", "queues": ["q"], "ttl_seconds": 10}
    )
    assert r.status_code == HTTPStatus.FORBIDDEN
    r = await api.director.post(
        "/api/director/leases", json={"holder": "x", "queues": ["q"], "ttl_seconds": 0}
    )
    assert r.status_code == HTTPStatus.UNPROCESSABLE_ENTITY
