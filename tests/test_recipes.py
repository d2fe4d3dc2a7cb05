"""The operator recipes of docs/operations.md, run as written.

The blocks are read from the page itself (each marked by `<!-- recipe:NAME -->` on the line
before its fence), so the page and this test cannot drift apart. Only the listed paths, the
port and the director's user are substituted; every line of a block is either run or named in
NOT_RUN with the reason. The server runs as the page starts it: on 0.0.0.0, over TLS (a
throw-away CA), on a free port, with the page's `--issuer`, which is no address it listens on.
The director's token printed by the token recipe must then be accepted: `site-director status`
with the page's configuration succeeds. The systemd part is checked by rendering the unit (its
content is tests/director's business; here: that the recipe renders one for the page's config).
"""

from __future__ import annotations

import getpass
import os
import re
import shutil
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path

import httpx
import pytest

from tests.conftest import TestCA as CA
from tests.conftest import free_port, wait_until

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "operations.md"
BIN = Path(sys.executable).parent
MARKER = re.compile(r"^<!-- recipe:([a-z-]+) -->\n```(\w*)\n(.*?)^```", re.M | re.S)

#: What the page names -> what this test uses, applied to every block (longest first).
PATHS = {
    "/opt/site-director/bin/site-director": "{bin}/site-director",
    "/var/lib/site-director-server": "{tmp}/server-data",
    "/var/lib/site-director": "{tmp}/director-work",
    "/etc/systemd/system/": "{tmp}/systemd/",
    "/etc/site-director/": "{tmp}/etc/",
    "/opt/dirac-pilot/": "{tmp}/dirac-pilot/",
    "/tmp/plan": "{tmp}/plan",
    "hostkey.pem": "{tls_key}",
    "host.pem": "{tls_cert}",
}
#: Per block: the port the server listens on, where the director reaches it, who owns the token.
PER_BLOCK = {
    "server": {"--port 8000": "--port {port}"},
    "director-config": {"https://site-director.example.org:8000": "https://localhost:{port}"},
    "token": {"chown dirac ": "chown {user} "},
}
#: Lines of the page that this test does not run, and why.
NOT_RUN = {
    "site-director once --config": "a real cycle needs the page's HTCondor-CE",
    "site-director run --config": "the daemon; `status` checks the same token and server",
    "systemctl ": "systemd is not driven by tests; the rendered unit is checked instead",
    "journalctl ": "systemd is not driven by tests",
}
#: Files the page's configuration refers to, which an operator has in place beforehand.
PREREQUISITES = (
    "etc/htcondor-ce.token",
    "dirac-pilot/Pilot/dirac-pilot.py",
    "dirac-pilot/Pilot/pilotTools.py",
    "dirac-pilot/Pilot/pilotCommands.py",
)


@dataclass
class Recipe:
    name: str
    lang: str
    text: str

    def lines(self) -> list[str]:
        """Logical shell lines: continuations joined, comments and blank lines left out."""
        joined = re.sub(r"\\\n\s*", "", self.text)
        return [ln for ln in joined.splitlines() if ln.strip() and not ln.startswith("#")]


def recipes() -> dict[str, Recipe]:
    found = {m[1]: Recipe(m[1], m[2], m[3]) for m in MARKER.finditer(PAGE.read_text())}
    names = {"server", "server-config", "token", "director-config", "director-run", "units"}
    missing = names - found.keys()
    assert not missing, f"{PAGE.name} lacks the recipe markers {sorted(missing)}"
    return found


def substituted(recipe: Recipe, values: dict[str, str]) -> Recipe:
    text = recipe.text
    for old, new in [*PATHS.items(), *PER_BLOCK.get(recipe.name, {}).items()]:
        text = text.replace(old, new.format(**values))
    return Recipe(recipe.name, recipe.lang, text)


def not_run(line: str) -> bool:
    return any(line.startswith(prefix) for prefix in NOT_RUN)


@pytest.fixture
def shell_env(tmp_path: Path) -> dict[str, str]:
    """PATH with this checkout's `site-director` first; no SITE_DIRECTOR_* of the caller."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SITE_DIRECTOR_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def sh(line: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", line],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check:
        assert done.returncode == 0, f"{line}\nexit {done.returncode}\n{done.stderr}"
    return done


@pytest.fixture
def values(tmp_path: Path, test_ca: CA) -> dict[str, str]:
    return {
        "tmp": str(tmp_path),
        "bin": str(BIN),
        "port": str(free_port()),
        "tls_cert": str(test_ca.cert_file),
        "tls_key": str(test_ca.key_file),
        "user": getpass.getuser(),
    }


@pytest.fixture
def server(
    values: dict[str, str], shell_env: dict[str, str], tmp_path: Path, test_ca: CA
) -> Iterator[str]:
    """The server recipe, running; yields its URL on loopback."""
    recipe = substituted(recipes()["server"], values)
    (line,) = recipe.lines()
    assert line.startswith("site-director server ")
    assert "--host 0.0.0.0" in line
    assert "--tls-cert" in line
    url = f"https://localhost:{values['port']}"
    trust = ssl.create_default_context(cafile=test_ca.ca_file)
    with (tmp_path / "server.log").open("wb") as log:
        process = subprocess.Popen(
            ["bash", "-c", f"exec {line}"], env=shell_env, stdout=log, stderr=subprocess.STDOUT
        )

    def healthy() -> bool:
        assert process.poll() is None, (tmp_path / "server.log").read_text()
        try:
            return httpx.get(f"{url}/api/health", verify=trust).status_code == HTTPStatus.OK
        except httpx.TransportError:
            return False

    try:
        assert wait_until(healthy, timeout=90), "the server recipe did not answer"
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_the_page_marks_every_recipe_and_the_test_knows_every_line() -> None:
    """A line added to a recipe is either run here or listed in NOT_RUN with a reason."""
    found = recipes()
    assert found["director-config"].lang == "yaml"
    for name in ("server", "token", "director-run", "units"):
        for line in found[name].lines():
            command = line.removeprefix("/opt/site-director/bin/")
            assert command.startswith(("site-director ", "chown ")) or not_run(command), line


def test_server_token_and_director_recipes_work_as_written(
    server: str, values: dict[str, str], shell_env: dict[str, str], tmp_path: Path, test_ca: CA
) -> None:
    found = {name: substituted(r, values) for name, r in recipes().items()}
    etc = tmp_path / "etc"
    etc.mkdir()
    for name in PREREQUISITES:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("# stands in for the operator's file\n")
    shutil.copy(test_ca.ca_file, etc / "server-ca.pem")  # the server's CA, as the config names

    # the director's token, printed from the server's data directory and installed
    for line in found["token"].lines():
        sh(line, shell_env)
    token_file = etc / "token"
    assert token_file.stat().st_mode & 0o777 == 0o600
    token = token_file.read_text().strip()
    assert token.count(".") == 2

    # the director's configuration, where the run and unit recipes look for it
    config = etc / "config.yaml"
    config.write_text(found["director-config"].text)
    assert str(config) in found["director-run"].text
    assert str(config) in found["units"].text

    # the token is accepted: by the API directly, and by the director
    trust = ssl.create_default_context(cafile=test_ca.ca_file)
    r = httpx.post(
        f"{server}/api/pilots/search",
        json={},
        headers={"Authorization": f"Bearer {token}"},
        verify=trust,
    )
    assert r.status_code == HTTPStatus.OK, r.text
    status = sh(f"site-director status --config {config}", shell_env, check=False)
    assert status.returncode == 0, status.stderr
    assert "LCG.Example.org" in status.stdout

    # running it: what can run here without the page's HTCondor-CE
    ran = 0
    for line in found["director-run"].lines():
        if not_run(line):
            continue
        sh(line, shell_env)
        ran += 1
    assert ran >= 1
    assert any((tmp_path / "plan").rglob("*.sh")), "the dry run wrote no wrapper"


def test_units_recipe_renders_the_unit(
    values: dict[str, str], shell_env: dict[str, str], tmp_path: Path, test_ca: CA
) -> None:
    found = {name: substituted(r, values) for name, r in recipes().items()}
    (tmp_path / "etc").mkdir()
    (tmp_path / "systemd").mkdir()
    config = tmp_path / "etc" / "config.yaml"
    config.write_text(found["director-config"].text)
    server_config = tmp_path / "etc" / "server.yaml"
    server_config.write_text(found["server-config"].text)
    for line in found["units"].lines():
        if not not_run(line):
            sh(line, shell_env)
    unit = (tmp_path / "systemd" / "site-director.service").read_text()
    assert "[Service]" in unit
    assert f"ExecStart={BIN}/site-director run --config {config}" in unit
    assert re.search(r"^User=dirac$", unit, re.M)
    assert str(tmp_path / "etc" / "token") in unit  # the token is readable inside the sandbox
    server_unit = (tmp_path / "systemd" / "site-director-server.service").read_text()
    assert f"ExecStart={BIN}/site-director server --config {server_config}" in server_unit
    assert f"ReadWritePaths={tmp_path / 'server-data'}" in server_unit
    for both in (unit, server_unit):
        assert re.search(r"^Type=notify$", both, re.M)
