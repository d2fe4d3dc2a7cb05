"""The DiracX 0.7.0 server as a baseline: installed, configured and started by this script.

Why: every comparison in `bench/` is a ratio measured in the same run on the same machine,
so the baseline must be started by the benchmark itself, not quoted from elsewhere.

What it does (facts read from the diracx 0.7.0 packages):
- a throw-away virtual environment OUTSIDE the repository (default
  ~/.cache/site-director-bench/diracx-venv) with diracx-routers==0.7.0, diracx-cli==0.7.0,
  uvicorn and aiosqlite, from PyPI;
- a configuration git repository made with `dirac internal generate-cs`, `add-vo`,
  `add-group` and `add-user` (DIRACX_CONFIG_BACKEND_URL=git+file://...);
- a signing key set made with `python -m diracx.logic rotate-jwk` (Ed25519), given as
  DIRACX_SERVICE_AUTH_TOKEN_KEYSTORE=file://...; issuer, Fernet state key, allowed redirects;
- SQLite files for AuthDB and PilotAgentsDB (DIRACX_DB_URL_*), tables from
  `python -m diracx.db init-sql`, then WAL mode set on the files (persistent), as ours uses;
- jobs and RSS routers disabled (DIRACX_SERVICE_{JOBS,RSS}_ENABLED=false), so only auth,
  pilots, config, health and .well-known are mounted;
- `uvicorn --factory diracx.routers:create_app`, one worker, no access log; it answers 503
  for a few seconds while its configuration loads, which `start()` waits out;
- tokens signed directly with its key set, by DiracX's own `_sign_token_payload`, in its venv.

Run alone: `.venv/bin/python bench/diracx_baseline.py` starts it, registers one pilot with an
admin token, searches it back, and stops.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path

import httpx
from harness import ServerProcess, free_port

PACKAGES = ["diracx-routers==0.7.0", "diracx-cli==0.7.0", "uvicorn", "aiosqlite"]
DEFAULT_VENV = Path.home() / ".cache" / "site-director-bench" / "diracx-venv"
VO = "lhcb"

SIGN_SCRIPT = r"""
import json, sys, time, uuid
from diracx.core.settings import AuthSettings
from diracx.logic.auth.token import _sign_token_payload
spec = json.loads(sys.argv[1])
now = int(time.time())
claims = {
    "sub": spec["sub"], "vo": spec["vo"], "iss": spec["iss"], "iat": now,
    "exp": now + spec["lifetime"], "jti": str(uuid.uuid4()),
    "dirac_properties": spec["properties"], "dirac_group": spec["group"],
    "preferred_username": spec["sub"], "dirac_policies": {},
}
print(_sign_token_payload(claims, AuthSettings()))
"""


def ensure_venv(venv: Path = DEFAULT_VENV) -> Path:
    """Create the baseline's venv once; a marker file names what it holds."""
    marker = venv / ".site-director-bench"
    if marker.exists() and marker.read_text() == " ".join(PACKAGES):
        return venv
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", *PACKAGES],
        check=True,
    )
    marker.write_text(" ".join(PACKAGES))
    return venv


@dataclass
class DiracX:
    """A configured (not yet started) DiracX 0.7.0 installation."""

    venv: Path
    work: Path
    port: int
    env: dict[str, str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def run(self, *args: str) -> str:
        return subprocess.run(
            [*args], check=True, capture_output=True, text=True, env=self.env
        ).stdout

    def token(
        self,
        *,
        sub: str = "bench-admin",
        properties: tuple[str, ...] = ("ServiceAdministrator", "NormalUser"),
        group: str = "admin",
        lifetime: int = 24 * 3600,
    ) -> str:
        spec = {
            "sub": sub,
            "vo": VO,
            "iss": self.url,
            "properties": list(properties),
            "group": group,
            "lifetime": lifetime,
        }
        return self.run(
            str(self.venv / "bin" / "python"), "-c", SIGN_SCRIPT, json.dumps(spec)
        ).strip()

    def start(self) -> ServerProcess:
        server = ServerProcess(
            "diracx-0.7.0",
            [
                str(self.venv / "bin" / "uvicorn"),
                "--factory",
                "diracx.routers:create_app",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--no-access-log",
                "--log-level",
                "warning",
            ],
            url=self.url,
            env=self.env,
            log_path=self.work / "server.log",
            cwd=self.work,
        )
        # 503 while the config loads; the pilots router needs config and both DBs
        server.wait_ready("/api/health/ready")
        _wait_pilots_ready(self.url, self.token())
        return server


def _wait_pilots_ready(url: str, token: str, timeout: float = 120.0) -> None:
    """The readiness probe can pass before the pilots router's config is loaded: poll a real
    call until it stops answering 503."""
    start = time.monotonic()
    while True:
        try:
            resp = httpx.post(
                url + "/api/pilots/summary",
                json={"grouping": ["Status"]},
                headers={"Authorization": f"Bearer {token}"},
                timeout=10,
            )
            if resp.status_code == HTTPStatus.OK:
                return
            if resp.status_code != HTTPStatus.SERVICE_UNAVAILABLE:
                raise RuntimeError(f"DiracX pilots summary answered {resp.status_code}")
        except httpx.TransportError:
            pass
        if time.monotonic() - start > timeout:
            raise TimeoutError("DiracX still answers 503")
        time.sleep(0.3)


def configure(
    work: Path, *, venv: Path = DEFAULT_VENV, port: int | None = None, wal: bool = True
) -> DiracX:
    """Make the config repo, key set and databases under `work` (fresh, empty directory)."""
    work.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    bin_ = venv / "bin"
    repo = work / "cs"
    jwks = work / "jwks.json"
    base_env: Mapping[str, str] = {
        k: v for k, v in os.environ.items() if not k.startswith(("DIRACX_", "SITE_DIRECTOR_"))
    }
    env = {
        **base_env,
        "PATH": f"{bin_}:{base_env.get('PATH', '/usr/bin:/bin')}",
        "VIRTUAL_ENV": str(venv),
        "GIT_AUTHOR_NAME": "bench",
        "GIT_AUTHOR_EMAIL": "bench@localhost",
        "GIT_COMMITTER_NAME": "bench",
        "GIT_COMMITTER_EMAIL": "bench@localhost",
        "DIRACX_CONFIG_BACKEND_URL": f"git+file://{repo}",
        "DIRACX_DB_URL_AUTHDB": f"sqlite+aiosqlite:///{work / 'auth.db'}",
        "DIRACX_DB_URL_PILOTAGENTSDB": f"sqlite+aiosqlite:///{work / 'pilots.db'}",
        "DIRACX_SERVICE_AUTH_TOKEN_KEYSTORE": f"file://{jwks}",
        "DIRACX_SERVICE_AUTH_TOKEN_ISSUER": f"http://127.0.0.1:{port}",
        "DIRACX_SERVICE_AUTH_STATE_KEY": base64.urlsafe_b64encode(os.urandom(32)).decode(),
        "DIRACX_SERVICE_AUTH_ALLOWED_REDIRECTS": json.dumps(
            [f"http://127.0.0.1:{port}/docs/oauth2-redirect"]
        ),
        "DIRACX_SERVICE_JOBS_ENABLED": "false",
        "DIRACX_SERVICE_RSS_ENABLED": "false",
    }
    dx = DiracX(venv=venv, work=work, port=port, env=env)
    cs = f"git+file://{repo}"
    dirac = str(bin_ / "dirac")
    dx.run(dirac, "internal", "generate-cs", cs)
    dx.run(
        dirac, "internal", "add-vo", cs, "--vo", VO,
        "--idp-url", "https://idp.invalid", "--idp-client-id", "bench",
    )  # fmt: skip
    dx.run(
        dirac, "internal", "add-group", cs, "--vo", VO, "--group", "admin",
        "--properties", "ServiceAdministrator", "--properties", "NormalUser",
    )  # fmt: skip
    dx.run(
        dirac, "internal", "add-user", cs, "--vo", VO, "--sub", "bench-admin",
        "--preferred-username", "bench-admin", "--group", "admin",
    )  # fmt: skip
    dx.run(str(bin_ / "python"), "-m", "diracx.logic", "rotate-jwk", "--jwks-path", str(jwks))
    dx.run(str(bin_ / "python"), "-m", "diracx.db", "init-sql")
    if wal:
        for name in ("auth.db", "pilots.db"):
            with sqlite3.connect(work / name) as conn:
                conn.execute("PRAGMA journal_mode=WAL")
    return dx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV)
    parser.add_argument("--work", type=Path, help="working directory (default: a temp dir)")
    args = parser.parse_args()
    venv = ensure_venv(args.venv)
    work = args.work or Path(tempfile.mkdtemp(prefix="diracx-bench-"))
    dx = configure(work, venv=venv)
    with dx.start() as server:
        token = dx.token()
        headers = {"Authorization": f"Bearer {token}"}
        resp = httpx.post(
            dx.url + "/api/pilots/",
            json={"pilot_stamp": "baseline-check", "vo": VO},
            headers=headers,
        )
        print("register:", resp.status_code)
        resp = httpx.post(dx.url + "/api/pilots/search", json={}, headers=headers)
        print("search:", resp.status_code, resp.json())
        print(f"DiracX 0.7.0 at {dx.url}, pid {server.pid}, work dir {work}")


if __name__ == "__main__":
    main()
