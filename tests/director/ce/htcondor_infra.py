"""The real HTCondor test pool (tests/infra/htcondor-setup.sh), as a session-scoped fixture.

The set-up script writes `<dir>/htcondor.env` once the pool answers; this reads it. By hand, a
missing or silent pool skips the tests that need it; in CI (SITE_DIRECTOR_REQUIRE_INFRA=1) it
fails them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import missing
from tests.director.ce.env_file import infra_dir, read_env_file

REPO = Path(__file__).resolve().parents[3]
SETUP = "tests/infra/htcondor-setup.sh"


@dataclass(frozen=True)
class SciTokensSetup:
    """The pool's SCITOKENS side: a test CA the chroot trusts, a `localhost` certificate from
    it for a token issuer, and the audience the pool expects (its SCITOKENS_SERVER_AUDIENCE).
    Issuers at https://localhost:<any port> are mapped to the job user; no other is."""

    ca_file: Path
    ca_dir: Path
    issuer_cert: Path
    issuer_key: Path
    audience: str


@dataclass(frozen=True)
class HTCondorPool:
    """What a test needs to reach the pool the way the director reaches an HTCondor-CE."""

    host: str
    port: int
    collector: str
    schedd_name: str
    token_dir: Path
    condor_config: Path
    root: Path
    job_user: str
    scitokens: SciTokensSetup | None = None
    """None when the pool was set up by an older script (no SCITOKENS configuration)."""


def pool_env_file() -> Path:
    base = os.environ.get("HTCONDOR_INFRA_DIR") or infra_dir("htcondor")
    return Path(base) / "htcondor.env"


@pytest.fixture(scope="session")
def htcondor_pool() -> HTCondorPool:
    pytest.importorskip("htcondor2", reason="the htcondor bindings (extra 'htcondor') are absent")
    env_file = pool_env_file()
    if not env_file.is_file():
        missing(f"no HTCondor test pool: {env_file} absent (run `sudo {SETUP}`)")
    env = read_env_file(env_file)
    pool = HTCondorPool(
        host=env["HTCONDOR_HOST"],
        port=int(env["HTCONDOR_PORT"]),
        collector=env["HTCONDOR_COLLECTOR"],
        schedd_name=env["HTCONDOR_SCHEDD_NAME"],
        token_dir=Path(env["HTCONDOR_TOKEN_DIR"]),
        condor_config=Path(env["CONDOR_CONFIG"]),
        root=Path(env["HTCONDOR_ROOT"]),
        job_user=env.get("HTCONDOR_JOB_USER", "pilot"),
        scitokens=(
            SciTokensSetup(
                ca_file=Path(env["HTCONDOR_CA_FILE"]),
                ca_dir=Path(env["HTCONDOR_CA_DIR"]),
                issuer_cert=Path(env["HTCONDOR_ISSUER_CERT"]),
                issuer_key=Path(env["HTCONDOR_ISSUER_KEY"]),
                audience=env["HTCONDOR_TOKEN_AUDIENCE"],
            )
            if "HTCONDOR_TOKEN_AUDIENCE" in env
            else None
        ),
    )
    os.environ["CONDOR_CONFIG"] = str(pool.condor_config)
    import htcondor2

    htcondor2.reload_config()
    try:
        location = htcondor2.Collector(pool.collector).locate(
            htcondor2.DaemonTypes.Schedd, pool.schedd_name
        )
    except Exception as exc:  # the bindings raise HTCondorException
        location = None
        reason = str(exc)
    else:
        reason = "schedd not in the collector"
    if location is None:
        missing(f"HTCondor test pool at {pool.collector} not answering ({reason}); rerun {SETUP}")
    return pool
