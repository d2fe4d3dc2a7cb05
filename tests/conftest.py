"""Shared fixtures: the server app on each database backend, role clients, a live server.

Databases: SQLite always; MariaDB and PostgreSQL on 127.0.0.1 (ports 3306/5432, database `test`
for the first connection) unless SITE_DIRECTOR_TEST_DATABASES narrows the list. Each test run
works in databases of its own (`sdtest_<pid>`), created at the start and dropped at the end, so
runs never see each other's rows. With SITE_DIRECTOR_REQUIRE_INFRA=1 (CI), a backend or test
service that is missing fails the run instead of skipping.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy import delete

from server.app import create_app
from server.db import schema
from server.identity import ADMIN, GENERIC_PILOT, NORMAL_USER, TRUSTED_HOST, mint_user_token
from server.keys import KeyStore
from server.settings import ServerSettings

REQUIRE_INFRA = os.environ.get("SITE_DIRECTOR_REQUIRE_INFRA") == "1"
TEST_VOS = ["lhcb", "dteam"]
RUN_DB = f"sdtest_{os.getpid()}"
ISSUER = "https://site-director.test"


def missing(reason: str) -> None:
    """Skip by hand, fail in CI: a missing service must not turn into a green run."""
    if REQUIRE_INFRA:
        pytest.fail(f"required test infrastructure missing: {reason}")
    pytest.skip(reason)


# --- databases --------------------------------------------------------------------------------

BACKENDS = [
    b.strip()
    for b in os.environ.get("SITE_DIRECTOR_TEST_DATABASES", "sqlite,mariadb,postgres").split(",")
    if b.strip()
]


async def _make_database(backend: str, tmp: Path, name: str = RUN_DB) -> str:
    """Create this run's database (or another `name`) on the backend; returns its async URL."""
    if backend == "sqlite":
        return f"sqlite+aiosqlite:///{tmp / 'test.db'}"
    if backend == "mariadb":
        import asyncmy

        conn = await asyncmy.connect(host="127.0.0.1", port=3306, user="root", password="")
        async with conn.cursor() as cur:
            await cur.execute(f"DROP DATABASE IF EXISTS {name}")
            await cur.execute(f"CREATE DATABASE {name} CHARACTER SET utf8mb4")
        conn.close()
        return f"mysql+asyncmy://root@127.0.0.1:3306/{name}?charset=utf8mb4"
    if backend == "postgres":
        import asyncpg

        conn = await asyncpg.connect(host="127.0.0.1", port=5432, user="postgres", database="test")
        await conn.execute(f"DROP DATABASE IF EXISTS {name}")
        await conn.execute(f"CREATE DATABASE {name}")
        await conn.close()
        return f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    raise ValueError(backend)


async def _drop_database(backend: str, name: str = RUN_DB) -> None:
    try:
        if backend == "mariadb":
            import asyncmy

            conn = await asyncmy.connect(host="127.0.0.1", port=3306, user="root", password="")
            async with conn.cursor() as cur:
                await cur.execute(f"DROP DATABASE IF EXISTS {name}")
            conn.close()
        elif backend == "postgres":
            import asyncpg

            conn = await asyncpg.connect(
                host="127.0.0.1", port=5432, user="postgres", database="test"
            )
            await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            await conn.close()
    except OSError:
        pass


@dataclass
class ServerUnderTest:
    """An app on one backend with its lifespan running, and a way to mint tokens for it."""

    backend: str
    app: Any
    settings: ServerSettings
    keys: KeyStore

    def token(
        self,
        sub: str = "user",
        vo: str = "lhcb",
        properties: list[str] | None = None,
        lifetime: int = 600,
        extra_vos: list[str] | None = None,
    ) -> str:
        return mint_user_token(
            self.keys,
            sub=sub,
            vo=vo,
            properties=properties or [NORMAL_USER],
            lifetime=lifetime,
            extra_vos=extra_vos,
        )

    def client(self, token: str | None = None) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app),
            base_url="http://testserver",
            headers=headers,
        )

    async def reset(self) -> None:
        ctx = self.app.state.ctx
        ctx.memo.clear()
        async with ctx.db.transaction() as conn:
            for table in reversed(schema.metadata.sorted_tables):
                await conn.execute(delete(table))


@pytest.fixture(scope="session", params=BACKENDS)
async def server_under_test(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[ServerUnderTest]:
    backend = request.param
    tmp = tmp_path_factory.mktemp(f"server-{backend}")
    try:
        url = await _make_database(backend, tmp)
    except (OSError, ConnectionError) as exc:
        missing(f"{backend} is not reachable on 127.0.0.1: {exc}")
    # no scheduled maintenance: a purge in the middle of a test would be a surprise
    settings = ServerSettings(
        data_dir=tmp, db_url=url, issuer=ISSUER, vos=TEST_VOS, maintenance=False
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        yield ServerUnderTest(backend, app, settings, app.state.ctx.keys)
    await _drop_database(backend)


@dataclass
class Roles:
    """One client per kind of caller, as DiracX's tests have them."""

    sut: ServerUnderTest
    admin: httpx.AsyncClient
    director: httpx.AsyncClient
    user: httpx.AsyncClient
    other_vo: httpx.AsyncClient
    other_director: httpx.AsyncClient
    legacy_pilot: httpx.AsyncClient
    anonymous: httpx.AsyncClient
    _extra: list[httpx.AsyncClient] = field(default_factory=list)

    def with_token(self, token: str) -> httpx.AsyncClient:
        client = self.sut.client(token)
        self._extra.append(client)
        return client

    async def aclose(self) -> None:
        for c in (
            self.admin,
            self.director,
            self.user,
            self.other_vo,
            self.other_director,
            self.legacy_pilot,
            self.anonymous,
            *self._extra,
        ):
            await c.aclose()


@pytest.fixture
async def api(server_under_test: ServerUnderTest) -> AsyncIterator[Roles]:
    """Role clients on a clean database (every table emptied before the test)."""
    sut = server_under_test
    await sut.reset()
    roles = Roles(
        sut=sut,
        admin=sut.client(sut.token("admin", "lhcb", [ADMIN])),
        director=sut.client(sut.token("director", "lhcb", [TRUSTED_HOST])),
        user=sut.client(sut.token("alice", "lhcb", [NORMAL_USER])),
        other_vo=sut.client(sut.token("bob", "dteam", [NORMAL_USER])),
        other_director=sut.client(sut.token("director2", "dteam", [TRUSTED_HOST])),
        legacy_pilot=sut.client(sut.token("pilot", "lhcb", [GENERIC_PILOT])),
        anonymous=sut.client(None),
    )
    yield roles
    await roles.aclose()


# --- a live server on loopback ----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class LiveServer:
    url: str
    data_dir: Path
    settings: ServerSettings
    keys: KeyStore
    ca_file: Path | None = None
    _server: uvicorn.Server | None = None
    _thread: threading.Thread | None = None

    def token(
        self,
        sub: str = "user",
        vo: str = "lhcb",
        properties: list[str] | None = None,
        lifetime: int = 3600,
    ) -> str:
        return mint_user_token(
            self.keys, sub=sub, vo=vo, properties=properties or [NORMAL_USER], lifetime=lifetime
        )

    @property
    def admin_token(self) -> str:
        return self.token("admin", "lhcb", [ADMIN])

    @property
    def director_token(self) -> str:
        return self.token("director", "lhcb", [TRUSTED_HOST])

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)


def start_live_server(
    data_dir: Path,
    *,
    tls: tuple[Path, Path] | None = None,
    port: int | None = None,
    **overrides: Any,
) -> LiveServer:
    """uvicorn in a thread of its own, on 127.0.0.1, SQLite under `data_dir`."""
    port = port or free_port()
    scheme = "https" if tls else "http"
    host = "localhost" if tls else "127.0.0.1"
    url = f"{scheme}://{host}:{port}"
    overrides.setdefault("maintenance", False)
    settings = ServerSettings(data_dir=data_dir, issuer=url, vos=TEST_VOS, **overrides)
    app = create_app(settings)
    ssl: dict[str, Any] = {"ssl_certfile": str(tls[0]), "ssl_keyfile": str(tls[1])} if tls else {}
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="on",
        **ssl,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the live server did not start")
        time.sleep(0.02)
    keys = KeyStore(settings.keyset_path, url)
    return LiveServer(
        url=url, data_dir=data_dir, settings=settings, keys=keys, _server=server, _thread=thread
    )


@pytest.fixture(scope="session")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = start_live_server(tmp_path_factory.mktemp("live-server"))
    yield server
    server.stop()


@dataclass
class TestCA:
    ca_file: Path
    cert_file: Path
    key_file: Path


@pytest.fixture(scope="session")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    """A throw-away CA and a localhost/127.0.0.1 server certificate it signed."""
    import trustme

    folder = tmp_path_factory.mktemp("test-ca")
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    ca_file, cert_file, key_file = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    ca.cert_pem.write_to_path(str(ca_file))
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    key_file.chmod(0o600)
    return TestCA(ca_file, cert_file, key_file)


@pytest.fixture(scope="session")
def live_server_tls(
    tmp_path_factory: pytest.TempPathFactory, test_ca: TestCA
) -> Iterator[LiveServer]:
    server = start_live_server(
        tmp_path_factory.mktemp("live-server-tls"), tls=(test_ca.cert_file, test_ca.key_file)
    )
    server.ca_file = test_ca.ca_file
    yield server
    server.stop()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def wait_until(predicate: Any, timeout: float = 30.0, interval: float = 0.1) -> bool:
    """Poll a condition of a real process or server; returns whether it came true in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


async def async_wait_until(predicate: Any, timeout: float = 30.0, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(interval)
    return bool(await predicate())
