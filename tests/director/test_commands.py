"""The director's commands as an operator runs them: `site-director once/run/status` processes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from director.cycle.submission import DRY_RUN_SECRET
from tests.conftest import LiveServer, wait_until
from tests.director.conftest import queue_block, write_config

ROOT = Path(__file__).resolve().parents[2]


def site_director(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SITE_DIRECTOR_")}
    return subprocess.run(
        [sys.executable, "-m", "site_director", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_dry_run_needs_no_server_and_writes_wrappers_and_descriptions(tmp_path: Path) -> None:
    path, site = write_config(
        tmp_path,
        server_url="https://127.0.0.1:9",
        ca_file=None,
        token=None,
        test_wrapper=False,
        queues={
            "default": queue_block(pilots_per_cycle=3),
            "full": queue_block(max_total_pilots=0, max_waiting_pilots=0),
            "off": queue_block(enabled=False),
        },
    )
    out = tmp_path / "out"
    result = site_director("once", "--config", str(path), "--dry-run", "--output", str(out))
    assert result.returncode == 0, result.stderr
    assert "pilots per cycle (3)" in result.stdout
    assert "max waiting reached" in result.stdout
    assert "disabled" in result.stdout
    folder = out / site / "localhost" / "default"
    wrappers = sorted(folder.glob("*.sh"))
    descriptions = sorted(folder.glob("*.local.txt"))
    assert len(wrappers) == 3
    assert [d.name.split(".")[0] for d in descriptions] == [w.stem for w in wrappers]
    text = wrappers[0].read_text()
    assert text.startswith("#!/bin/sh")
    assert DRY_RUN_SECRET in text
    assert wrappers[0].stem in text
    assert not (out / site / "localhost" / "full").exists()
    assert not (tmp_path / "work").exists()  # nothing written outside --output


def test_dry_run_of_one_queue(tmp_path: Path) -> None:
    path, _ = write_config(
        tmp_path,
        server_url="https://127.0.0.1:9",
        ca_file=None,
        token=None,
        queues={"a": queue_block(), "b": queue_block()},
    )
    result = site_director(
        "once",
        "--config",
        str(path),
        "--dry-run",
        "--queue",
        "b",
        "--output",
        str(tmp_path / "out"),
    )
    assert result.returncode == 0, result.stderr
    assert "/b " in result.stdout
    assert "/a " not in result.stdout


def test_a_bad_config_exits_2_with_one_line_per_problem(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "server": {"url": "https://x.example", "token_file": "/t"},
                "vos": ["lhcb"],
                "sites": {
                    "S": {
                        "ces": {
                            "c": {
                                "ce": {"kind": "local", "slots": 0},
                                "queues": {"q": {"pilots_per_cycle": "many"}},
                            }
                        }
                    }
                },
            }
        )
    )
    result = site_director("once", "--config", str(path), "--dry-run")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2
    assert "sites.S.ces.c.ce.slots: Input should be greater than or equal to 1" in lines[0]
    assert "sites.S.ces.c.queues.q.pilots_per_cycle:" in lines[1]
    result = site_director("once", "--config", str(tmp_path / "missing.yaml"))
    assert result.returncode == 2
    assert "cannot read" in result.stderr


def _config(tmp_path: Path, live: LiveServer, **kw: Any) -> tuple[Path, str]:
    return write_config(
        tmp_path, server_url=live.url, ca_file=live.ca_file, token=live.director_token, **kw
    )


def test_once_then_status(live_server_tls: LiveServer, tmp_path: Path) -> None:
    path, site = _config(
        tmp_path, live_server_tls, queues={"default": queue_block(pilots_per_cycle=2)}
    )
    result = site_director("once", "--config", str(path), "--no-monitor")
    assert result.returncode == 0, result.stderr
    assert "submitted=2" in result.stderr  # the per-queue log line
    result = site_director("status", "--config", str(path))
    assert result.returncode == 0, result.stderr
    row = next(line for line in result.stdout.splitlines() if site in line)
    assert "enabled" in row
    assert row.split("│")[-2].strip() == "2"  # the total column


def test_run_submits_reloads_on_sighup_and_stops_on_sigterm(
    live_server_tls: LiveServer, tmp_path: Path
) -> None:
    director = {
        "submission_interval_seconds": 0.5,
        "monitoring_interval_seconds": 0.5,
        "shutdown_timeout_seconds": 10,
    }
    path, site = _config(
        tmp_path,
        live_server_tls,
        director=director,
        queues={"default": queue_block(pilots_per_cycle=1)},
    )
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
    try:
        assert wait_until(lambda: "cycle=submission" in log_file.read_text(), timeout=30)
        assert wait_until(lambda: "submitted=1" in log_file.read_text(), timeout=30)
        data = yaml.safe_load(path.read_text())
        data["sites"][site]["ces"]["localhost"]["queues"]["default"]["enabled"] = False
        path.write_text(yaml.safe_dump(data))
        proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: "configuration reloaded" in log_file.read_text(), timeout=30)
        assert wait_until(lambda: "why=disabled" in log_file.read_text(), timeout=30)
        path.write_text("vos: [")  # a broken file: the reload is refused, the daemon goes on
        proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: "reload refused" in log_file.read_text(), timeout=30)
        assert proc.poll() is None
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert time.monotonic() - started < 15
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log_file.read_text()
    assert text.count("director started") == 1
    assert text.count("director stopped") == 1
    assert "Traceback" not in text


def test_systemd_unit_renders_hardened_and_verifies(tmp_path: Path) -> None:
    path, _ = write_config(
        tmp_path, server_url="https://127.0.0.1:9", ca_file=None, token="t", test_wrapper=False
    )
    result = site_director("unit", "--config", str(path), "--user", "root")
    assert result.returncode == 0, result.stderr
    unit = result.stdout
    assert f"run --config {path}" in unit
    for line in (
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "KillMode=process",
        "ExecReload=/bin/kill -HUP $MAINPID",
        f"ReadWritePaths={tmp_path / 'work'}",
        "RestartPreventExitStatus=2",
    ):
        assert line in unit
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        return
    unit_file = tmp_path / "site-director.service"
    unit_file.write_text(unit)
    verified = subprocess.run(
        [analyze, "verify", str(unit_file)], capture_output=True, text=True, timeout=60
    )
    assert verified.returncode == 0, verified.stderr


def test_dry_run_writes_the_htcondor_submit_description(tmp_path: Path) -> None:
    """Another CE kind in the dry run: its CE is unreachable, nothing is needed from it."""
    pytest.importorskip("htcondor2")
    path = tmp_path / "condor.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "server": {"url": "https://127.0.0.1:9"},
                "vos": ["lhcb"],
                "director": {"work_dir": str(tmp_path / "work")},
                "pilot": {"files": [{"name": "dirac-pilot.py", "template": "demo-pilot.py"}]},
                "sites": {
                    "LCG.Example.org": {
                        "ces": {
                            "ce.example.org": {
                                "ce": {
                                    "kind": "htcondor",
                                    "host": "127.0.0.1",
                                    "port": 9,
                                    "query_timeout_s": 1,
                                },
                                "queues": {
                                    "condor": {
                                        "pilots_per_cycle": 2,
                                        "processors": 8,
                                        "extra_attributes": {"+xcount": "8"},
                                    }
                                },
                            }
                        }
                    }
                },
            }
        )
    )
    out = tmp_path / "out"
    result = site_director("once", "--config", str(path), "--dry-run", "--output", str(out))
    assert result.returncode == 0, result.stderr
    folder = out / "LCG.Example.org" / "ce.example.org" / "condor"
    wrappers = sorted(p.stem for p in folder.glob("*.sh"))
    assert len(wrappers) == 2
    [submit] = folder.glob("*.sub")
    text = submit.read_text()
    assert "request_cpus = 8" in text
    assert "+xcount = 8" in text
    assert all(stamp in text for stamp in wrappers)
