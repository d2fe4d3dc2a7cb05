"""The stock DIRAC pilot, run by our wrapper with `pilot.secret_option`, against the real server.

The pilot's files are the unmodified DIRAC pilot (PR 260 of DIRACGrid/Pilot), read from
`/work/shared/reference/dirac-pilot/` or from the folder named by SITE_DIRECTOR_DIRAC_PILOT_DIR;
they are served to the wrapper from that folder as they are (a `file:` location, checked by
SHA-512). Without them the test skips, and fails under SITE_DIRECTOR_REQUIRE_INFRA=1.

With `--pilotSecret` the pilot exchanges the secret itself, sends its own log lines with its own
token and revokes it at its end; the wrapper exchanges the same secret for its own token first,
so the secret is minted with the uses of both (`director.wrapper.secret_uses`).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from director.wrapper import PILOT_EXCHANGE_REQUESTS, WrapperFile, secret_uses
from tests.conftest import LiveServer, missing
from tests.director.test_wrapper_run import (
    FAST,
    leftovers,
    log_lines,
    new_pilot,
    pilot_options,
    pilot_record,
    render,
    run,
)

DEFAULT_PILOT_DIR = Path("/work/shared/reference/dirac-pilot")
PILOT_FILES = ("dirac-pilot.py", "pilotTools.py", "pilotCommands.py", "proxyTools.py")
#: What the pilot reads from its working directory; a real installation publishes it.
PILOT_JSON = {
    "ConfigurationServers": ["https://localhost:8443/Configuration/Server"],
    "Defaults": {"Pilot": {"RemoteLogging": "True", "Version": "v9r0", "Project": "DIRAC"}},
}
FETCHED = "Fetched the pilot token with the pilot secret."


@pytest.fixture(scope="module")
def pilot_dir() -> Path:
    folder = Path(os.environ.get("SITE_DIRECTOR_DIRAC_PILOT_DIR") or DEFAULT_PILOT_DIR)
    if not all((folder / name).is_file() for name in PILOT_FILES):
        missing(f"the DIRAC pilot's files are not in {folder} (SITE_DIRECTOR_DIRAC_PILOT_DIR)")
    return folder


def grid_security(folder: Path, ca_file: Path) -> dict[str, str]:
    """X509_CERT_DIR (an OpenSSL hashed CA directory holding the test CA), X509_VOMS_DIR and
    X509_VOMSES: the pilot needs all three non-empty; CVMFS gives them on worker nodes."""
    certs, vomsdir, vomses = folder / "certificates", folder / "vomsdir", folder / "vomses"
    for d in (certs, vomsdir, vomses):
        d.mkdir(parents=True)
    hashed = subprocess.run(
        ["openssl", "x509", "-hash", "-noout", "-in", str(ca_file)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (certs / f"{hashed}.0").write_bytes(ca_file.read_bytes())
    (vomsdir / "lhcb").mkdir()
    (vomses / "lhcb").write_text('"lhcb" "voms.example.org" "15003" "/CN=voms" "lhcb"\n')
    return {"X509_CERT_DIR": str(certs), "X509_VOMS_DIR": str(vomsdir), "X509_VOMSES": str(vomses)}


def test_the_stock_pilot_exchanges_the_secret_itself_logs_and_ends_done(
    live_server_tls: LiveServer, pilot_dir: Path, tmp_path: Path
) -> None:
    server = live_server_tls
    security = grid_security(tmp_path / "grid-security", Path(str(server.ca_file)))
    cvmfs = tmp_path / "cvmfs"
    cvmfs.mkdir()
    files = [
        WrapperFile(name, sha512=hashlib.sha512((pilot_dir / name).read_bytes()).hexdigest())
        for name in PILOT_FILES
    ]
    files.append(WrapperFile("pilot.json", content=json.dumps(PILOT_JSON).encode()))
    uses = FAST.exchange_attempts + PILOT_EXCHANGE_REQUESTS  # the wrapper's and the pilot's
    stamp, secret = new_pilot(server, uses=uses)
    options = replace(
        pilot_options(
            server,
            stamp,
            (str(pilot_dir),),
            pilot_files=tuple(files),
            secret_option="--pilotSecret",
            extensions=(),
            release="v9r0",
            processors=4,
            tags=("MultiProcessor", "4Processors"),
            required_tags=("Test",),
            tuning=FAST,
        ),
        extra_options=("-z", "-d", "-X", "CheckWorkerNode", f"--CVMFS_locations={cvmfs}"),
        environment=security,
    )
    assert secret_uses(options, None) == uses  # what the director mints for this queue
    done = run(render(options, stamp, secret, tmp_path), tmp_path / "run")

    assert done.returncode == 0, done.stdout + done.stderr
    assert pilot_record(server, stamp)["Status"] == "Done"
    lines = log_lines(server, stamp)
    messages = [line["Message"] for line in lines]
    # It exchanged the secret itself (its output, which the wrapper ships as scope Pilot) ...
    assert any(m.endswith(f"INFO [PilotParams] {FETCHED}") for m in messages), done.stdout
    assert not any("Won't use DiracX." in m for m in messages)
    # ... and sent its own lines with its own token: the scope of its command, the level of
    # its logger (-d: its DEBUG lines too, among them its command line with the secret)
    own = [line for line in lines if line["Scope"] == "CheckWorkerNode"]
    assert "Command CheckWorkerNode instantiated from pilotCommands" in [
        line["Message"] for line in own
    ]
    sent_secret_option = [
        line
        for line in lines
        if line["Severity"] == "DEBUG" and "'--pilotSecret'" in line["Message"]
    ]
    assert sent_secret_option
    assert all("('--pilotSecret', '<redacted>')" in line["Message"] for line in sent_secret_option)
    # its getopt took the queue's options (it stops at one it does not know)
    for option in ("('-r', 'v9r0')", "('--pilotProcessors', '4')", "('--requiredTag', 'Test')"):
        assert any(option in line["Message"] for line in sent_secret_option), option
    # The secret is in none of the lines: the wrapper redacts what it ships and echoes, the
    # server what the pilot sends
    assert not [line for line in lines if secret in json.dumps(line)]
    assert secret not in done.stdout + done.stderr
    assert "Revoking pilot token." in done.stdout  # the pilot revokes its own family
    # the wrapper's own work: its token, its status, its revocation
    assert any(m.startswith("secret exchanged for a pilot token") for m in messages)
    assert "token revoked" in done.stdout
    assert leftovers(done) == []
