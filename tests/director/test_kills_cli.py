"""`site-director kill`, `kills` and `pilots output` as an operator runs them, against the
live server over TLS."""

from __future__ import annotations

import json
import ssl
import uuid
from pathlib import Path

import httpx

from server.identity import OPERATOR
from tests.conftest import LiveServer
from tests.director.conftest import write_config
from tests.director.test_commands import site_director

SITE, CE, QUEUE = "LCG.Kill.cern", "ce-kill.cern.ch", "long"


def register(server: LiveServer, statuses: list[str], queue: str = QUEUE) -> list[str]:
    stamps = [uuid.uuid4().hex for _ in statuses]
    with httpx.Client(
        base_url=server.url,
        verify=ssl.create_default_context(cafile=str(server.ca_file)),
        headers={"Authorization": f"Bearer {server.director_token}"},
    ) as client:
        r = client.post(
            "/api/pilots/bulk",
            json={
                "vo": "lhcb",
                "pilots": [
                    {"pilot_stamp": s, "grid_site": SITE, "destination_site": CE, "queue": queue}
                    for s in stamps
                ],
            },
        )
        assert r.status_code == 201, r.text
        r = client.patch(
            "/api/pilots/metadata",
            json={s: {"Status": st} for s, st in zip(stamps, statuses, strict=True)},
        )
        assert r.status_code == 204, r.text
    return stamps


def upload(server: LiveServer, stamp: str, **fields: str) -> None:
    with httpx.Client(
        base_url=server.url,
        verify=ssl.create_default_context(cafile=str(server.ca_file)),
        headers={"Authorization": f"Bearer {server.director_token}"},
    ) as client:
        r = client.put("/api/pilots/output", json={"pilot_stamp": stamp, **fields})
        assert r.status_code == 200, r.text


def test_kill_list_and_output(live_server_tls: LiveServer, tmp_path: Path) -> None:
    config, _ = write_config(
        tmp_path,
        server_url=live_server_tls.url,
        ca_file=live_server_tls.ca_file,
        token=live_server_tls.director_token,
    )
    token_file = tmp_path / "operator.token"
    token_file.write_text(live_server_tls.token("olivia", "lhcb", [OPERATOR]) + "\n")
    operator = [
        "--server",
        live_server_tls.url,
        "--token-file",
        str(token_file),
        "--ca-bundle",
        str(live_server_tls.ca_file),
    ]
    one, ended = register(live_server_tls, ["Running", "Done"])
    queue_pilots = register(live_server_tls, ["Waiting", "Running"], queue="short")

    r = site_director("kill", one, ended, "--reason", "black hole", *operator)
    assert r.returncode == 0, r.stderr
    assert one in r.stdout
    assert "already ended" in r.stdout

    r = site_director(
        "kill", "--site", SITE, "--ce", CE, "--queue", "short", "--reason", "drain", "--json",
        *operator,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert {k["pilot_stamp"] for k in json.loads(r.stdout)} == set(queue_pilots)

    # the director's own token reads the due requests (no flag but --config)
    r = site_director("kills", "--state", "pending", "--config", str(config), "--json")
    assert r.returncode == 0, r.stderr
    pending = {k["pilot_stamp"]: k for k in json.loads(r.stdout)}
    assert {one, *queue_pilots} <= set(pending)
    assert ended not in pending
    assert pending[one]["requested_by"] == "olivia"
    assert pending[one]["reason"] == "black hole"

    # asking needs Operator: the director's token is refused, exit 1, one line
    r = site_director("kill", one, "--reason", "x", "--config", str(config))
    assert r.returncode == 1
    assert "403" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1

    # output: none yet, then asked for, then uploaded by the director and printed
    r = site_director("pilots", "output", ended, *operator)
    assert r.returncode == 1
    assert "no output stored" in r.stdout
    r = site_director("pilots", "output", ended, "--fetch", "--reason", "why Done?", *operator)
    assert r.returncode == 0, r.stderr
    assert "requested" in r.stdout
    upload(live_server_tls, ended, std_output="pilot says hello\n", std_error="oops\n")
    r = site_director("pilots", "output", ended, "--config", str(config))
    assert r.returncode == 0, r.stderr
    assert "--- stdout ---\npilot says hello" in r.stdout
    assert "--- stderr ---\noops" in r.stdout
    r = site_director("pilots", "output", ended, "--json", *operator)
    assert json.loads(r.stdout)["std_error"] == "oops\n"
    upload(live_server_tls, one, not_available="purged by the CE")
    r = site_director("pilots", "output", one, *operator)
    assert r.returncode == 0, r.stderr
    assert "not available: purged by the CE" in r.stdout


def test_bad_usage_exits_2(live_server_tls: LiveServer, tmp_path: Path) -> None:
    token_file = tmp_path / "operator.token"
    token_file.write_text(live_server_tls.token("olivia", "lhcb", [OPERATOR]))
    operator = ["--server", live_server_tls.url, "--token-file", str(token_file)]
    stamp = uuid.uuid4().hex
    for args in (
        ["kill", "--reason", "x"],  # nothing named
        ["kill", stamp, "--site", "S", "--ce", "C", "--queue", "Q", "--reason", "x"],
        ["kill", "--site", "S", "--ce", "C", "--reason", "x"],  # no queue
        ["kill", stamp, "--reason", " "],
        ["kill", "not/a/stamp", "--reason", "x"],
        ["pilots", "output", stamp, "--reason", "x"],  # --reason without --fetch
    ):
        r = site_director(*args, *operator)
        assert r.returncode == 2, (args, r.stderr)
        assert r.stderr.startswith("site-director: ")
