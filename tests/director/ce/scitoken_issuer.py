"""Our server as a SciTokens issuer the test pool trusts: `site-director server` over HTTPS on a
free port, in a process of its own (the schedd fetches its JWKS in the middle of a bindings
call, which holds the test process's GIL), with the pool's `localhost` certificate.

Used by test_htcondor_ce_token_live and test_htcondor_scitokens_live.
"""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path

import httpx
import pytest

from server.identity import TRUSTED_HOST, Identity, mint_user_token
from server.keys import KeyStore
from server.logic.cetokens import CE_TOKEN_ALG, CE_TOKEN_TYP, ce_token_claims
from tests.conftest import TEST_VOS, free_port, wait_until
from tests.director.ce.htcondor_infra import HTCondorPool, SciTokensSetup

REPO = Path(__file__).resolve().parents[3]


@dataclass
class Issuer:
    """Our server, serving HTTPS as the token issuer `url`."""

    url: str
    data_dir: Path
    ca_file: Path

    def director_token(self, properties: list[str] | None = None) -> str:
        """A service token of this installation; a director's carries TrustedHost."""
        keys = KeyStore(self.data_dir / "jwks.json", self.url)
        return mint_user_token(
            keys,
            sub="director",
            vo="lhcb",
            properties=[TRUSTED_HOST] if properties is None else properties,
            lifetime=3600,
        )

    def ce_token(self, audience: str, lifetime: int = 600) -> str:
        """A CE token bought from this server with the director's token."""
        response = httpx.post(
            f"{self.url}/api/auth/ce-token",
            json={"audience": audience, "lifetime": lifetime},
            headers={"Authorization": f"Bearer {self.director_token()}"},
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


def pool_tls(pool: HTCondorPool) -> SciTokensSetup:
    if pool.scitokens is None:
        pytest.fail("the pool has no SCITOKENS set-up: rerun tests/infra/htcondor-setup.sh")
    return pool.scitokens


def _healthy(url: str, ca_file: Path) -> bool:
    try:
        context = ssl.create_default_context(cafile=ca_file)
        response = httpx.get(f"{url}/api/health", verify=context, timeout=2)
    except httpx.HTTPError:
        return False
    return response.status_code == HTTPStatus.OK


def serve(data_dir: Path, host: str, tls: SciTokensSetup) -> Iterator[Issuer]:
    """`site-director server` over HTTPS as issuer https://<host>:<free port>, until closed."""
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
            yield Issuer(url, data_dir, tls.ca_file)
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
