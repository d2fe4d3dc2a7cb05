"""One CE queue serving two VOs (`vos: [lhcb, dteam]`): one entry per VO, each with its own
limits, registration, lease, ban and report row, under one director token carrying both VOs
(real server over HTTPS on loopback, local CE running real processes)."""

from __future__ import annotations

import ssl
from collections import Counter
from typing import Any

import httpx

from director.loop import Director
from server.identity import TRUSTED_HOST, mint_user_token
from tests.conftest import LiveServer
from tests.director.conftest import queue_block
from tests.director.cycle.conftest import DirectorOnSite, pilots_of


def two_vo_director(director_on_site: DirectorOnSite, live: LiveServer) -> tuple[Director, str]:
    """A director whose token carries lhcb and dteam, on a site whose one queue serves both:
    lhcb up to 4 waiting pilots, 3 a cycle; dteam up to 1 (its `per_vo` overrides)."""
    token = mint_user_token(
        live.keys,
        sub="director",
        vo="lhcb",
        properties=[TRUSTED_HOST],
        lifetime=3600,
        extra_vos=["dteam"],
    )
    return director_on_site(
        token=token,
        settings={"vos": ["lhcb", "dteam"]},
        queues={
            "shared": queue_block(
                vos=["lhcb", "dteam"],
                max_total_pilots=4,
                max_waiting_pilots=4,
                pilots_per_cycle=3,
                per_vo={"dteam": {"max_total_pilots": 1, "max_waiting_pilots": 1}},
                environment={"TEST_PILOT_SLEEP": "300", "TEST_PILOT_EXIT": "0"},
            )
        },
    )


async def as_admin(live: LiveServer, method: str, url: str, **kwargs: Any) -> httpx.Response:
    async with httpx.AsyncClient(
        base_url=live.url,
        verify=ssl.create_default_context(cafile=str(live.ca_file)),
        headers={"Authorization": f"Bearer {live.admin_token}"},
    ) as client:
        return await client.request(method, url, **kwargs)


async def vos_of_pilots(director: Director, site: str) -> Counter[str]:
    pilots = await pilots_of(director, site)
    assert {row["Queue"] for row in pilots.values()} == {"shared"}
    return Counter(row["VO"] for row in pilots.values())


async def test_each_vo_of_a_shared_queue_submits_registers_and_reports_on_its_own(
    director_on_site: DirectorOnSite, live_server_tls: LiveServer
) -> None:
    director, site = two_vo_director(director_on_site, live_server_tls)
    assert [(ref.key, ref.vo, ref.ce_queue) for ref in director.queues] == [
        (f"lhcb/{site}/localhost/shared", "lhcb", "shared"),
        (f"dteam/{site}/localhost/shared", "dteam", "shared"),
    ]

    first = {o.queue.split("/", 1)[0]: o for o in await director.run_cycle()}
    assert (first["lhcb"].submitted, first["dteam"].submitted) == (3, 1), first
    assert {o.counts_from for o in first.values()} == {"server"}  # the CE counts both VOs
    assert await vos_of_pilots(director, site) == {"lhcb": 3, "dteam": 1}

    # each VO's limits count its own pilots only: lhcb fills up to 4 waiting, dteam is full
    second = {o.queue.split("/", 1)[0]: o for o in await director.run_cycle()}
    assert (second["lhcb"].submitted, second["dteam"].submitted) == (1, 0), second
    assert (second["lhcb"].waiting, second["dteam"].waiting) == (3, 1)
    assert await vos_of_pilots(director, site) == {"lhcb": 4, "dteam": 1}

    response = await as_admin(live_server_tls, "GET", "/api/director/queues")
    assert response.status_code == 200, response.text
    rows = {row["VO"]: row for row in response.json() if row["Site"] == site}
    assert set(rows) == {"lhcb", "dteam"}
    assert {row["Queue"] for row in rows.values()} == {"shared"}
    assert rows["lhcb"]["QueueKey"] == f"lhcb/{site}/localhost/shared"
    assert (rows["lhcb"]["MaxTotalPilots"], rows["dteam"]["MaxTotalPilots"]) == (4, 1)

    # monitoring follows each VO's pilots under its own entry, the CE jobs told apart by stamp
    followed = {o.queue.split("/", 1)[0]: o for o in await director.monitor_cycle()}
    assert (followed["lhcb"].checked, followed["dteam"].checked) == (4, 1), followed
    assert not any(o.error for o in followed.values()), followed
    assert sum(o.cleaned for o in followed.values()) == 0


async def test_a_ban_of_one_vo_stops_only_that_vos_pilots(
    director_on_site: DirectorOnSite, live_server_tls: LiveServer
) -> None:
    director, site = two_vo_director(director_on_site, live_server_tls)
    response = await as_admin(
        live_server_tls,
        "POST",
        "/api/bans",
        json={"vo": "dteam", "site": site, "ce": "localhost", "reason": "dteam drains"},
    )
    assert response.status_code == 201, response.text

    outcomes = {o.queue.split("/", 1)[0]: o for o in await director.run_cycle()}
    assert (outcomes["lhcb"].submitted, outcomes["dteam"].submitted) == (3, 0), outcomes
    assert "dteam drains" in outcomes["dteam"].why
    assert await vos_of_pilots(director, site) == {"lhcb": 3}
