"""The real ARC CE (tests/infra/arc-ce-setup.sh) and our server as its token issuer, as
session-scoped fixtures.

The set-up script writes `<dir>/arc.env` once A-REX answers. When that file is absent and this
process may run the script (root, A-REX installed), the fixture runs it (about 3 s); otherwise
the tests skip by hand and fail in CI (SITE_DIRECTOR_REQUIRE_INFRA=1).

A-REX trusts the token issuers fixed when it starts (`ARC_ISSUER`, by default
https://localhost:8444, and spares on the next ports) and fetches their JWKS over HTTPS trusting
the ARC test CA only. So the issuer fixture runs our real server on the first free of those
ports with the `localhost` certificate the script issued from the test CA.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import ssl
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import LiveServer, missing, start_live_server
from tests.director.ce.env_file import infra_dir, read_env_file

REPO = Path(__file__).resolve().parents[3]
SETUP = REPO / "tests" / "infra" / "arc-ce-setup.sh"


@dataclass(frozen=True)
class ARCInfra:
    url: str
    queue: str
    ca_file: Path
    user_cert: Path
    user_key: Path
    issuers: tuple[str, ...]
    """Issuer URLs A-REX trusts, the preferred one first."""
    server_cert: Path
    server_key: Path
    session_dir: Path


def arc_env_file() -> Path:
    base = os.environ.get("ARC_INFRA_DIR") or infra_dir("arc")
    return Path(base) / "arc.env"


def _answers(env: dict[str, str]) -> str | None:
    """None when A-REX answers an authenticated REST call, else why not."""
    try:
        context = ssl.create_default_context(cafile=env["ARC_CA_FILE"])
        context.load_cert_chain(env["ARC_USER_CERT"], env["ARC_USER_KEY"])
        response = httpx.get(env["ARC_REST_URL"] + "/info", verify=context, timeout=10)
    except OSError as exc:
        return f"cannot use the test credentials: {exc}"
    except httpx.HTTPError as exc:
        return f"A-REX at {env['ARC_URL']} does not answer: {exc}"
    if response.status_code != 200:
        return f"A-REX at {env['ARC_URL']} answered {response.status_code}"
    return None


@pytest.fixture(scope="session")
def arc_infra() -> ARCInfra:
    env_file = arc_env_file()
    runnable = os.geteuid() == 0 and shutil.which("arched", path="/usr/sbin:/usr/bin")
    if not env_file.is_file() or (runnable and _answers(read_env_file(env_file))):
        if not runnable:
            missing(f"no ARC CE: {env_file} absent (run `sudo {SETUP.relative_to(REPO)}`)")
        done = subprocess.run([str(SETUP)], capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            missing(f"{SETUP.name} failed: {done.stderr.strip()[-500:]}")
    env = read_env_file(env_file)
    problem = _answers(env)
    if problem:
        missing(f"{problem} (restart it with `sudo {SETUP.relative_to(REPO)}`)")
    return ARCInfra(
        url=env["ARC_URL"],
        queue=env.get("ARC_QUEUE", "fork"),
        ca_file=Path(env["ARC_CA_FILE"]),
        user_cert=Path(env["ARC_USER_CERT"]),
        user_key=Path(env["ARC_USER_KEY"]),
        issuers=(env["ARC_ISSUER"], *env.get("ARC_SPARE_ISSUERS", "").strip('"').split()),
        server_cert=Path(env["ARC_SERVER_CERT"]),
        server_key=Path(env["ARC_SERVER_KEY"]),
        session_dir=Path(env["ARC_SESSION_DIR"]),
    )


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture(scope="session")
def arc_issuer(
    arc_infra: ARCInfra, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """Our real server over HTTPS at an issuer URL A-REX trusts: the first whose port is free
    (test sessions running side by side each take one)."""
    tried = []
    for issuer in arc_infra.issuers:
        port = urlsplit(issuer).port
        if port is None:
            continue
        if not _port_free(port):
            tried.append(f"{port} in use")
            continue
        try:
            server = start_live_server(
                tmp_path_factory.mktemp("arc-issuer"),
                tls=(arc_infra.server_cert, arc_infra.server_key),
                port=port,
            )
        except (RuntimeError, OSError) as exc:
            tried.append(f"{port}: {exc}")
            continue
        if server.url.rstrip("/") != issuer.rstrip("/"):
            server.stop()
            tried.append(f"{port}: serves {server.url}, A-REX trusts {issuer}")
            continue
        server.ca_file = arc_infra.ca_file
        yield server
        server.stop()
        return
    missing(f"cannot serve a token issuer A-REX trusts: {'; '.join(tried)}")


async def poll(
    check: Callable[[], Awaitable[bool]], *, timeout: float = 120.0, interval: float = 1.0
) -> bool:
    """Poll a real CE until `check` holds; the CE's own pace decides, not the test."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if await check():
            return True
        await asyncio.sleep(interval)
    return await check()
