"""`site-director ban`, `allow` and `bans` as an operator runs them, against the live server."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from director.commands.bans import parse_until
from server.identity import SITE_MANAGER
from tests.conftest import LiveServer
from tests.director.conftest import write_config
from tests.director.test_commands import site_director


def test_parse_until() -> None:
    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    assert parse_until(None) is None
    assert parse_until("2h", now) == now + timedelta(hours=2)
    assert parse_until("+3d", now) == now + timedelta(days=3)
    assert parse_until("2026-12-24T08:00", now) == datetime(2026, 12, 24, 8, 0, tzinfo=UTC)
    assert parse_until("2026-12-24T08:00+01:00", now) == datetime(2026, 12, 24, 7, 0, tzinfo=UTC)


def test_ban_list_allow(live_server_tls: LiveServer, tmp_path: Path) -> None:
    config, site = write_config(
        tmp_path,
        server_url=live_server_tls.url,
        ca_file=live_server_tls.ca_file,
        token=live_server_tls.director_token,
    )
    token_file = tmp_path / "operator.token"
    token_file.write_text(live_server_tls.token("operator", "lhcb", [SITE_MANAGER]) + "\n")
    operator = [
        "--server",
        live_server_tls.url,
        "--token-file",
        str(token_file),
        "--ca-bundle",
        str(live_server_tls.ca_file),
    ]
    target = ["--site", site, "--ce", "localhost"]

    r = site_director("ban", *target, "--reason", "CE upgrade", "--until", "2d", *operator)
    assert r.returncode == 0, r.stderr
    assert f"{site}/localhost" in r.stdout
    assert "CE upgrade" in r.stdout

    # the director's own config and token read the list (no flag but --config)
    r = site_director("bans", "--config", str(config), "--json")
    assert r.returncode == 0, r.stderr
    mine = [b for b in json.loads(r.stdout) if b["site"] == site]
    assert len(mine) == 1
    assert (mine[0]["ce"], mine[0]["reason"], mine[0]["banned_by"]) == (
        "localhost",
        "CE upgrade",
        "operator",
    )
    assert mine[0]["until"] is not None

    # banning needs SiteManager: the director's token is refused, exit 1, one line
    r = site_director("ban", "--site", site, "--reason", "x", "--config", str(config))
    assert r.returncode == 1
    assert "403" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1

    r = site_director("ban", *target, "--reason", "again", *operator)
    assert r.returncode == 1
    assert "409" in r.stderr

    r = site_director("allow", *target, *operator)
    assert r.returncode == 0, r.stderr
    assert "allowed by operator" in r.stdout
    r = site_director("bans", "--config", str(config), "--json")
    assert [b for b in json.loads(r.stdout) if b["site"] == site] == []
    r = site_director("bans", "--history", *operator)
    assert r.returncode == 0, r.stderr
    assert site in r.stdout


def test_bad_usage_exits_2(live_server_tls: LiveServer, tmp_path: Path) -> None:
    token_file = tmp_path / "operator.token"
    token_file.write_text(live_server_tls.token("operator", "lhcb", [SITE_MANAGER]))
    operator = ["--server", live_server_tls.url, "--token-file", str(token_file)]
    for args in (
        ["ban", "--site", "S", "--reason", "x", "--until", "soon"],
        ["ban", "--site", "S", "--queue", "q", "--reason", "x"],
        ["ban", "--site", "S", "--reason", " "],
        ["ban", "--site", "S" * 200, "--reason", "x"],
    ):
        r = site_director(*args, *operator)
        assert r.returncode == 2, (args, r.stderr)
        assert r.stderr.startswith("site-director: ")
    r = site_director("bans", "--server", live_server_tls.url, "--token-file", str(tmp_path / "no"))
    assert r.returncode == 2
    assert "--token-file" in r.stderr
