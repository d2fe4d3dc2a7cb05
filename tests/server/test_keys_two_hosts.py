"""Two server hosts, as docs/operations.md ("Several hosts") sets them up: two processes, each
with a data directory of its own, one shared key set file (`--keys-file`) and one PostgreSQL
database. A token either issues is valid on both, and a rotation made through one reaches both
without a restart."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path

import httpx
import pytest
from joserfc.jws import extract_compact

from tests.conftest import free_port, missing, wait_until

pytestmark = pytest.mark.slow
ISSUER = "https://site-director.test"  # the installation's, not either host's address
BIN = Path(sys.executable).parent / "site-director"
DB = f"sdtest_{os.getpid()}_hosts"
LINE = {"timestamp": "2026-01-02T03:04:05Z", "severity": "INFO", "message": "hi", "scope": "Pilot"}


def cli_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("SITE_DIRECTOR_")}


@pytest.fixture
def postgres_url() -> Iterator[str]:
    import asyncpg

    async def admin(statement: str) -> None:
        conn = await asyncpg.connect(host="127.0.0.1", port=5432, user="postgres", database="test")
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    try:
        asyncio.run(admin(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)"))
        asyncio.run(admin(f"CREATE DATABASE {DB}"))
    except OSError as exc:
        missing(f"no PostgreSQL on 127.0.0.1:5432: {exc}")
    yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{DB}"
    asyncio.run(admin(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)"))


@dataclass
class Host:
    url: str
    data_dir: Path
    process: subprocess.Popen[bytes]
    log: Path

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30)


def start_host(name: str, tmp_path: Path, keys_file: Path, db_url: str) -> Host:
    data_dir = tmp_path / name
    data_dir.mkdir()
    port = free_port()
    log = tmp_path / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                *(str(BIN), "server", "--data-dir", str(data_dir), "--keys-file", str(keys_file)),
                *("--db", db_url, "--vo", "lhcb", "--port", str(port), "--issuer", ISSUER),
            ],
            env=cli_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    host = Host(f"http://127.0.0.1:{port}", data_dir, process, log)

    def healthy() -> bool:
        assert process.poll() is None, log.read_text()
        try:
            return httpx.get(f"{host.url}/api/health").status_code == HTTPStatus.OK
        except httpx.TransportError:
            return False

    assert wait_until(healthy, timeout=90), log.read_text()
    return host


def stop(host: Host) -> None:
    host.process.terminate()
    try:
        host.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        host.process.kill()
        host.process.wait()


def site_director(*args: str) -> str:
    done = subprocess.run(
        [str(BIN), *args], env=cli_env(), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def kid_of(token: str) -> str:
    kid = extract_compact(token.encode()).protected["kid"]
    assert isinstance(kid, str)
    return kid


def test_two_hosts_share_keys_issuer_and_rotation(tmp_path: Path, postgres_url: str) -> None:
    keys_file = tmp_path / "secret" / "jwks.json"
    a = start_host("a", tmp_path, keys_file, postgres_url)
    try:
        b = start_host("b", tmp_path, keys_file, postgres_url)
        try:
            _check(a, b, keys_file)
        finally:
            stop(b)
    finally:
        stop(a)
    # the rest of a data directory stays per host; nothing of the key set is copied there
    assert not (tmp_path / "a" / "jwks.json").exists()
    assert not (tmp_path / "b" / "jwks.json").exists()


def _check(a: Host, b: Host, keys_file: Path) -> None:
    director = site_director(
        "token", "--data-dir", str(a.data_dir), "--keys-file", str(keys_file),
        "--sub", "director", "--vo", "lhcb", "--property", "TrustedHost",
    ).strip()  # fmt: skip
    auth = {"Authorization": f"Bearer {director}"}
    with a.client() as ca, b.client() as cb:
        for c in (ca, cb):  # one issuer, one JWKS
            assert c.get("/.well-known/openid-configuration").json()["issuer"] == ISSUER
        assert ca.get("/.well-known/jwks.json").json() == cb.get("/.well-known/jwks.json").json()

        def pilot_tokens(registrar: httpx.Client, exchanger: httpx.Client) -> dict[str, str]:
            stamp = uuid.uuid4().hex
            r = registrar.post(
                "/api/pilots/bulk",
                json={
                    "vo": "lhcb",
                    "pilots": [{"pilot_stamp": stamp}],
                    "mint_secrets": True,
                    "secret_constraints": {},
                },
                headers=auth,
            )
            assert r.status_code == HTTPStatus.CREATED, r.text
            secret = r.json()["secrets"][0]["pilot_secret"]
            r = exchanger.post(
                "/api/auth/secret-exchange", json={"pilot_stamp": stamp, "pilot_secret": secret}
            )
            assert r.status_code == HTTPStatus.OK, r.text
            return {"stamp": stamp, **r.json()}

        def accepted(client: httpx.Client, tokens: dict[str, str]) -> bool:
            r = client.post(
                "/api/pilots/internal/message",
                json={"lines": [LINE]},
                headers={"Authorization": f"Bearer {tokens['access_token']}"},
            )
            assert r.status_code in (HTTPStatus.NO_CONTENT, HTTPStatus.UNAUTHORIZED), r.text
            return r.status_code == HTTPStatus.NO_CONTENT

        from_a = pilot_tokens(ca, ca)  # registered and exchanged on A
        from_b = pilot_tokens(ca, cb)  # registered on A, exchanged on B: one database
        for tokens in (from_a, from_b):
            assert accepted(ca, tokens)
            assert accepted(cb, tokens)
        # a refresh token from A refreshes on B
        r = cb.post(
            "/api/auth/pilot-token",
            json={"refresh_token": from_a["refresh_token"], "pilot_stamp": from_a["stamp"]},
        )
        assert r.status_code == HTTPStatus.OK, r.text
        assert accepted(ca, {"access_token": r.json()["access_token"]})
        old_kid = kid_of(from_a["access_token"])

        # a rotation made through host A's command line reaches both running hosts
        out = site_director("keys", "rotate", "--keys-file", str(keys_file), "--delay", "0")
        new_kid = out.split()[1].rstrip(",")  # "published <ed kid>, <rsa kid>: ..."
        for client in (ca, cb):

            def rotated(client: httpx.Client = client) -> bool:
                kids = {k["kid"] for k in client.get("/.well-known/jwks.json").json()["keys"]}
                return new_kid in kids

            assert wait_until(rotated, timeout=60, interval=0.5)
        after = pilot_tokens(cb, cb)  # host B signs with the new key ...
        assert kid_of(after["access_token"]) == new_kid
        assert accepted(ca, after)  # ... and host A accepts it
        after_a = pilot_tokens(ca, ca)
        assert kid_of(after_a["access_token"]) == new_kid
        assert accepted(cb, after_a)
        for tokens in (from_a, from_b):  # the old key verifies for its grace, on both
            assert kid_of(tokens["access_token"]) == old_kid
            assert accepted(ca, tokens)
            assert accepted(cb, tokens)
        for client in (ca, cb):  # the director's token too
            r = client.post("/api/pilots/search", json={}, headers=auth)
            assert r.status_code == HTTPStatus.OK, r.text
