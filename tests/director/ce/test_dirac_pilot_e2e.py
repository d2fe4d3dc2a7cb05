"""The stock DIRAC pilot end to end through the test HTCondor pool and the test A-REX.

A director cycle with `pilot.secret_option: --pilotSecret` submits one pilot to each CE; the
pilot files are the unmodified DIRAC pilot (`/work/shared/reference/dirac-pilot/`, or the folder
named by SITE_DIRECTOR_DIRAC_PILOT_DIR), published as DIRAC's PilotSyncAgent publishes them (the
files, `pilot.json`, `checksums.sha512`): over HTTPS on a free loopback port for the pool (its
jobs run in a chroot that shares the host's network), as a path for A-REX (its fork back-end
runs jobs on this host). The wrapper fetches and checks them, then runs
`dirac-pilot.py ... --pilotSecret=<secret> -z -d -X CheckWorkerNode --CVMFS_locations=<empty>`:
the pilot exchanges the secret itself, sends its own lines (scope CheckWorkerNode) with its own
token, ends within seconds without installing DIRAC, and the wrapper reports Done.

The pilot needs three non-empty directories: `X509_CERT_DIR` (the test CA, hashed, so it verifies
the server), `X509_VOMS_DIR` and `X509_VOMSES` (CVMFS gives them on worker nodes). Pool jobs see
only the chroot, so they are made under the chroot's /tmp and named by their path there; A-REX
runs jobs as `nobody`, so they and the published folder are made world-readable outside the
tests' private temporary directories. Without the pilot files, the pool or A-REX the tests skip
(and fail under SITE_DIRECTOR_REQUIRE_INFRA=1).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from director.ce.base import PilotSubmission, QueueSpec, SubmitResult
from director.config import load_config
from director.daemon import client_for
from director.loop import Director
from server.models import FINAL_STATUSES, PilotStatus
from tests.conftest import LiveServer, missing
from tests.director.ce.arc_infra import ARCInfra
from tests.director.ce.htcondor_infra import HTCondorPool, htcondor_pool
from tests.director.test_pilot_files import https_folder, publish
from tests.director.test_wrapper_dirac_pilot import (
    FETCHED,
    PILOT_FILES,
    PILOT_JSON,
    grid_security,
)
from tests.director.test_wrapper_run import log_lines, pilot_record

pytestmark = pytest.mark.slow
__all__ = ["htcondor_pool", "https_folder"]  # fixtures for pytest

DEFAULT_PILOT_DIR = Path("/work/shared/reference/dirac-pilot")
PATH = "/usr/local/bin:/usr/bin:/bin"
"""HTCondor and A-REX start jobs with little or no environment: no PATH."""
PATIENCE_S = 180.0
REVOKED = "INFO [Pilot] Revoking pilot token."
SECRET_IN_WRAPPER = re.compile(r"^PILOT_SECRET = '([^']+)'$", re.MULTILINE)


@pytest.fixture(scope="module")
def pilot_dir() -> Path:
    folder = Path(os.environ.get("SITE_DIRECTOR_DIRAC_PILOT_DIR") or DEFAULT_PILOT_DIR)
    if not all((folder / name).is_file() for name in PILOT_FILES):
        missing(f"the DIRAC pilot's files are not in {folder} (SITE_DIRECTOR_DIRAC_PILOT_DIR)")
    return folder


def publish_pilot(folder: Path, pilot_dir: Path) -> None:
    """The folder as the PilotSyncAgent leaves it, an archive beside (the wrapper skips it)."""
    files = {name: (pilot_dir / name).read_bytes() for name in PILOT_FILES}
    files["pilot.json"] = json.dumps(PILOT_JSON).encode()
    publish(folder, {**files, "pilot.tar": b"an archive the wrapper does not fetch"})


def worker_files(folder: Path, ca_file: Path) -> tuple[dict[str, str], Path]:
    """The pilot's X509 directories (holding `ca_file`) and an empty CVMFS location under
    `folder`, all readable by any user (the job's user is not the test's)."""
    security = grid_security(folder / "grid-security", ca_file)
    cvmfs = folder / "empty-cvmfs"
    cvmfs.mkdir()
    for path in [folder, *folder.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return security, cvmfs


def pilot_block(manifest: str, environment: dict[str, str], cvmfs: str) -> dict[str, Any]:
    return {
        "setup": "Test-Setup",
        "manifest": manifest,
        "secret_option": "--pilotSecret",
        "extra_options": ["-z", "-d", "-X", "CheckWorkerNode", f"--CVMFS_locations={cvmfs}"],
        "environment": environment,
        "python_commands": ["python3"],
    }


def director_settings(
    server: LiveServer, work: Path, name: str, pilot: dict[str, Any], site: str, ce: dict[str, Any]
) -> Any:
    token_file = work / "director.token"
    token_file.write_text(server.director_token + "\n")
    token_file.chmod(0o600)
    return load_config(
        None,
        {
            "server": {
                "url": server.url,
                "token_file": str(token_file),
                "ca_bundle": str(server.ca_file),
            },
            "director": {
                "name": name,
                "work_dir": str(work / "director"),
                "held_timeout_seconds": 3600,
                "submit_grace_seconds": 3600,
                "clean_finished": True,
            },
            "vos": ["lhcb"],
            "pilot": pilot,
            "sites": {site: {"vo": "lhcb", "ces": {"localhost": ce}}},
        },
    )


def spy_on_secrets(director: Director) -> dict[str, str]:
    """Stamp -> the secret in the wrapper the CE got (to look for it in the stored lines)."""
    seen: dict[str, str] = {}
    (ref,) = director.queues
    ce = director.ce_for(ref)
    submit = ce.submit

    async def spying(queue: QueueSpec, pilots: Sequence[PilotSubmission]) -> list[SubmitResult]:
        for pilot in pilots:
            found = SECRET_IN_WRAPPER.search(pilot.wrapper)
            assert found, "no PILOT_SECRET line in the wrapper"
            seen[pilot.stamp] = found.group(1)
        return await submit(queue, pilots)

    ce.submit = spying  # type: ignore[method-assign]
    return seen


async def run_one_pilot(director: Director, server: LiveServer) -> tuple[str, str]:
    """One director cycle submitting one pilot, then monitoring cycles until it ends; returns
    its stamp and secret."""
    secrets = spy_on_secrets(director)
    assert director.check() == []
    [outcome] = await director.run_cycle()
    assert (outcome.submitted, outcome.failed, outcome.error) == (1, 0, None), outcome.why
    (stamp,) = outcome.stamps
    deadline = time.monotonic() + PATIENCE_S
    while True:
        await director.monitor_cycle()
        record = pilot_record(server, stamp)
        if record["Status"] in FINAL_STATUSES or time.monotonic() > deadline:
            break
        await asyncio.sleep(1.0)
    assert record["Status"] == PilotStatus.DONE, (
        record["StatusReason"],
        [line["Message"] for line in log_lines(server, stamp)][-20:],
    )
    return stamp, secrets[stamp]


def stored_lines(server: LiveServer, stamp: str) -> list[dict[str, Any]]:
    """The pilot's lines once the pilot's own and the wrapper's shipping of its output are in
    (the wrapper sends its last batch around the final status), or after a minute."""
    deadline = time.monotonic() + 60
    while True:
        lines = log_lines(server, stamp)
        messages = [line["Message"] for line in lines]
        fetched = any(m.endswith(f"INFO [PilotParams] {FETCHED}") for m in messages)
        own = any(line["Scope"] == "CheckWorkerNode" for line in lines)
        revoked = any(m.endswith(REVOKED) for m in messages)
        if (fetched and own and revoked) or time.monotonic() > deadline:
            return lines
        time.sleep(0.5)


def check_the_stock_pilot(server: LiveServer, stamp: str, secret: str) -> list[str]:
    """What every CE must show: the pilot fetched its own token with the secret, sent its own
    lines with it, and the secret is redacted wherever a line named it, absent from all."""
    lines = stored_lines(server, stamp)
    messages = [line["Message"] for line in lines]
    assert any(m.endswith(f"INFO [PilotParams] {FETCHED}") for m in messages), messages[-30:]
    assert not any("Won't use DiracX." in m for m in messages)
    own = [line["Message"] for line in lines if line["Scope"] == "CheckWorkerNode"]
    assert "Command CheckWorkerNode instantiated from pilotCommands" in own, messages[-30:]
    # -d: its DEBUG lines too, among them its options, secret redacted by the server
    options = [line for line in lines if "Options list" in line["Message"]]
    assert options, messages[-30:]
    assert all("('--pilotSecret', '<redacted>')" in line["Message"] for line in options)
    secret_lines = [line for line in lines if "--pilotSecret" in line["Message"]]
    assert all(
        "'<redacted>'" in line["Message"] or "=<redacted>" in line["Message"]
        for line in secret_lines
    ), secret_lines
    assert not [line for line in lines if secret in json.dumps(line)]
    # at its end the pilot revokes its own token family (its output, shipped by the wrapper)
    assert any(m.endswith(REVOKED) for m in messages), messages[-30:]
    # the wrapper's own work beside the pilot's
    assert any(m.startswith("secret exchanged for a pilot token") for m in messages)
    return messages


async def close(director: Director) -> None:
    """Leave nothing on the CE, then close the director."""
    for ref in director.queues:
        ce = director.ce_for(ref)
        jobs = await ce.list_jobs(director.spec_for(ref))
        await ce.kill([j.reference for j in jobs])
        await ce.clean([j.reference for j in jobs])
    await director.close()
    if director.client is not None:
        await director.client.aclose()


@pytest.fixture
def chroot_tmp(htcondor_pool: HTCondorPool) -> Iterator[Path]:
    """A folder under the pool's chroot /tmp (the jobs see it as /tmp/<name>)."""
    folder = htcondor_pool.root / "tmp" / f"site-director-dirac-pilot-{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A folder any user of this host may read (the tests' tmp_path is private to root)."""
    folder = Path(tempfile.mkdtemp(prefix="site-director-dirac-pilot-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.htcondor
async def test_the_stock_pilot_through_the_htcondor_pool(
    htcondor_pool: HTCondorPool,
    live_server_tls: LiveServer,
    https_folder: tuple[str, Path],
    chroot_tmp: Path,
    pilot_dir: Path,
    tmp_path: Path,
) -> None:
    server = live_server_tls
    url, folder = https_folder
    publish_pilot(folder, pilot_dir)
    security, cvmfs = worker_files(chroot_tmp, Path(str(server.ca_file)))

    def in_chroot(path: str | Path) -> str:
        return "/" + str(Path(path).relative_to(htcondor_pool.root))

    environment = {key: in_chroot(value) for key, value in security.items()}
    pool = htcondor_pool
    ce = {
        "ce": {
            "kind": "htcondor",
            "host": pool.host,
            "port": pool.port,
            "schedd_name": pool.schedd_name,
            "idtoken_dir": str(pool.token_dir),
        },
        "queues": {
            "stock": {
                "pilots_per_cycle": 1,
                "max_total_pilots": 1,
                "max_waiting_pilots": 1,
                "environment": {"PATH": PATH},
            }
        },
    }
    site = f"LCG.StockPool{uuid.uuid4().hex[:6]}.test"  # a site of its own: reruns never mix
    settings = director_settings(
        server,
        tmp_path,
        f"dirac-pilot-htcondor-{uuid.uuid4().hex[:6]}",
        pilot_block(url, environment, in_chroot(cvmfs)),
        site,
        ce,
    )
    director = Director(settings, client=client_for(settings))
    try:
        stamp, secret = await run_one_pilot(director, server)
        assert pilot_record(server, stamp)["PilotJobReference"].startswith("htcondorce://")
        messages = check_the_stock_pilot(server, stamp, secret)
        # the job fetched the files from the folder over the host's loopback, checked
        assert any("dirac-pilot.py" in m and url in m for m in messages), messages[-30:]
    finally:
        await close(director)


@pytest.mark.arc
async def test_the_stock_pilot_through_arc(
    arc_infra: ARCInfra,
    arc_issuer: LiveServer,
    shared_tmp: Path,
    pilot_dir: Path,
    tmp_path: Path,
) -> None:
    server = arc_issuer
    published = shared_tmp / "pilot"
    publish_pilot(published, pilot_dir)
    security, cvmfs = worker_files(shared_tmp, arc_infra.ca_file)
    ce = {
        "ce": {
            "kind": "arc",
            "url": arc_infra.url,
            "ca_file": str(arc_infra.ca_file),
            "ce_token": {},  # from the director's own server, with its service token
        },
        "queues": {
            "stock": {
                "ce_queue": arc_infra.queue,
                "pilots_per_cycle": 1,
                # A-REX's GLUE2 counts count every job of the shared queue, others' tests too
                "max_total_pilots": 50,
                "max_waiting_pilots": 50,
                "environment": {"PATH": PATH},
            }
        },
    }
    site = f"LCG.StockArc{uuid.uuid4().hex[:6]}.test"
    settings = director_settings(
        server,
        tmp_path,
        f"dirac-pilot-arc-{uuid.uuid4().hex[:6]}",
        pilot_block(str(published), security, str(cvmfs)),
        site,
        ce,
    )
    director = Director(settings, client=client_for(settings))
    try:
        stamp, secret = await run_one_pilot(director, server)
        assert pilot_record(server, stamp)["PilotJobReference"].startswith("arc://")
        messages = check_the_stock_pilot(server, stamp, secret)
        # the job (user nobody) read the files from the published folder, checked
        assert any("dirac-pilot.py" in m and str(published) in m for m in messages), messages[-30:]
    finally:
        await close(director)
