"""The installation's issuer and `site-director token`: a token printed from a data directory
is accepted by the server serving it, whatever address the server listens on; the command
refuses what the server would refuse; a refused token is logged with the check that failed."""

from __future__ import annotations

import json
import logging
import ssl
import subprocess
import sys
from http import HTTPStatus
from pathlib import Path

import httpx
import pytest

from server.identity import TRUSTED_HOST, mint_user_token
from server.installation import VOS_FILE, default_issuer
from server.keys import IssuerMismatch, KeyStore, recorded_issuer, rotate_keyset, settle_issuer
from site_director.cli import main
from tests.conftest import Roles, free_port, wait_until
from tests.conftest import TestCA as CA
from tests.server.test_tokens import REVOKE, can_log, pilot_tokens

SITE_DIRECTOR = Path(sys.executable).parent / "site-director"


def _token_cmd(data_dir: Path, *extra: str) -> list[str]:
    return ["token", "--data-dir", str(data_dir), "--sub", "director@host", "--vo", "lhcb", *extra]


def _installation(
    tmp_path: Path, issuer: str = "https://sd.example.org", vos: str = "lhcb"
) -> Path:
    """A data directory as a server leaves it after its first start."""
    data_dir = tmp_path / "data"
    settle_issuer(data_dir / "jwks.json", issuer, default="unused")
    (data_dir / VOS_FILE).write_text(json.dumps({"vos": vos.split(",")}))
    return data_dir


# --- the issuer record --------------------------------------------------------------------------


def test_the_issuer_is_recorded_once_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    assert settle_issuer(path, None, default="https://first.example:8000") == (
        "https://first.example:8000"
    )
    # a later start elsewhere (other host, port, TLS) keeps the installation's issuer
    assert settle_issuer(path, None, default="http://0.0.0.0:9999") == "https://first.example:8000"
    assert settle_issuer(path, "https://first.example:8000", default="x") == (
        "https://first.example:8000"
    )
    with pytest.raises(IssuerMismatch, match="--change-issuer"):
        settle_issuer(path, "https://second.example", default="x")
    assert recorded_issuer(path) == "https://first.example:8000"
    assert settle_issuer(path, "https://second.example", default="x", change=True) == (
        "https://second.example"
    )
    rotate_keyset(path)  # the record travels with the key set
    assert recorded_issuer(path) == "https://second.example"


def test_a_key_set_made_before_the_record_gets_one(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    KeyStore(path, "https://old.example")
    document = json.loads(path.read_text())
    del document["issuer"]
    path.write_text(json.dumps(document))
    assert settle_issuer(path, None, default="https://host.example") == "https://host.example"
    assert recorded_issuer(path) == "https://host.example"


def test_default_issuer_is_a_name_clients_can_use() -> None:
    assert not default_issuer("0.0.0.0", 8000, tls=True).startswith("https://0.0.0.0")
    assert default_issuer("127.0.0.1", 8443, tls=True) == "https://127.0.0.1:8443"
    assert default_issuer("::1", 80, tls=False) == "http://[::1]"


# --- site-director token ------------------------------------------------------------------------


def test_token_refuses_a_data_dir_without_key_set(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    typo = tmp_path / "site-directr"
    assert main(_token_cmd(typo, "--property", TRUSTED_HOST)) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1
    assert "no key set" in err
    assert not (typo / "jwks.json").exists()  # nothing made behind the operator's back


@pytest.mark.parametrize(
    ("extra", "complaint"),
    [
        (["--vo", "atlas"], "unknown VO 'atlas'"),
        (["--extra-vo", "atlas"], "unknown VO 'atlas'"),
        (["--property", "TrustedHosts"], "unknown property 'TrustedHosts'"),
        (["--issuer", "http://127.0.0.1:8000"], "records the issuer"),
        (["--lifetime", "0"], "--lifetime"),
    ],
)
def test_token_refuses_what_the_server_would_refuse(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], complaint: str
) -> None:
    data_dir = _installation(tmp_path)
    assert main(_token_cmd(data_dir, "--property", TRUSTED_HOST, *extra)) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1, err
    assert complaint in err, err


def test_token_carries_the_recorded_issuer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SITE_DIRECTOR_ISSUER", raising=False)
    data_dir = _installation(tmp_path, "https://sd.example.org", "lhcb,dteam")
    assert main(_token_cmd(data_dir, "--property", TRUSTED_HOST, "--extra-vo", "dteam")) == 0
    token = capsys.readouterr().out.strip()
    claims = KeyStore.existing(data_dir / "jwks.json").verify(token)
    assert claims["iss"] == "https://sd.example.org"
    assert claims["dirac_properties"] == [TRUSTED_HOST]


# --- the server process -------------------------------------------------------------------------


@pytest.fixture
def server_args(tmp_path: Path, test_ca: CA) -> tuple[list[str], int]:
    port = free_port()
    args = ["--data-dir", str(tmp_path / "data"), "--vo", "lhcb", "--host", "0.0.0.0"]
    args += ["--port", str(port), "--tls-cert", str(test_ca.cert_file)]
    args += ["--tls-key", str(test_ca.key_file), "--log-level", "warning"]
    return args, port


def test_token_is_accepted_by_a_server_on_every_address(
    tmp_path: Path, test_ca: CA, server_args: tuple[list[str], int]
) -> None:
    """The README's production start (0.0.0.0, a port, TLS), then the director's token."""
    args, port = server_args
    log = (tmp_path / "server.log").open("wb")
    server = subprocess.Popen(
        [str(SITE_DIRECTOR), "server", *args], stdout=log, stderr=subprocess.STDOUT
    )
    url = f"https://localhost:{port}"
    trust = ssl.create_default_context(cafile=test_ca.ca_file)
    try:

        def healthy() -> bool:
            assert server.poll() is None, (tmp_path / "server.log").read_text()
            try:
                return httpx.get(f"{url}/api/health", verify=trust).is_success
            except httpx.TransportError:
                return False

        assert wait_until(healthy, timeout=60)
        out = subprocess.run(
            [str(SITE_DIRECTOR), *_token_cmd(tmp_path / "data", "--property", TRUSTED_HOST)],
            capture_output=True,
            text=True,
            check=True,
        )
        r = httpx.post(
            f"{url}/api/pilots/search",
            json={},
            headers={"Authorization": f"Bearer {out.stdout.strip()}"},
            verify=trust,
        )
        assert r.status_code == HTTPStatus.OK, r.text
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_server_contradicting_the_recorded_issuer_exits_2(
    tmp_path: Path, server_args: tuple[list[str], int]
) -> None:
    args, _ = server_args
    settle_issuer(tmp_path / "data" / "jwks.json", "https://sd.example.org", default="x")
    done = subprocess.run(
        [str(SITE_DIRECTOR), "server", *args, "--issuer", "https://elsewhere.example"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert "https://sd.example.org" in last
    assert "--change-issuer" in last
    assert recorded_issuer(tmp_path / "data" / "jwks.json") == "https://sd.example.org"


# --- refused tokens: a uniform 401, and a log line naming the check ------------------------------


async def _refusal(api: Roles, token: str, caplog: pytest.LogCaptureFixture) -> str:
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="server.auth"):
        r = await api.with_token(token).post("/api/pilots/search", json={})
    assert r.status_code == HTTPStatus.UNAUTHORIZED
    assert r.json() == {"detail": "Invalid token"}
    lines = [rec.getMessage() for rec in caplog.records if rec.name == "server.auth"]
    assert len(lines) == 1, lines
    assert token not in lines[0]
    signature = token.split(".")[-1]
    assert len(signature) < 16 or signature not in lines[0]  # not even the signature
    return lines[0]


async def test_a_refused_token_is_logged_with_the_failed_check(
    api: Roles, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    keys = api.sut.keys

    def token(store: KeyStore, lifetime: int = 600) -> str:
        return mint_user_token(
            store, sub="d", vo="lhcb", properties=[TRUSTED_HOST], lifetime=lifetime
        )

    line = await _refusal(api, token(KeyStore(keys.path, "http://127.0.0.1:8000")), caplog)
    assert "wrong issuer" in line
    assert "http://127.0.0.1:8000" in line
    assert keys.issuer in line
    assert "expired" in await _refusal(api, token(keys, lifetime=-5), caplog)
    stranger = KeyStore(tmp_path / "stranger.json", keys.issuer)
    assert "unknown key id" in await _refusal(api, token(stranger), caplog)
    head, body, _ = token(keys).split(".")
    forged = f"{head}.{body}.{token(stranger).split('.')[2]}"
    assert "bad signature" in await _refusal(api, forged, caplog)
    assert "malformed" in await _refusal(api, "a.b.c", caplog)


async def test_a_revoked_family_is_logged(api: Roles, caplog: pytest.LogCaptureFixture) -> None:
    _, pair = await pilot_tokens(api)
    r = await api.anonymous.post(REVOKE, data={"token": pair["refresh_token"]})
    assert r.status_code == HTTPStatus.OK
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="server.auth"):
        assert await can_log(api, pair["access_token"]) == HTTPStatus.UNAUTHORIZED
    lines = [rec.getMessage() for rec in caplog.records if rec.name == "server.auth"]
    assert lines == ["token refused: revoked family"]
