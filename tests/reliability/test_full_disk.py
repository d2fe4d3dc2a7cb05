"""A full disk: under the real server's data directory (SQLite) and under one CE's part of the
director's work directory, each a small tmpfs filled to the last byte.

The server refuses writes with a reason naming the disk (never a traceback or a bare 500),
loses nothing it acknowledged, and takes writes again as soon as space returns, without a
restart. The director's queue on the full disk fails with ENOSPC named; the other queue goes on.

Mounting needs root: by hand these tests skip without it, in CI they fail.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import subprocess
from collections.abc import Callable, Iterator
from http import HTTPStatus
from pathlib import Path

import httpx
import pytest
import yaml

from director.cycle.queues import safe_name
from director.daemon import client_for
from director.loop import Director
from tests.conftest import LiveServer, free_port, missing
from tests.director.conftest import ManualClock, queue_block, settings_for, write_config
from tests.director.cycle.conftest import pilots_of
from tests.reliability.swarm import Pilot, ServerProc, register, stored_lines

DISK = "4m"  # room for the server's start (keys, schema, WAL) and a few hundred log lines


@pytest.fixture
def small_disk() -> Iterator[Callable[[Path], Path]]:
    """Mounts a fresh tmpfs of DISK bytes on a folder; each is unmounted at the end whatever
    happens (after the test's own clean-up has stopped what used it)."""
    if os.geteuid() != 0:
        missing("a full disk needs a tmpfs mount, and that needs root")
    mounts: list[Path] = []

    def mount(folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={DISK},mode=0755", "tmpfs", str(folder)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            missing(f"cannot mount a tmpfs on {folder}: {done.stderr.strip() or done.returncode}")
        mounts.append(folder)
        return folder

    try:
        yield mount
    finally:
        for folder in reversed(mounts):
            if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def fill(folder: Path) -> Path:
    """A file that takes every free byte of the file system under `folder`."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for chunk in (1 << 20, 1 << 12, 1):
            block = b"\0" * chunk
            while True:
                try:
                    os.write(fd, block)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)
    return filler


def lines_for(stamp: str, batch: int, size: int = 200) -> tuple[list[str], list[dict[str, str]]]:
    ids = [f"{stamp}.{secrets.token_hex(4)}" for _ in range(batch)]
    pad = "x" * size
    body = [
        {"timestamp": "2025-01-01T00:00:00+00:00", "severity": "INFO", "message": f"line {i} {pad}"}
        for i in ids
    ]
    return ids, body


def assert_refused_for_disk(answer: httpx.Response) -> None:
    """A refusal that names the disk: 507 with a JSON reason, no traceback."""
    assert answer.status_code == HTTPStatus.INSUFFICIENT_STORAGE, (answer.status_code, answer.text)
    detail = str(answer.json()["detail"]).lower()
    assert "space" in detail or "disk" in detail, detail
    assert "traceback" not in answer.text.lower()
    assert answer.headers.get("Retry-After"), answer.headers


async def test_server_on_a_full_disk_refuses_with_a_reason_keeps_what_it_acked_and_recovers(
    small_disk: Callable[[Path], Path], tmp_path: Path
) -> None:
    data = small_disk(tmp_path / "data")
    server = ServerProc(data, free_port(), vos=("lhcb",))
    try:
        await _full_disk_trial(server, data)
    finally:
        server.kill()
        for log in data.glob("server-*.log"):  # kept for a post-mortem: the tmpfs goes
            shutil.copy(log, tmp_path / log.name)


async def _full_disk_trial(server: ServerProc, data: Path) -> None:
    server.start()
    pid = server.process.pid if server.process else None
    director, admin = server.director_token, server.admin_token
    acked_pilots: set[str] = set()
    acked_lines: set[str] = set()
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
        pilots = await register(http, director, 5, "Full.Disk.org")
        acked_pilots |= {p.stamp for p in pilots}
        tokens = {}
        for pilot in pilots:
            r = await http.post(
                "/api/auth/secret-exchange",
                json={"pilot_stamp": pilot.stamp, "pilot_secret": pilot.secret},
            )
            assert r.status_code == HTTPStatus.OK, r.text
            tokens[pilot.stamp] = r.json()["access_token"]

        async def send(pilot: Pilot, batch: int = 20) -> httpx.Response:
            ids, body = lines_for(pilot.stamp, batch)
            r = await http.post(
                "/api/pilots/internal/message",
                json={"lines": body},
                headers={"Authorization": f"Bearer {tokens[pilot.stamp]}"},
            )
            if r.status_code == HTTPStatus.NO_CONTENT:
                acked_lines.update(ids)
            return r

        for pilot in pilots:
            assert (await send(pilot)).status_code == HTTPStatus.NO_CONTENT

        # The disk fills up. SQLite may still have free pages: write until it refuses.
        filler = fill(data)
        refusals = []
        for attempt in range(500):
            r = await send(pilots[attempt % len(pilots)])
            if r.status_code != HTTPStatus.NO_CONTENT:
                refusals.append(r)
                if len(refusals) == 3:
                    break
        assert refusals, "the server took every write on a full disk"
        for r in refusals:
            assert_refused_for_disk(r)

        # registering more pilots is refused the same way (or taken, if a page was free)
        more = [secrets.token_hex(16) for _ in range(50)]
        r = await http.post(
            "/api/pilots/bulk",
            headers={"Authorization": f"Bearer {director}"},
            json={
                "vo": "lhcb",
                "mint_secrets": True,
                "pilots": [
                    {"pilot_stamp": s, "grid_site": "Full.Disk.org", "destination_site": "ce"}
                    for s in more
                ],
            },
        )
        if r.is_success:
            acked_pilots |= set(more)
        else:
            assert_refused_for_disk(r)

        # Space returns: the very next writes are taken, by the same process.
        filler.unlink()
        assert (await send(pilots[0])).status_code == HTTPStatus.NO_CONTENT
        after = await register(http, director, 3, "Full.Disk.org")
        acked_pilots |= {p.stamp for p in after}
        assert server.process is not None
        assert server.process.poll() is None
        assert server.process.pid == pid
        assert server.starts == 1

        # Nothing acknowledged was lost.
        r = await http.post(
            "/api/pilots/search",
            params={"per_page": 10_000},
            headers={"Authorization": f"Bearer {admin}"},
            json={
                "search": [{"parameter": "GridSite", "operator": "eq", "value": "Full.Disk.org"}]
            },
        )
        assert r.status_code == HTTPStatus.OK, r.text
        assert acked_pilots <= {row["PilotStamp"] for row in r.json()}
        stored = await stored_lines(http, admin, [p.stamp for p in pilots])
        assert acked_lines <= set(stored)


async def test_a_full_work_directory_fails_its_queue_alone(
    small_disk: Callable[[Path], Path],
    live_server_tls: LiveServer,
    tmp_path: Path,
    clock: ManualClock,
) -> None:
    path, site = write_config(
        tmp_path,
        server_url=live_server_tls.url,
        ca_file=live_server_tls.ca_file,
        token=live_server_tls.director_token,
        ce_name="good",
        queues={"q": queue_block(pilots_per_cycle=2)},
    )
    config = yaml.safe_load(path.read_text())
    config["sites"][site]["ces"]["full"] = {
        "ce": {"kind": "local"},
        "queues": {"q": queue_block(pilots_per_cycle=2)},
    }
    path.write_text(yaml.safe_dump(config))
    settings = settings_for(path)
    full = settings.director.work_dir / "ce" / safe_name(site) / "full"
    small_disk(full)
    director = Director(settings, client=client_for(settings), clock=clock)
    try:
        filler = fill(full)
        outcomes = {o.queue: o for o in await director.run_cycle()}
        good, bad = outcomes[f"{site}/good/q"], outcomes[f"{site}/full/q"]
        assert good.error is None, good
        assert good.submitted == 2, good
        assert bad.submitted == 0, bad
        reason = f"{bad.error} {bad.why}"
        assert "ENOSPC" in reason or "No space left on device" in reason, bad
        pilots = await pilots_of(director, site)
        assert {p["Status"] for p in pilots.values() if p["DestinationSite"] == "full"} <= {
            "Aborted"
        }

        filler.unlink()
        clock.advance(3600)  # past the queue's back-off
        again = {o.queue: o for o in await director.run_cycle()}
        assert again[f"{site}/full/q"].error is None, again[f"{site}/full/q"]
        assert again[f"{site}/full/q"].submitted > 0, again[f"{site}/full/q"]
    finally:
        for ref in director.queues:
            ce = director.ce_for(ref)
            await ce.kill([j.reference for j in await ce.list_jobs(director.spec_for(ref))])
        await director.close()
        if director.client is not None:
            await director.client.aclose()
