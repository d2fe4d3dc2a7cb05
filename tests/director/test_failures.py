"""Failure must not look like success: exit codes, log levels, one clear line naming the object
(file, URL, variable), the token and last-success metrics, and the dry run writing nothing
outside its output folder. The commands run as processes, as an operator runs them."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from joserfc import jws

from director.client import token_expiry
from tests.conftest import LiveServer, wait_until
from tests.director.conftest import ManualClock, queue_block, settings_for, write_config
from tests.director.test_commands import ROOT, site_director


def _config(tmp_path: Path, live: LiveServer, **kw: Any) -> tuple[Path, str]:
    kw.setdefault("token", live.director_token)
    return write_config(tmp_path, server_url=live.url, ca_file=live.ca_file, **kw)


@pytest.fixture
def closed_url() -> Iterator[str]:
    """An HTTPS URL on loopback where nothing listens (bound, not listening: refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield f"https://127.0.0.1:{s.getsockname()[1]}"


def _unwritable_work_dir(tmp_path: Path) -> dict[str, Any]:
    """A work_dir under a regular file: the local CE cannot make its job folders, so every
    submission of the cycle fails (per pilot, not as an error of the queue)."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    return {"work_dir": str(blocker / "work")}


def test_once_exits_1_naming_the_queue_when_every_submission_failed(
    live_server_tls: LiveServer, tmp_path: Path
) -> None:
    path, site = _config(
        tmp_path,
        live_server_tls,
        director=_unwritable_work_dir(tmp_path),
        queues={"default": queue_block(pilots_per_cycle=2)},
    )
    result = site_director("once", "--config", str(path), "--no-monitor")
    assert result.returncode == 1, result.stderr
    queue_line = next(line for line in result.stderr.splitlines() if "queue=" in line)
    assert "level=WARNING" in queue_line
    assert "failed=2" in queue_line
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("site-director: 1 queue(s) failed: ")
    assert f"{site}/localhost/default" in last


def test_once_releases_its_leases(live_server_tls: LiveServer, tmp_path: Path) -> None:
    path, _ = _config(tmp_path, live_server_tls, queues={"default": queue_block()})
    first = site_director("once", "--config", str(path), "--no-monitor", "--name", "first")
    assert first.returncode == 0, first.stderr
    second = site_director("once", "--config", str(path), "--no-monitor", "--name", "second")
    assert second.returncode == 0, second.stderr
    assert "lease held by another director" not in second.stderr + second.stdout
    assert "submitted=2" in second.stderr


def test_status_with_a_refused_token_exits_1_naming_the_server(
    live_server_tls: LiveServer, tmp_path: Path
) -> None:
    other = live_server_tls.token()  # a user token, then a token of nobody's key set
    header, _, _ = other.split(".")
    path, _ = _config(tmp_path, live_server_tls, token=f"{header}.e30.c2lnbmF0dXJl")
    result = site_director("status", "--config", str(path))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert live_server_tls.url in line
    assert "refused the director's token" in line


def test_once_logs_the_refusal_once_per_cycle_as_an_error(
    live_server_tls: LiveServer, tmp_path: Path
) -> None:
    header = live_server_tls.token().split(".")[0]
    path, _ = _config(
        tmp_path,
        live_server_tls,
        token=f"{header}.e30.c2lnbmF0dXJl",
        queues={"a": queue_block(), "b": queue_block()},
    )
    result = site_director("once", "--config", str(path), "--no-monitor")
    assert result.returncode == 1
    refusals = [
        line
        for line in result.stderr.splitlines()
        if "refused the director's token" in line and "level=ERROR" in line
    ]
    assert len(refusals) == 1, result.stderr
    assert live_server_tls.url in refusals[0]


def test_a_server_that_is_down_is_named_by_its_url(tmp_path: Path, closed_url: str) -> None:
    path, _ = write_config(tmp_path, server_url=closed_url, ca_file=None, token="t")
    result = site_director("status", "--config", str(path))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert closed_url in line


def test_a_missing_ca_bundle_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-ca.pem"
    path, _ = write_config(
        tmp_path, server_url="https://127.0.0.1:9", ca_file=missing, token="t", test_wrapper=False
    )
    for command in ("status", "once"):
        result = site_director(command, "--config", str(path))
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        line = lines[0]
        assert "server.ca_bundle" in line
        assert str(missing) in line


def test_a_missing_token_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    path, _ = write_config(
        tmp_path, server_url="https://127.0.0.1:9", ca_file=None, token=None, test_wrapper=False
    )
    result = site_director("status", "--config", str(path))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert str(tmp_path / "director.token") in line


def test_a_bad_environment_variable_is_named(tmp_path: Path) -> None:
    path, _ = write_config(
        tmp_path, server_url="https://127.0.0.1:9", ca_file=None, token=None, test_wrapper=False
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SITE_DIRECTOR_")}
    for name, value in (
        ("SITE_DIRECTOR_DIRECTOR__CONCURRENCY", "many"),
        ("SITE_DIRECTOR_DIRECTOR", "{not json"),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "site_director", "once", "--dry-run", "--config", str(path)],
            cwd=ROOT,
            env={**env, name: value},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 2, result.stderr
        assert name in result.stderr, result.stderr


def test_dry_run_writes_nothing_outside_its_output(tmp_path: Path) -> None:
    path, _ = write_config(
        tmp_path, server_url="https://127.0.0.1:9", ca_file=None, token=None, test_wrapper=False
    )
    before = set(tmp_path.iterdir())
    out = tmp_path / "out"
    result = site_director("once", "--config", str(path), "--dry-run", "--output", str(out))
    assert result.returncode == 0, result.stderr
    assert set(tmp_path.iterdir()) - before == {out}


def test_json_log_format_is_one_object_per_line_and_log_level_filters(tmp_path: Path) -> None:
    path, site = write_config(
        tmp_path, server_url="https://127.0.0.1:9", ca_file=None, token=None, test_wrapper=False
    )
    out = str(tmp_path / "out")
    result = site_director(
        "once", "--config", str(path), "--dry-run", "--output", out, "--log-format", "json"
    )
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stderr.strip().splitlines()]
    [queue] = [r for r in records if r.get("cycle") == "submission"]
    assert queue["queue"] == f"{site}/localhost/default"
    assert queue["level"] == "INFO"
    assert queue["n"] == 2
    quiet = site_director(
        "once", "--config", str(path), "--dry-run", "--output", out, "--log-level", "warning"
    )
    assert quiet.returncode == 0, quiet.stderr
    assert "level=INFO" not in quiet.stderr
    assert "cycle=submission" not in quiet.stderr


def test_run_without_its_token_file_logs_one_line_per_cycle_and_goes_on(
    live_server_tls: LiveServer, tmp_path: Path
) -> None:
    director = {
        "submission_interval_seconds": 0.3,
        "monitoring_interval_seconds": 0.3,
        "shutdown_timeout_seconds": 10,
    }
    path, _ = _config(tmp_path, live_server_tls, director=director)
    token_file = tmp_path / "director.token"
    token_file.unlink()
    log_file = tmp_path / "run.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SITE_DIRECTOR_")}
    with log_file.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "site_director", "run", "--config", str(path)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=log,
        )

    def refusals() -> list[str]:
        return [
            line
            for line in log_file.read_text().splitlines()
            if "submission cycle" in line and f"cannot read {token_file}" in line
        ]

    try:
        assert wait_until(lambda: len(refusals()) >= 2, timeout=60), log_file.read_text()
        assert all("level=ERROR" in line for line in refusals())
        assert proc.poll() is None
        token_file.write_text(live_server_tls.director_token + "\n")  # back: it submits
        assert wait_until(lambda: "submitted=2" in log_file.read_text(), timeout=60)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Traceback" not in log_file.read_text()


async def test_metrics_give_the_token_expiry_and_the_last_successful_cycle(
    live_server_tls: LiveServer, tmp_path: Path, make_director: Any, clock: ManualClock
) -> None:
    path, _ = _config(tmp_path, live_server_tls)
    director = make_director(settings_for(path))
    token = (tmp_path / "director.token").read_text().strip()
    exp = json.loads(jws.extract_compact(token.encode()).payload)["exp"]
    assert token_expiry(token) == exp
    registry = director.metrics.registry
    outcomes = await director.run_cycle()
    assert [o.error for o in outcomes] == [None]
    assert registry.get_sample_value("site_director_token_expiry_timestamp_seconds") == exp
    last = "site_director_last_successful_cycle_timestamp_seconds"
    assert registry.get_sample_value(last, {"cycle": "submission"}) == clock.now
    clock.advance(100)
    await director.monitor_cycle()
    assert registry.get_sample_value(last, {"cycle": "monitoring"}) == clock.now
    assert registry.get_sample_value(last, {"cycle": "submission"}) == clock.now - 100


def test_token_expiry_of_what_is_no_jwt_is_none() -> None:
    assert token_expiry("not-a-token") is None
    assert token_expiry("e30.e30.c2ln") is None  # a JWS without exp
