"""`site-director demo` end to end: a real server process, real pilots exchanging their secrets
and sending their logs through the local CE."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_demo_runs_real_pilots_to_done(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SITE_DIRECTOR_")}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "site_director",
            "demo",
            "--cycles",
            "1",
            "--timeout",
            "90",
            "--dir",
            str(tmp_path / "demo"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    summary = out[out.index("summary:") :]
    assert "Done" in summary
    for status in ("Failed", "Aborted", "Unknown"):
        assert f"│ {status}" not in summary
    assert "secret exchanged for a pilot token" in out
    # without a terminal the server is not kept up: no address or token file that is gone
    assert "pilot monitor:" not in out
    assert "admin.token" not in out.replace("\n", "")
    assert "CheckCredentials: DiracX token present" in out
    server_log = (tmp_path / "demo" / "server.log").read_text()
    assert "/api/auth/secret-exchange status=200" in server_log
    secret_file_lines = [line for line in out.splitlines() if "pilotSecret" in line]
    assert secret_file_lines == []
