"""The server under systemd, as a DIRAC host runs it: its settings from a file, its unit
(`site-director unit --server`), and the notify protocol with the real process: READY=1 only
once /api/health answers, WATCHDOG=1 from the event loop, STOPPING=1 at SIGTERM; with workers,
only the main process speaks. The test binds the NOTIFY_SOCKET, as systemd does."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from http import HTTPStatus
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from server.cli import _settings_from, add_parsers
from tests.conftest import free_port
from tests.notify_socket import NotifySocket, pings

ROOT = Path(__file__).resolve().parents[2]


def site_director(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "site_director", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "site_director", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def write_settings(folder: Path, **values: Any) -> Path:
    path = folder / "server.yaml"
    path.write_text(
        yaml.safe_dump({k: str(v) if isinstance(v, Path) else v for k, v in values.items()})
    )
    return path


@pytest.fixture
def notify() -> Iterator[NotifySocket]:
    sock = NotifySocket()
    yield sock
    sock.close()


def stop(process: subprocess.Popen[str]) -> str:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        out, _ = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        out, _ = process.communicate()
    return out


# --- the settings file ------------------------------------------------------------------------


def _args(argv: list[str]) -> Any:
    import argparse

    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_settings_file_then_environment_then_flags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("SITE_DIRECTOR_PORT", "SITE_DIRECTOR_VOS", "SITE_DIRECTOR_SERVER_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    path = write_settings(
        tmp_path, port=8443, host="0.0.0.0", vos=["lhcb"], data_dir=tmp_path / "d", workers=2
    )
    settings = _settings_from(_args(["server", "--config", str(path)]))
    assert (settings.port, settings.host, settings.vos, settings.workers) == (
        8443,
        "0.0.0.0",
        ["lhcb"],
        2,
    )
    assert settings.data_dir == tmp_path / "d"
    monkeypatch.setenv("SITE_DIRECTOR_PORT", "9443")
    monkeypatch.setenv("SITE_DIRECTOR_VOS", '["dteam"]')
    settings = _settings_from(_args(["server", "--config", str(path), "--port", "10443"]))
    assert settings.port == 10443  # the flag beats the environment
    assert settings.vos == ["dteam"]  # the environment beats the file
    assert settings.host == "0.0.0.0"  # the file beats the defaults
    monkeypatch.setenv("SITE_DIRECTOR_SERVER_CONFIG", str(path))
    assert _settings_from(_args(["server"])).workers == 2  # the file named by the environment


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("port: eighty\n", r"server\.yaml: port: Input should be a valid integer"),
        ("prot: 8000\n", r"server\.yaml: prot: Extra inputs are not permitted"),
        ("vos: [lhcb\n", r"server\.yaml: line \d+: invalid YAML"),
        ("- port\n", r"server\.yaml: the top level must be a mapping, not list"),
        ("log_level: loud\n", r"server\.yaml: log_level: Input should be"),
    ],
    ids=["type", "unknown-key", "yaml", "not-a-mapping", "choice"],
)
def test_a_bad_settings_file_is_one_line_and_exit_2(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = tmp_path / "server.yaml"
    path.write_text(text)
    done = run("server", "--config", str(path), "--data-dir", str(tmp_path / "d"))
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert re.search(expected, done.stderr), done.stderr
    assert not (tmp_path / "d").exists()  # refused before anything was made


def test_a_missing_settings_file_is_exit_2(tmp_path: Path) -> None:
    done = run("server", "--config", str(tmp_path / "absent.yaml"))
    assert done.returncode == 2
    assert "absent.yaml: cannot read: No such file or directory" in done.stderr


def test_an_environment_variable_that_is_wrong_is_named(tmp_path: Path) -> None:
    import os

    path = write_settings(tmp_path, data_dir=tmp_path / "d")
    env = {**os.environ, "SITE_DIRECTOR_PORT": "x"}
    done = run("server", "--config", str(path), env=env)
    assert done.returncode == 2
    assert "environment variable SITE_DIRECTOR_PORT: port:" in done.stderr


# --- the unit ---------------------------------------------------------------------------------


def test_server_unit_from_the_settings_file(tmp_path: Path) -> None:
    data = Path("/var/lib/site-director-server")
    path = write_settings(
        tmp_path,
        data_dir=data,
        port=443,
        host="0.0.0.0",
        tls_cert="/etc/grid-security/hostcert.pem",
        tls_key="/etc/grid-security/hostkey.pem",
        keys_file="/etc/site-director/jwks.json",
    )
    done = run("unit", "--server", "--config", str(path), "--user", "dirac")
    assert done.returncode == 0, done.stderr
    unit = done.stdout
    assert re.search(rf"^ExecStart=\S+ server --config {re.escape(str(path))}$", unit, re.M)
    for line in (
        "Type=notify",
        "NotifyAccess=main",
        "WatchdogSec=30",
        "User=dirac",
        "RestartPreventExitStatus=2",
        "StateDirectory=site-director-server",
        f"ReadWritePaths={data}",
        f"WorkingDirectory={data}",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "SystemCallFilter=@system-service",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",  # AF_UNIX: the notify socket
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",  # port 443
    ):
        assert re.search(rf"^{re.escape(line)}$", unit, re.M), line
    (read_only,) = re.findall(r"^ReadOnlyPaths=(.*)$", unit, re.M)
    assert read_only.split() == [
        f"-{path}",
        "-/etc/site-director/jwks.json",
        "-/etc/grid-security/hostcert.pem",
        "-/etc/grid-security/hostkey.pem",
    ]
    assert "Type=exec" not in unit

    # no privileged port: no capability at all
    path = write_settings(tmp_path, data_dir=tmp_path / "data", port=8443)
    unit = run("unit", "--server", "--config", str(path)).stdout
    assert re.search(r"^CapabilityBoundingSet=$", unit, re.M)
    assert re.search(r"^AmbientCapabilities=$", unit, re.M)
    assert "StateDirectory=" not in unit  # data_dir outside /var/lib
    _verify(tmp_path, unit, "site-director-server.service")


def test_server_unit_refuses_a_bad_settings_file(tmp_path: Path) -> None:
    path = tmp_path / "server.yaml"
    path.write_text("workers: 0\n")
    done = run("unit", "--server", "--config", str(path))
    assert done.returncode == 2
    assert "server.yaml: workers: Input should be greater than or equal to 1" in done.stderr


def _verify(folder: Path, unit: str, name: str) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        return
    (folder / name).write_text(unit)
    done = subprocess.run(
        [analyze, "verify", str(folder / name)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr


# --- the notify protocol, with the real server --------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2], ids=["one-process", "two-workers"])
def test_ready_after_health_answers_watchdog_then_stopping(
    tmp_path: Path, notify: NotifySocket, workers: int
) -> None:
    port = free_port()
    path = write_settings(
        tmp_path,
        data_dir=tmp_path / "data",
        port=port,
        vos=["lhcb"],
        maintenance=False,
        workers=workers,
        log_level="warning",
    )
    if workers > 1:  # two workers would both migrate a new SQLite file at once
        done = run("db", "upgrade", "--config", str(path))
        assert done.returncode == 0, done.stderr
    process = site_director("server", "--config", str(path), env=notify.environ(200_000))
    try:
        ready = notify.wait_for("READY", timeout=90)
        assert ready is not None, stop(process)
        # ready means serving: the health check answers at once
        health = httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=10)
        assert health.status_code == HTTPStatus.OK
        assert ready.pid == process.pid
        # the watchdog pings go on (every 0.1 s asked: at least a few within a couple of seconds)
        later = notify.collect(2.0)
        assert pings(later) >= 3
        process.send_signal(signal.SIGTERM)
        assert notify.wait_for("STOPPING", timeout=30) is not None
        out = stop(process)
        # uvicorn re-raises the SIGTERM it handled: systemd counts that as a clean stop
        assert process.returncode in (0, -signal.SIGTERM), out
        # NotifyAccess=main: every message came from the main process, none from a worker
        assert {m.pid for m in notify.received} == {process.pid}
    finally:
        stop(process)


def test_no_ready_when_the_database_is_unusable(tmp_path: Path, notify: NotifySocket) -> None:
    """The database check fails before uvicorn starts: exit, never READY=1."""
    path = write_settings(
        tmp_path,
        data_dir=tmp_path / "data",
        port=free_port(),
        db_url="postgresql+asyncpg://nobody@127.0.0.1:1/none",
        maintenance=False,
    )
    process = site_director("server", "--config", str(path), env=notify.environ(200_000))
    out = stop_after_exit(process)
    assert process.returncode != 0, out
    assert not any("READY" in m.fields for m in notify.collect(0.2))


def stop_after_exit(process: subprocess.Popen[str]) -> str:
    try:
        out, _ = process.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        process.kill()
        out, _ = process.communicate()
    return out
