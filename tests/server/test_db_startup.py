"""A database the server cannot use is one line naming it: a driver that is not installed names
the extra that installs it; a database that is down stops `site-director server` with one line,
not the traceback of a failed application start-up."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from server.db.engine import Database, DatabaseUnusable


@pytest.mark.parametrize(
    ("url", "module", "extra"),
    [
        ("postgresql+asyncpg://u:secret@db.example/pilots", "asyncpg", "[postgres]"),
        ("mysql+asyncmy://u:secret@db.example/pilots", "asyncmy", "[mysql]"),
    ],
    ids=["postgres", "mysql"],
)
def test_a_missing_driver_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, url: str, module: str, extra: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # as if it were not installed
    with pytest.raises(DatabaseUnusable) as caught:
        Database(url)
    message = str(caught.value)
    assert f"site-director{extra}" in message
    assert "db.example" in message
    assert "secret" not in message


def test_a_database_that_is_down_stops_the_server_with_one_line(tmp_path: Path) -> None:
    with socket.socket() as closed:  # bound, not listening: connections are refused
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("SITE_DIRECTOR_")}
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "site_director",
                "server",
                "--port",
                "0",
                "--data-dir",
                str(tmp_path / "data"),
                "--db",
                f"postgresql+asyncpg://pilots:secret@127.0.0.1:{port}/pilots",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"127.0.0.1:{port}" in lines[0]
    assert "cannot connect" in lines[0]
    assert "secret" not in lines[0]
