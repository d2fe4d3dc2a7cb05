"""The local CE with real `sh` processes: slots, statuses, output, kill, clean, and a restarted
director finding its jobs again."""

from __future__ import annotations

from pathlib import Path

import pytest

from director.ce.base import PilotSubmission, QueueSpec
from director.ce.local import LocalCE, LocalCEConfig
from director.render import default_renderer
from server.models import PilotStatus
from tests.conftest import async_wait_until

QUEUE = QueueSpec(
    name="default", site="Test.Local.org", ce="localhost", environment={"GREETING": "hello"}
)
OTHER = QueueSpec(name="other", site="Test.Local.org", ce="localhost")


def make_ce(work_dir: Path, slots: int = 2) -> LocalCE:
    return LocalCE(LocalCEConfig(slots=slots), renderer=default_renderer(), work_dir=work_dir)


def pilot(stamp: str, body: str) -> PilotSubmission:
    return PilotSubmission(stamp, f"#!/bin/sh\n{body}\n")


@pytest.fixture
async def ce(tmp_path: Path):  # type: ignore[no-untyped-def]
    local = make_ce(tmp_path)
    yield local
    for q in (QUEUE, OTHER):
        await local.kill([j.reference for j in await local.list_jobs(q)])


async def final_status(ce: LocalCE, reference: str) -> PilotStatus | None:
    async def ended() -> bool:
        [result] = await ce.status([reference])
        return result.status in (PilotStatus.DONE, PilotStatus.FAILED, PilotStatus.ABORTED)

    assert await async_wait_until(ended, timeout=20, interval=0.05)
    [result] = await ce.status([reference])
    return result.status


async def test_runs_wrappers_and_maps_exit_codes(ce: LocalCE) -> None:
    results = await ce.submit(
        QUEUE,
        [
            pilot("a" * 32, 'echo "out $GREETING"; echo err >&2; exit 0'),
            pilot("b" * 32, "exit 7"),
        ],
    )
    assert [r.reference for r in results] == [f"local:{'a' * 32}", f"local:{'b' * 32}"]
    assert await final_status(ce, "local:" + "a" * 32) == PilotStatus.DONE
    assert await final_status(ce, "local:" + "b" * 32) == PilotStatus.FAILED
    [failed] = await ce.status(["local:" + "b" * 32])
    assert failed.exit_code == 7
    assert failed.reason == "exit code 7"
    output = await ce.output("local:" + "a" * 32)
    assert output.stdout == "out hello\n"
    assert output.stderr == "err\n"


async def test_wrapper_file_is_private_and_removed_once_ended(ce: LocalCE) -> None:
    [result] = await ce.submit(QUEUE, [pilot("c" * 32, "sleep 30")])
    script = ce.jobs_dir / ("c" * 32) / "pilot.sh"
    assert script.stat().st_mode & 0o777 == 0o600
    await ce.kill([result.reference or ""])
    assert await final_status(ce, result.reference or "") == PilotStatus.ABORTED
    assert not script.exists()


async def test_slot_limit_keeps_extra_jobs_waiting(ce: LocalCE) -> None:
    stamps = [f"{i:032x}" for i in range(3)]
    await ce.submit(QUEUE, [pilot(s, "sleep 30") for s in stamps])
    load = await ce.load(QUEUE)
    assert (load.running, load.waiting, load.free_slots) == (2, 1, 0)
    statuses = [r.status for r in await ce.status([f"local:{s}" for s in stamps])]
    assert statuses == [PilotStatus.RUNNING, PilotStatus.RUNNING, PilotStatus.WAITING]
    await ce.kill([f"local:{stamps[0]}"])

    async def third_started() -> bool:
        [r] = await ce.status([f"local:{stamps[2]}"])
        return r.status == PilotStatus.RUNNING

    assert await async_wait_until(third_started, timeout=20, interval=0.05)


async def test_jobs_are_listed_per_queue_with_their_stamps(ce: LocalCE) -> None:
    await ce.submit(QUEUE, [pilot("d" * 32, "sleep 30")])
    await ce.submit(OTHER, [pilot("e" * 32, "sleep 30")])
    assert [(j.stamp, j.status) for j in await ce.list_jobs(QUEUE)] == [
        ("d" * 32, PilotStatus.RUNNING)
    ]
    assert [j.stamp for j in await ce.list_jobs(OTHER)] == ["e" * 32]
    assert (await ce.load(OTHER)).running == 1


async def test_a_restarted_director_finds_running_and_ended_jobs(tmp_path: Path) -> None:
    first = make_ce(tmp_path)
    await first.submit(QUEUE, [pilot("f" * 32, "sleep 30"), pilot("0" * 32, "exit 3")])
    await final_status(first, "local:" + "0" * 32)
    del first  # the director is gone; its jobs are not

    second = make_ce(tmp_path)
    results = await second.status(["local:" + "f" * 32, "local:" + "0" * 32])
    assert [r.status for r in results] == [PilotStatus.RUNNING, PilotStatus.FAILED]
    assert results[1].exit_code == 3
    [killed] = await second.kill(["local:" + "f" * 32])
    assert killed.ok
    assert await final_status(second, "local:" + "f" * 32) == PilotStatus.ABORTED


async def test_clean_removes_ended_jobs_only(ce: LocalCE) -> None:
    await ce.submit(QUEUE, [pilot("1" * 32, "exit 0"), pilot("2" * 32, "sleep 30")])
    await final_status(ce, "local:" + "1" * 32)
    done, running = await ce.clean(["local:" + "1" * 32, "local:" + "2" * 32])
    assert done.ok
    assert not running.ok
    assert running.temporary
    assert [j.stamp for j in await ce.list_jobs(QUEUE)] == ["2" * 32]
    [gone] = await ce.status(["local:" + "1" * 32])
    assert gone.status == PilotStatus.ABORTED
    assert "unknown" in gone.reason


async def test_unknown_and_foreign_references(ce: LocalCE) -> None:
    unknown, foreign, escape = await ce.status(
        ["local:" + "9" * 32, "arc:whatever", "local:../etc"]
    )
    assert (unknown.status, unknown.error) == (PilotStatus.ABORTED, None)
    assert foreign.status is None
    assert foreign.error
    assert escape.status is None
    assert escape.error
    gone, bad = await ce.kill(["local:" + "9" * 32, "local:../etc"])
    assert gone.ok  # not running, as asked
    assert not bad.ok
    [dup] = await ce.submit(QUEUE, [pilot("3" * 32, "exit 0")])
    [again] = await ce.submit(QUEUE, [pilot("3" * 32, "exit 0")])
    assert dup.ok
    assert not again.ok


def test_the_local_state_map_is_the_backends_own() -> None:
    from director.ce.local import local_status

    assert local_status(False, None, killed=False) is PilotStatus.WAITING
    assert local_status(True, None, killed=False) is PilotStatus.RUNNING
    assert local_status(True, 0, killed=False) is PilotStatus.DONE
    assert local_status(True, 2, killed=False) is PilotStatus.FAILED
    assert local_status(True, None, killed=True) is PilotStatus.ABORTED
