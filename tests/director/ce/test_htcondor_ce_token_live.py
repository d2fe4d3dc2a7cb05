"""The HTCondor backend fetching and refreshing its own CE token (`ce_token`) at the real pool.

The only credential of the session is what the backend gets from our server through the
director's credential source (`ServerCredentials` around a `ServerClient`): no token file kept by
anyone, no IDTOKEN. The pool verifies the token as an HTCondor-CE does (issuer's JWKS over
HTTPS, `aud` against its SCITOKENS_SERVER_AUDIENCE, issuer and subject mapped to the job user).
The session runs in a fresh process (tests/director/ce/ce_token_client.py), since the HTCondor
client caches one authenticated session per schedd per process.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from director.ce.base import PilotSubmission, QueueSpec
from director.ce.credentials import ServerCredentials
from director.ce.htcondor import HTCondorCE, HTCondorCEConfig
from director.client import ServerClient, TokenSource
from director.errors import CEPermanentError
from director.render import TemplateRenderer
from tests.director.ce.htcondor_infra import HTCondorPool, htcondor_pool
from tests.director.ce.scitoken_issuer import Issuer, pool_tls, serve

pytestmark = [pytest.mark.htcondor, pytest.mark.slow]
__all__ = ["htcondor_pool"]  # the fixture, imported so pytest finds it

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def issuer(
    htcondor_pool: HTCondorPool, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Issuer]:
    """The issuer the pool maps to its job user (https://localhost:<port>)."""
    yield from serve(
        tmp_path_factory.mktemp("ce-token-issuer"), "localhost", pool_tls(htcondor_pool)
    )


def claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    decoded: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return decoded


def ce_config(pool: HTCondorPool) -> dict[str, Any]:
    return {
        "host": pool.host,
        "port": pool.port,
        "schedd_name": pool.schedd_name,
        "ce_token": {"lifetime_s": 600},
        "ca_dir": str(pool_tls(pool).ca_dir),
    }


def run_session(pool: HTCondorPool, issuer: Issuer, tmp_path: Path) -> dict[str, Any]:
    """The client's session in a fresh process whose HTCondor client offers SCITOKENS only
    and has no IDTOKEN to fall back on."""
    empty = tmp_path / "no-idtokens"
    empty.mkdir(mode=0o700)
    work_dir = tmp_path / "work"
    work_dir.mkdir()
    args = {
        "config": ce_config(pool),
        "work_dir": str(work_dir),
        "queue": f"q-{uuid.uuid4().hex[:8]}",
        "stamps": [uuid.uuid4().hex, uuid.uuid4().hex],
        "server_url": issuer.url,
        "ca_file": str(issuer.ca_file),
        "director_token": issuer.director_token(),
    }
    env = {
        **os.environ,
        "CONDOR_CONFIG": str(pool.condor_config),
        "_condor_SEC_CLIENT_AUTHENTICATION_METHODS": "SCITOKENS",
        "_condor_SEC_TOKEN_DIRECTORY": str(empty),
        "_condor_SEC_TOKEN_SYSTEM_DIRECTORY": str(empty),
    }
    done = subprocess.run(
        [sys.executable, "-m", "tests.director.ce.ce_token_client", json.dumps(args)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["stamps"] = args["stamps"]
    return result


def test_the_backend_fetches_presents_and_renews_its_own_ce_token(
    htcondor_pool: HTCondorPool, issuer: Issuer, tmp_path: Path
) -> None:
    result = run_session(htcondor_pool, issuer, tmp_path)
    assert "error" not in result, result

    # one token at the start, one more after the renewal point: each for this CE, from us
    first, second = result["issued"]
    for token in (first, second):
        assert claims(token)["aud"] == pool_tls(htcondor_pool).audience
        assert claims(token)["iss"] == issuer.url
        assert claims(token)["sub"] == "director"
    assert claims(first)["jti"] != claims(second)["jti"]

    # each written for the client, privately, alone in its folder
    assert result["first_file"]["text"] == first + "\n"
    assert result["second_file"]["text"] == second + "\n"
    for written in (result["first_file"], result["second_file"]):
        assert written["mode"] == 0o600
        assert written["folder_mode"] == 0o700
        assert written["folder"] == ["scitoken"]

    # the schedd authenticated the first token itself, and mapped it to the job user
    ad = result["first_ad"]
    assert ad["AuthTokenIssuer"] == issuer.url
    assert ad["AuthTokenSubject"] == "director"
    assert ad["AuthTokenId"] == claims(first)["jti"]
    assert ad["Owner"] == htcondor_pool.job_user
    assert result["listed"] == [result["stamps"][0]]
    assert result["first_status"] in ("Submitted", "Waiting", "Running"), result

    # after the renewal the session made with the first token is still the one in use: the
    # renewed token goes out at the next new session (docs/ce.md)
    assert result["second_ad"]["AuthTokenId"] == claims(first)["jti"]
    assert result["second_ad"]["Owner"] == htcondor_pool.job_user

    assert result["kill_errors"] == [None, None]
    assert result["final_statuses"] == ["Aborted", "Aborted"], result


async def test_a_director_the_server_will_not_give_ce_tokens_submits_nothing(
    htcondor_pool: HTCondorPool, issuer: Issuer, tmp_path: Path
) -> None:
    """A service token without TrustedHost: the server answers 403, the backend fails
    permanently for auth before it talks to the pool, and no token file is written. (No
    bindings call is made, so this runs in the test process.)"""
    client = ServerClient(
        issuer.url,
        TokenSource(value=SecretStr(issuer.director_token(properties=[]))),
        ca_bundle=issuer.ca_file,
    )
    ce = HTCondorCE(
        HTCondorCEConfig.model_validate(ce_config(htcondor_pool)),
        renderer=TemplateRenderer(),
        work_dir=tmp_path,
        credentials=ServerCredentials(client),
    )
    queue = QueueSpec(name="refused", site="LCG.CEToken.test", ce=htcondor_pool.host)
    try:
        with pytest.raises(CEPermanentError, match="refused a CE token") as caught:
            await ce.submit(queue, [PilotSubmission(uuid.uuid4().hex, "#!/bin/sh\ntrue\n")])
    finally:
        await client.aclose()
    assert caught.value.category == "auth"
    assert not (tmp_path / "credentials").exists()
