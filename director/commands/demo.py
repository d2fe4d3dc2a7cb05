"""`site-director demo`: the whole thing on this machine, end to end, in about a minute.

A server on SQLite (HTTPS with a throw-away CA, on a free loopback port) runs as a subprocess
`site-director server`; `site-director token` issues the director's token; the director loads
`config.example.yaml` as it is (only the server's address, the token, the CA and the work
folder are set from here, and the cycle intervals shortened) and submits real pilots to the
local CE. The pilots exchange their secrets for tokens, send their logs, report their status
and end. A live table follows their statuses; a summary by status and a few of their log lines
close the demo.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import ipaddress
import logging
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from rich.live import Live

from director.client import LIVE_STATUSES
from director.commands.common import console, quiet_http_logs, table
from director.config import load_config
from director.daemon import client_for
from director.errors import ConfigError, DirectorError
from director.loop import Director
from director.render import example_config_path
from server.models import PilotStatus, ScalarSearch, SearchParams, SortSpec, SummaryParams

STATUSES = [s.value for s in PilotStatus]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="end-to-end demo: server on SQLite + local CE, real pilots")
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help="configuration to demo (default: the packaged config.example.yaml)",
    )
    p.add_argument("--cycles", type=int, default=2, help="submission cycles (default 2)")
    p.add_argument(
        "--timeout",
        type=float,
        default=180.0,
        help="seconds to wait for the pilots to end (default 180)",
    )
    p.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="keep everything in this folder (default: a temporary one, removed)",
    )
    p.add_argument(
        "--serve",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="keep the server up after the summary, for the pilot monitor, until Ctrl-C "
        "(default: when run from a terminal)",
    )
    p.add_argument("--verbose", "-v", action="store_true", help="log every cycle as well")
    p.set_defaults(func=main)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def make_test_ca(folder: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and a certificate for 127.0.0.1 it signed: (ca, cert, key) PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "site-director demo CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    ca_file, cert_file, key_file = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    ca_file.write_bytes(ca.public_bytes(pem))
    cert_file.write_bytes(cert.public_bytes(pem))
    key_file.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_file.chmod(0o600)
    return ca_file, cert_file, key_file


def _site_director(*args: str) -> list[str]:
    return [sys.executable, "-m", "site_director", *args]


def _token(data_dir: Path, issuer: str, sub: str, prop: str) -> str:
    out = subprocess.run(
        _site_director(
            "token",
            "--data-dir",
            str(data_dir),
            "--sub",
            sub,
            "--vo",
            "lhcb",
            "--property",
            prop,
            "--lifetime",
            "7200",
            "--issuer",
            issuer,
        ),
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return out.stdout.strip()


def _wait_healthy(url: str, ca: Path, server: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise DirectorError(f"the demo server exited with code {server.returncode}")
        try:
            if httpx.get(f"{url}/api/health", verify=str(ca), timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise DirectorError("the demo server did not become healthy in time")


async def _counts(director: Director) -> dict[str, int]:
    assert director.client is not None
    rows = await director.client.summary(SummaryParams(grouping=["Status"]))
    return {str(r["Status"]): int(r["count"]) for r in rows}


@dataclass
class DemoServer:
    process: subprocess.Popen[bytes]
    url: str
    ca: Path
    token_file: Path
    admin_file: Path

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_server(base: Path) -> DemoServer:
    """`site-director server` on a free loopback port over HTTPS, and two tokens for it."""
    data_dir = base / "server"
    data_dir.mkdir(parents=True, exist_ok=True)
    ca, cert, key = make_test_ca(base)
    port = _free_port()
    url = f"https://127.0.0.1:{port}"
    with (base / "server.log").open("wb") as server_log:
        process = subprocess.Popen(
            _site_director(
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--data-dir",
                str(data_dir),
                "--vo",
                "lhcb",
                "--tls-cert",
                str(cert),
                "--tls-key",
                str(key),
            ),
            stdout=server_log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        _wait_healthy(url, ca, process, 60)
        token_file = base / "director.token"
        token_file.write_text(_token(data_dir, url, "demo-director", "TrustedHost") + "\n")
        token_file.chmod(0o600)
        admin_file = base / "admin.token"
        admin_file.write_text(_token(data_dir, url, "demo-admin", "ServiceAdministrator") + "\n")
        admin_file.chmod(0o600)
    except BaseException:
        process.terminate()
        process.wait(timeout=15)
        raise
    return DemoServer(process, url, ca, token_file, admin_file)


async def _demo(args: argparse.Namespace, base: Path, server: DemoServer) -> int:
    out = console()
    out.print(f"[bold]site-director demo[/] in {base}: server on {server.url} (SQLite)")
    config_path = args.config or example_config_path()
    settings = load_config(
        config_path,
        {
            "server": {
                "url": server.url,
                "token_file": str(server.token_file),
                "ca_bundle": str(server.ca),
            },
            "director": {
                "work_dir": str(base / "director"),
                "submission_interval_seconds": 2,
                "monitoring_interval_seconds": 1,
                "name": "demo-director",
            },
        },
    )
    local = [
        r.key for r in settings.queues() if r.enabled and getattr(r.entry.ce, "kind", "") == "local"
    ]
    skipped = [r.key for r in settings.queues() if r.key not in local and r.enabled]
    if not local:
        raise ConfigError(f"{config_path}: no enabled queue on a local CE to demo")
    director = Director(settings, client=client_for(settings))
    director.queues = [r for r in director.queues if r.key in local]
    out.print(
        f"config {config_path}: local queues {local}"
        + (f"; not demoed (no such CE here): {skipped}" if skipped else "")
    )
    problems = director.check()
    if problems:
        raise DirectorError("; ".join(problems))
    try:
        submitted = await _follow(director, args, out)
        await _summary(director, settings, server.admin_file, submitted, out)
    finally:
        await director.close()
        if director.client is not None:
            await director.client.aclose()
    return 0


def _progress(counts: dict[str, int], submitted: int, cycle: str) -> Any:
    return table(
        f"pilots by status ({cycle}; submitted {submitted})",
        STATUSES,
        [[counts.get(s, 0) for s in STATUSES]],
    )


async def _follow(director: Director, args: argparse.Namespace, out: Any) -> int:
    submitted = 0
    interval = director.settings.director.monitoring_interval_seconds
    with Live(_progress({}, 0, "starting"), console=out, refresh_per_second=4) as live:
        for cycle in range(args.cycles):
            outcomes = await director.run_cycle()
            submitted += sum(o.submitted for o in outcomes)
            for o in outcomes:
                if o.error:
                    out.print(f"[red]{o.queue}: {o.error}[/]")
            await director.monitor_cycle()
            live.update(
                _progress(
                    await _counts(director),
                    submitted,
                    f"submission cycle {cycle + 1}/{args.cycles}",
                )
            )
            await asyncio.sleep(director.settings.director.submission_interval_seconds)
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            await director.monitor_cycle()
            counts = await _counts(director)
            live.update(_progress(counts, submitted, "monitoring"))
            if not any(counts.get(s, 0) for s in LIVE_STATUSES):
                break
            await asyncio.sleep(interval)
    out.print()
    return submitted


async def _summary(
    director: Director, settings: Any, admin_file: Path, submitted: int, out: Any
) -> None:
    counts = await _counts(director)
    out.print(
        table(
            f"summary: {submitted} pilots submitted",
            ["status", "pilots"],
            [[s, counts[s]] for s in STATUSES if counts.get(s)],
        )
    )
    from director.client import ServerClient, TokenSource

    async with ServerClient(
        str(settings.server.url), TokenSource(admin_file), ca_bundle=settings.server.ca_bundle
    ) as admin:
        try:
            latest = await admin.search_logs(
                SearchParams(sort=[SortSpec(parameter="TimeStamp", direction="desc")]),
                per_page=1,
            )
            if not latest:
                out.print("(no pilot logs stored)")
                return
            stamp = str(latest[0]["PilotStamp"])
            lines = await admin.search_logs(
                SearchParams(
                    search=[ScalarSearch(parameter="PilotStamp", operator="eq", value=stamp)],
                    sort=[SortSpec(parameter="TimeStamp", direction="asc")],
                ),
                per_page=40,
            )
        except DirectorError as exc:
            out.print(f"(no pilot logs: {exc})")
            return
    rows = [
        [
            str(r.get("TimeStamp", ""))[11:23],
            r.get("Severity", ""),
            r.get("Scope", ""),
            str(r.get("Message", ""))[:110],
        ]
        for r in lines
    ]
    out.print(
        table(
            f"the log of pilot {stamp}, as the server stores it",
            ["time", "severity", "scope", "message"],
            rows,
        )
    )


def _print_monitor(server: DemoServer, out: Any) -> None:
    """Where to see the same pilots in a browser; the token stays in its file, off the screen."""
    out.print(
        f"[bold]pilot monitor:[/] {server.url}/monitor\n"
        f"  log in with the administrator token in {server.admin_file}\n"
        f"  (HTTPS with the demo's own CA, {server.ca}: the browser will ask you to accept it)"
    )


def _serve_until_interrupted(server: DemoServer, out: Any) -> None:
    out.print("the server stays up for the monitor; Ctrl-C stops it")
    try:
        server.process.wait()
    except KeyboardInterrupt:
        out.print("stopping")


def main(args: argparse.Namespace) -> int:
    quiet_http_logs()
    if not args.verbose:  # the live table says it all; keep warnings and errors
        logging.getLogger("director").setLevel(logging.WARNING)
    keep = args.dir is not None
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
        base = args.dir.resolve()
    else:
        base = Path(tempfile.mkdtemp(prefix="site-director-demo-"))
    try:
        server = start_server(base)
        try:
            code = asyncio.run(_demo(args, base, server))
            serve = (
                args.serve if args.serve is not None else sys.stdin.isatty() and sys.stdout.isatty()
            )
            if code == 0 and serve:  # the address and token file only while they exist
                _print_monitor(server, console())
                _serve_until_interrupted(server, console())
            return code
        finally:
            server.stop()
    finally:
        if not keep:
            shutil.rmtree(base, ignore_errors=True)
