"""A CE that times out, one that errors and one that lies, next to a healthy local CE: each
faulty queue is backed off alone, the healthy one goes on submitting, and nothing the faulty CEs
did leaves a usable secret or a live pilot behind."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import httpx
import yaml

from director.daemon import client_for
from director.loop import Director
from tests.conftest import LiveServer
from tests.director.conftest import ManualClock, queue_block, settings_for, write_config
from tests.director.cycle.conftest import pilots_of
from tests.reliability.fake_ce import FakeCE

FAULTY = ("hang", "error", "liar")


def four_ces(folder: Path, server: LiveServer) -> tuple[Path, str]:
    path, site = write_config(
        folder,
        server_url=server.url,
        ca_file=server.ca_file,
        token=server.director_token,
        ce_name="good",
        director={
            "queue_timeout_seconds": 5.0,  # the hung CE costs this; a busy CI host needs it
            "submit_grace_seconds": 120,
            "backoff": {"initial_seconds": 60, "max_seconds": 600},
        },
        queues={"q": queue_block(pilots_per_cycle=2)},
    )
    config = yaml.safe_load(path.read_text())
    ces = config["sites"][site]["ces"]
    for name in FAULTY:
        ces[name] = {"ce": {"kind": "local"}, "queues": {"q": queue_block(pilots_per_cycle=2)}}
    path.write_text(yaml.safe_dump(config))
    return path, site


async def usable_secrets(server: LiveServer, stamps: set[str]) -> set[str]:
    async with httpx.AsyncClient(
        base_url=server.url,
        verify=ssl.create_default_context(cafile=str(server.ca_file)),
        headers={"Authorization": f"Bearer {server.admin_token}"},
    ) as admin:
        response = await admin.get("/api/pilots/secrets", params={"per_page": 10_000})
    response.raise_for_status()
    return {
        s for info in response.json() if not info["revoked"] for s in info["pilot_stamps"]
    } & stamps


async def test_faulty_ces_back_off_alone(
    live_server_tls: LiveServer, tmp_path: Path, clock: ManualClock
) -> None:
    path, site = four_ces(tmp_path, live_server_tls)
    settings = settings_for(path)
    fakes = {name: FakeCE(name) for name in FAULTY}  # type: ignore[arg-type]
    director = Director(
        settings,
        client=client_for(settings),
        clock=clock,
        ces={f"{site}/{name}": ce for name, ce in fakes.items()},
    )
    key = {name: f"{site}/{name}/q" for name in ("good", *FAULTY)}
    try:
        first = {o.queue: o for o in await director.run_cycle()}
        assert first[key["good"]].submitted == 2, first[key["good"]].why
        assert "timed out" in (first[key["hang"]].error or "")
        assert first[key["error"]].failed == 2
        assert first[key["liar"]].submitted == 2  # it said yes
        monitored = {m.queue: m for m in await director.monitor_cycle()}
        assert monitored[key["liar"]].aborted + monitored[key["liar"]].updated >= 2
        assert monitored[key["good"]].error is None

        blocked = {name for name in key if director.backoff.blocked(key[name])}
        assert blocked == set(FAULTY)

        pilots = await pilots_of(director, site)
        by_ce: dict[str, list[dict[str, Any]]] = {}
        for p in pilots.values():
            by_ce.setdefault(p["DestinationSite"], []).append(p)
        assert {p["Status"] for p in by_ce["error"]} == {"Aborted"}
        assert {p["Status"] for p in by_ce["liar"]} == {"Aborted"}
        assert fakes["liar"].phantom not in pilots  # the job nobody submitted made no record
        assert not await usable_secrets(live_server_tls, {p["PilotStamp"] for p in by_ce["error"]})

        # Within the back-off: only the healthy queue works.
        clock.advance(5)
        calls = {name: len(ce.calls) for name, ce in fakes.items()}
        second = {o.queue: o for o in await director.run_cycle()}
        assert second[key["good"]].error is None
        assert second[key["good"]].n > 0, second[key["good"]].why
        for name in FAULTY:
            assert second[key[name]].why.startswith("backed off"), second[key[name]].why
        assert {name: len(ce.calls) for name, ce in fakes.items()} == calls  # not even asked

        # After the back-off and the grace: the hung submission's pilots are Aborted and
        # their secrets revoked; the lying CE's phantom still makes no record.
        clock.advance(200)
        await director.run_cycle()
        pilots = await pilots_of(director, site)
        hung = [p for p in pilots.values() if p["DestinationSite"] == "hang"]
        assert len(hung) >= 2
        first_hung = [p for p in hung if p["PilotStamp"] in set(first[key["hang"]].stamps)]
        assert {p["Status"] for p in first_hung} == {"Aborted"}
        assert not await usable_secrets(live_server_tls, {p["PilotStamp"] for p in first_hung})
        assert fakes["liar"].phantom not in pilots
        good = [p for p in pilots.values() if p["DestinationSite"] == "good"]
        assert len(good) >= 4
        assert all(p["Status"] != "Aborted" for p in good)
    finally:
        for ref in director.queues:
            ce = director.ce_for(ref)
            if not isinstance(ce, FakeCE):
                await ce.kill([j.reference for j in await ce.list_jobs(director.spec_for(ref))])
        await director.close()
        assert director.client is not None
        await director.client.aclose()
