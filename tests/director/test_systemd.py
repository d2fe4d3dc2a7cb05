"""The director under systemd: its unit (`site-director unit`), and the notify protocol with
the real `site-director run` process and a NOTIFY_SOCKET the test binds, as systemd does:
READY=1 only once the server has answered (at once, naming the problem, when the token file
cannot be read), WATCHDOG=1 while the cycles make progress, none once a cycle hangs (here: the
local CE reads a job file that never comes, a FIFO, on the event loop), STOPPING=1 at SIGTERM.
The notify primitives of both packages pass one contract."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

import director.notify
import server.notify
from director.config import load_config
from director.daemon import Daemon, cycle_limit
from tests.conftest import LiveServer, free_port
from tests.director.conftest import queue_block, write_config
from tests.notify_socket import NotifySocket, pings

ROOT = Path(__file__).resolve().parents[2]
FAST = {
    "submission_interval_seconds": 0.5,
    "monitoring_interval_seconds": 0.5,
    "shutdown_timeout_seconds": 5,
}


@pytest.fixture
def notify() -> Iterator[NotifySocket]:
    sock = NotifySocket()
    yield sock
    sock.close()


def start(config: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "site_director", "run", "--config", str(config)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=out,
        )


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int:
    if process.poll() is None:
        process.send_signal(sig)
    try:
        return process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


# --- the notify primitive, the same contract for both packages ------------------------------


@pytest.mark.parametrize("module", [director.notify, server.notify], ids=["director", "server"])
def test_notifier_sends_datagrams_to_the_abstract_socket(
    module: ModuleType, notify: NotifySocket
) -> None:
    notifier = module.Notifier({"NOTIFY_SOCKET": notify.name, "WATCHDOG_USEC": "3000000"})
    assert notifier.watchdog_interval == 1.5  # half of WatchdogSec
    assert notifier.ready("serving")
    assert notifier.watchdog()
    assert notifier.stopping()
    got = notify.collect(0.2)
    assert [m.fields for m in got] == [
        {"READY": "1", "STATUS": "serving"},
        {"WATCHDOG": "1"},
        {"STOPPING": "1"},
    ]
    assert {m.pid for m in got} == {os.getpid()}


@pytest.mark.parametrize("module", [director.notify, server.notify], ids=["director", "server"])
def test_notifier_without_systemd_or_for_another_pid(module: ModuleType) -> None:
    assert not module.Notifier({}).ready()  # no NOTIFY_SOCKET: nothing sent, no error
    other = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}
    assert module.Notifier(other).watchdog_interval is None  # the watchdog is pid 1's
    gone = module.Notifier({"NOTIFY_SOCKET": "@site-director-test-nobody-listens"})
    assert not gone.ready()  # refused: logged once, never raised


# --- progress: a cycle past the limit its timeouts set is hung --------------------------------


def test_a_cycle_past_its_limit_stops_the_pings(tmp_path: Path) -> None:
    path, _ = write_config(
        tmp_path,
        server_url="https://127.0.0.1:9",
        ca_file=None,
        token="t",
        director={"queue_timeout_seconds": 10, "concurrency": 2},
        queues={name: queue_block() for name in ("a", "b", "c")},
    )
    settings = load_config(path)
    server_calls = 20 * settings.server.timeout_seconds
    assert cycle_limit(settings) == 2 * 2 * 10 + server_calls  # 3 queues, 2 at a time
    now = [1000.0]
    daemon = Daemon(lambda: settings, clock=lambda: now[0])
    assert daemon.alive()  # between cycles
    daemon._cycle_started = now[0]
    now[0] += cycle_limit(settings) - 1
    assert daemon.alive()  # long, but within what its timeouts allow
    now[0] += 2
    assert not daemon.alive()


# --- the real daemon --------------------------------------------------------------------------


def test_ready_after_the_server_answers_then_watchdog_then_stopping(
    live_server_tls: LiveServer, tmp_path: Path, notify: NotifySocket
) -> None:
    live = live_server_tls
    path, _ = write_config(
        tmp_path,
        server_url=live.url,
        ca_file=live.ca_file,
        token=live.director_token,
        director=FAST,
        queues={"default": queue_block(pilots_per_cycle=1)},
    )
    process = start(path, notify.environ(200_000), tmp_path / "run.log")
    try:
        ready = notify.wait_for("READY", timeout=60)
        assert ready is not None, (tmp_path / "run.log").read_text()
        assert ready.pid == process.pid
        assert pings(notify.collect(2.0)) >= 3
        process.send_signal(signal.SIGTERM)
        assert notify.wait_for("STOPPING", timeout=30) is not None
        assert stop(process) == 0
    finally:
        stop(process)


def test_no_ready_while_the_server_does_not_answer(tmp_path: Path, notify: NotifySocket) -> None:
    path, _ = write_config(
        tmp_path,
        server_url=f"https://127.0.0.1:{free_port()}",  # nobody listens
        ca_file=None,
        token="t",
        director=FAST,
    )
    process = start(path, notify.environ(200_000), tmp_path / "run.log")
    try:
        got = notify.collect(5.0)
        statuses = [m.fields.get("STATUS", "") for m in got]
        assert any(s.startswith("waiting for the server:") for s in statuses), statuses
        assert not any("READY" in m.fields for m in got)
        assert pings(got) >= 1  # retrying is progress: the watchdog is fed meanwhile
        assert stop(process) == 0  # a stop while waiting is a clean one
        assert "waiting for the server" in (tmp_path / "run.log").read_text()
    finally:
        stop(process)


def test_an_unreadable_token_is_ready_naming_it_and_picked_up_when_it_appears(
    live_server_tls: LiveServer, tmp_path: Path, notify: NotifySocket
) -> None:
    """Issue [1/6]: a missing or empty token file is one line per cycle, not an exit. The
    daemon is READY=1 once its loop runs, STATUS= naming the file, and submits once the
    token is written (this test used to expect exit 2 without READY, since d754833)."""
    live = live_server_tls
    path, _ = write_config(
        tmp_path, server_url=live.url, ca_file=live.ca_file, token="", director=FAST
    )
    token_file = tmp_path / "director.token"
    log = tmp_path / "run.log"
    process = start(path, notify.environ(200_000), log)
    try:
        ready = notify.wait_for("READY", timeout=60)
        assert ready is not None, log.read_text()
        assert f"server.token_file: {token_file} is empty" in ready.fields.get("STATUS", "")
        assert process.poll() is None
        token_file.write_text(live.director_token + "\n")
        got: list[str] = []
        for _ in range(60):
            got += [m.fields.get("STATUS", "") for m in notify.collect(0.5)]
            if any("cycle ended" in s and "token_file" not in s for s in got):
                break
        assert any("cycle ended" in s and "token_file" not in s for s in got), got
        assert stop(process) == 0
    finally:
        stop(process)
    assert "Traceback" not in log.read_text()


def test_a_hung_cycle_stops_the_pings(
    live_server_tls: LiveServer, tmp_path: Path, notify: NotifySocket
) -> None:
    """The local CE reads each job's job.json on the event loop; one that is a FIFO nobody
    writes blocks the read, like a hung file system: the cycle hangs, the pings stop."""
    live = live_server_tls
    path, site = write_config(
        tmp_path,
        server_url=live.url,
        ca_file=live.ca_file,
        token=live.director_token,
        director=FAST,
    )
    stuck = tmp_path / "work" / "ce" / site / "localhost" / "jobs" / "stuck"
    stuck.mkdir(parents=True)
    os.mkfifo(stuck / "job.json")
    process = start(path, notify.environ(200_000), tmp_path / "run.log")
    try:
        assert notify.wait_for("READY", timeout=60) is not None
        notify.collect(1.0)  # the first cycle starts at once and blocks
        assert pings(notify.collect(3.0)) == 0, (tmp_path / "run.log").read_text()
        assert process.poll() is None  # alive but hung: what systemd's watchdog is for
    finally:
        process.kill()  # SIGKILL, as systemd does after the watchdog's SIGABRT is ignored
        process.wait()


# --- the unit ---------------------------------------------------------------------------------


def test_director_unit_is_notify_with_a_watchdog(tmp_path: Path) -> None:
    path, _ = write_config(
        tmp_path, server_url="https://127.0.0.1:9", ca_file=None, token="t", test_wrapper=False
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SITE_DIRECTOR_")}
    done = subprocess.run(
        [sys.executable, "-m", "site_director", "unit", "--config", str(path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    unit = done.stdout
    for line in (
        "Type=notify",
        "NotifyAccess=main",
        "WatchdogSec=120",
        "TimeoutStartSec=300",
        f"ExecStart={Path(sys.executable).parent / 'site-director'} run --config {path}",
        "KillMode=process",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
    ):
        assert re.search(rf"^{re.escape(line)}$", unit, re.M), line
    assert "Type=exec" not in unit
