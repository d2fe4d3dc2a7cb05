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
import signal
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

import httpx
import pytest

from director.ce.htcondor import HTCondorCEConfig
from server.identity import TRUSTED_HOST, Identity, mint_user_token
from server.keys import KeyStore
from server.logic.cetokens import CE_TOKEN_ALG, CE_TOKEN_TYP, ce_token_claims
from tests.conftest import TEST_VOS, free_port, wait_until
from tests.director.ce.htcondor_infra import HTCondorPool, SciTokensSetup, htcondor_pool

pytestmark = [pytest.mark.htcondor, pytest.mark.slow]
__all__ = ["htcondor_pool"]  # the fixture, imported so pytest finds it

REPO = Path(__file__).resolve().parents[3]


@dataclass
class Issuer:
    """Our server, serving HTTPS as the token issuer `url`."""

    url: str
    data_dir: Path
    ca_file: Path
    director_token: str

    def ce_token(self, audience: str, lifetime: int = 600) -> str:
        response = httpx.post(
            f"{self.url}/api/auth/ce-token",
            json={"audience": audience, "lifetime": lifetime},
            headers={"Authorization": f"Bearer {self.director_token}"},
            verify=ssl.create_default_context(cafile=self.ca_file),
            timeout=30,
        )
        assert response.status_code == HTTPStatus.OK, response.text
        token: str = response.json()["access_token"]
        return token

    def expired_ce_token(self, audience: str) -> str:
        """Signed with this issuer's own RS256 key, but its lifetime ended a while ago."""
        keys = KeyStore(self.data_dir / "jwks.json", self.url)
        moment = int(time.time()) - 3600
        identity = Identity(sub="director", vo="lhcb", jti=uuid.uuid4().hex)
        claims = ce_token_claims(identity, audience, issuer=self.url, lifetime=600, now=moment)
        return keys.sign(claims, alg=CE_TOKEN_ALG, typ=CE_TOKEN_TYP)


def _healthy(url: str, ca_file: Path) -> bool:
    try:
        context = ssl.create_default_context(cafile=ca_file)
        response = httpx.get(f"{url}/api/health", verify=context, timeout=2)
    except httpx.HTTPError:
        return False
    return response.status_code == HTTPStatus.OK


def _serve(data_dir: Path, host: str, tls: SciTokensSetup) -> Iterator[Issuer]:
    """`site-director server` over HTTPS as issuer https://<host>:<free port>."""
    port = free_port()
    url = f"https://{host}:{port}"
    vos = [arg for vo in TEST_VOS for arg in ("--vo", vo)]
    with (data_dir / "server.log").open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "site_director",
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--data-dir",
                str(data_dir),
                "--issuer",
                url,
                "--tls-cert",
                str(tls.issuer_cert),
                "--tls-key",
                str(tls.issuer_key),
                "--log-level",
                "warning",
                *vos,
            ],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            started = wait_until(
                lambda: process.poll() is None and _healthy(url, tls.ca_file), timeout=60
            )
            assert started, (data_dir / "server.log").read_text()[-2000:]
            keys = KeyStore(data_dir / "jwks.json", url)
            director = mint_user_token(
                keys, sub="director", vo="lhcb", properties=[TRUSTED_HOST], lifetime=3600
            )
            yield Issuer(url, data_dir, tls.ca_file, director)
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _tls(pool: HTCondorPool) -> SciTokensSetup:
    if pool.scitokens is None:
        pytest.fail("the pool has no SCITOKENS set-up: rerun tests/infra/htcondor-setup.sh")
    return pool.scitokens


@pytest.fixture(scope="module")
def issuer(
    htcondor_pool: HTCondorPool, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Issuer]:
    """The issuer the pool maps to its job user (https://localhost:<port>)."""
    yield from _serve(tmp_path_factory.mktemp("scitoken-issuer"), "localhost", _tls(htcondor_pool))


@pytest.fixture(scope="module")
def stranger(
    htcondor_pool: HTCondorPool, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Issuer]:
    """Another installation, verifiable from its own JWKS, which the pool maps to nobody."""
    yield from _serve(tmp_path_factory.mktemp("scitoken-other"), "127.0.0.1", _tls(htcondor_pool))


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
    tls = _tls(pool)
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
    assert audience == _tls(htcondor_pool).audience
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
    audience = _tls(htcondor_pool).audience
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
