"""CE tokens from our server as the only credential at a real HTCondor pool (SCITOKENS).

The pool (tests/infra/htcondor-setup.sh) verifies a token the way an HTCondor-CE does: it
fetches the issuer's `/.well-known/openid-configuration` and JWKS over HTTPS (the test CA is in
the chroot's trust store), checks `aud` against its SCITOKENS_SERVER_AUDIENCE (`host:port`) and
maps issuer and subject to the job user (any issuer at https://localhost:<port>).

Our server runs as a process of its own over TLS on a free port: the schedd fetches its keys in
the middle of a bindings call, which holds this process's GIL. Each backend session runs in a
fresh process too (tests/director/ce/scitoken_client.py), where no IDTOKEN exists and no
security session from another test can stand in for the token.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from director.ce.htcondor import HTCondorCEConfig
from tests.director.ce.htcondor_infra import HTCondorPool, htcondor_pool
from tests.director.ce.scitoken_issuer import REPO, Issuer, pool_tls, serve

pytestmark = [pytest.mark.htcondor, pytest.mark.slow]
__all__ = ["htcondor_pool"]  # the fixture, imported so pytest finds it


@pytest.fixture(scope="module")
def issuer(
    htcondor_pool: HTCondorPool, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Issuer]:
    """The issuer the pool maps to its job user (https://localhost:<port>)."""
    yield from serve(
        tmp_path_factory.mktemp("scitoken-issuer"), "localhost", pool_tls(htcondor_pool)
    )


@pytest.fixture(scope="module")
def stranger(
    htcondor_pool: HTCondorPool, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Issuer]:
    """Another installation, verifiable from its own JWKS, which the pool maps to nobody."""
    yield from serve(
        tmp_path_factory.mktemp("scitoken-other"), "127.0.0.1", pool_tls(htcondor_pool)
    )


def schedd_log(pool: HTCondorPool) -> Path:
    return pool.root / "var" / "log" / "condor" / "SchedLog"


def log_since(path: Path, offset: int) -> str:
    """What the schedd logged after `offset` (all of it if the log was rotated meanwhile)."""
    with path.open("rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        handle.seek(offset if offset <= size else 0)
        return handle.read().decode("utf-8", errors="replace")


def run_session(pool: HTCondorPool, tmp_path: Path, token: str) -> dict[str, Any]:
    """Submit, list, check, kill through the backend, in a fresh process whose only HTCondor
    credential is `token` (SCITOKENS_FILE): no IDTOKEN directory, no other method offered.
    `schedd_log`: what the schedd logged meanwhile (why it refused a token)."""
    tls = pool_tls(pool)
    log_offset = schedd_log(pool).stat().st_size
    token_file = tmp_path / "ce.token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    empty = tmp_path / "no-idtokens"
    empty.mkdir(mode=0o700)
    work_dir = tmp_path / "work"
    work_dir.mkdir()
    args = {
        "config": {
            "host": pool.host,
            "port": pool.port,
            "schedd_name": pool.schedd_name,
            "scitoken_file": str(token_file),
            "ca_dir": str(tls.ca_dir),
        },
        "work_dir": str(work_dir),
        "queue": f"q-{uuid.uuid4().hex[:8]}",
        "stamp": uuid.uuid4().hex,
    }
    env = {
        **os.environ,
        "CONDOR_CONFIG": str(pool.condor_config),
        "_condor_SEC_CLIENT_AUTHENTICATION_METHODS": "SCITOKENS",
        "_condor_SEC_TOKEN_DIRECTORY": str(empty),
        "_condor_SEC_TOKEN_SYSTEM_DIRECTORY": str(empty),
    }
    done = subprocess.run(
        [sys.executable, "-m", "tests.director.ce.scitoken_client", json.dumps(args)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["stamp"] = args["stamp"]
    result["schedd_log"] = log_since(schedd_log(pool), log_offset)
    return result


def test_a_ce_token_from_our_server_submits_lists_and_removes(
    htcondor_pool: HTCondorPool, issuer: Issuer, tmp_path: Path
) -> None:
    # the audience the backend asks for is the one the pool expects
    audience = HTCondorCEConfig(host=htcondor_pool.host, port=htcondor_pool.port).token_audience
    assert audience == pool_tls(htcondor_pool).audience
    result = run_session(htcondor_pool, tmp_path, issuer.ce_token(audience))
    assert "error" not in result, result
    # the schedd authenticated the token itself: it records its issuer and subject on the job
    assert result["ad"]["AuthTokenIssuer"] == issuer.url
    assert result["ad"]["AuthTokenSubject"] == "director"
    assert "compute.create" in result["ad"]["AuthTokenScopes"]
    assert result["ad"]["Owner"] == htcondor_pool.job_user
    assert result["listed"] == [result["stamp"]]
    assert result["first_status"] in ("Submitted", "Waiting", "Running"), result
    assert result["kill_error"] is None
    assert result["final_status"] == "Aborted", result


@pytest.mark.parametrize("case", ["another issuer", "expired", "another CE"])
def test_tokens_the_pool_must_refuse(
    htcondor_pool: HTCondorPool, issuer: Issuer, stranger: Issuer, tmp_path: Path, case: str
) -> None:
    """Each refused by the schedd for its own reason, which it logs: a valid token of an
    issuer it does not map, a token whose lifetime is over, a token for another CE."""
    audience = pool_tls(htcondor_pool).audience
    cases: dict[str, tuple[Callable[[], str], str]] = {
        "another issuer": (
            lambda: stranger.ce_token(audience),
            f"Failed to map SCITOKENS authenticated identity '{stranger.url},director'",
        ),
        "expired": (lambda: issuer.expired_ce_token(audience), "token expired"),
        "another CE": (
            lambda: issuer.ce_token(f"ce.example.org:{htcondor_pool.port}"),
            "'aud' claim verification failed",
        ),
    }
    token, reason = cases[case]
    result = run_session(htcondor_pool, tmp_path, token())
    assert result.get("category") == "auth", result
    assert "SCITOKENS" in result["error"], result
    assert reason in result["schedd_log"], result["schedd_log"][-3000:]
