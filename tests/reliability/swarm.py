"""A `site-director server` process on a fixed loopback port, and a swarm of simulated pilots
(async httpx clients) that exchange their secrets, send logs in batches and update their
status, counting every line the server acknowledged.

Shared by the server-restart, database-outage and load tests and by
`bench/reliability_report.py`. A pilot client behaves like the wrapper: a batch it could not
deliver (connection refused, reset, 5xx, 429) is sent again, unchanged, until the server
acknowledges it with 204; only then are its lines counted as acknowledged.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any

import httpx

from server.identity import ADMIN, TRUSTED_HOST, mint_user_token
from server.keys import KeyStore

SITE_DIRECTOR = Path(sys.executable).parent / "site-director"
RETRY_PAUSE = 0.2


class ServerProc:
    """`site-director server` as a child process; killed and started again by the tests."""

    def __init__(
        self,
        data_dir: Path,
        port: int,
        *,
        db_url: str | None = None,
        env: Mapping[str, str] | None = None,
        vos: Sequence[str] = ("lhcb", "dteam"),
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.port = port
        self.db_url = db_url
        self.tls = tls
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
        self.env = {**os.environ, **(env or {})}
        self.vos = list(vos)
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        data_dir.mkdir(parents=True, exist_ok=True)

    def start(self, timeout: float = 90.0, verify: Any = True) -> None:
        cmd = [str(SITE_DIRECTOR), "server", "--host", "127.0.0.1", "--port", str(self.port)]
        cmd += ["--data-dir", str(self.data_dir), "--log-level", "warning"]
        if self.db_url:
            cmd += ["--db", self.db_url]
        for vo in self.vos:
            cmd += ["--vo", vo]
        if self.tls:
            cmd += ["--tls-cert", str(self.tls[0]), "--tls-key", str(self.tls[1])]
        log = (self.data_dir / f"server-{self.starts}.log").open("wb")
        self.process = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        self.starts += 1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}")
            try:
                if (
                    httpx.get(self.url + "/api/health", timeout=2, verify=verify).status_code
                    == HTTPStatus.OK
                ):
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError("the server did not answer in time")

    def kill(self, sig: signal.Signals = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def token(self, properties: list[str], sub: str = "reliability", vo: str = "lhcb") -> str:
        keys = KeyStore(self.data_dir / "jwks.json", self.url)
        return mint_user_token(keys, sub=sub, vo=vo, properties=properties, lifetime=3600)

    @property
    def admin_token(self) -> str:
        return self.token([ADMIN], "admin")

    @property
    def director_token(self) -> str:
        return self.token([TRUSTED_HOST], "director")


# --- pilots -----------------------------------------------------------------------------------


@dataclass
class Pilot:
    stamp: str
    secret: str
    token: str = ""


@dataclass
class Stats:
    """What the swarm did, as the clients saw it."""

    acked: set[str] = field(default_factory=set)
    requests: int = 0
    latencies: dict[str, list[float]] = field(default_factory=dict)
    retried: int = 0
    throttled: int = 0
    errors: list[str] = field(default_factory=list)

    def note(self, kind: str, seconds: float) -> None:
        self.requests += 1
        self.latencies.setdefault(kind, []).append(seconds)


async def register(
    http: httpx.AsyncClient, director_token: str, n: int, site: str, chunk: int = 1000
) -> list[Pilot]:
    """Register n pilots with one bound secret each, in bulk (as the director does)."""
    pilots: list[Pilot] = []
    for start in range(0, n, chunk):
        stamps = [secrets.token_hex(16) for _ in range(min(chunk, n - start))]
        r = await http.post(
            "/api/pilots/bulk",
            headers={"Authorization": f"Bearer {director_token}"},
            json={
                "vo": "lhcb",
                "mint_secrets": True,
                "pilots": [
                    {"pilot_stamp": s, "grid_site": site, "destination_site": "ce", "queue": "q"}
                    for s in stamps
                ],
            },
            timeout=120,
        )
        r.raise_for_status()
        pilots += [Pilot(m["pilot_stamp"], m["pilot_secret"]) for m in r.json()["secrets"]]
    return pilots


def _now() -> str:
    return datetime.now(UTC).isoformat()


async def _send(
    http: httpx.AsyncClient,
    stats: Stats,
    kind: str,
    method: str,
    path: str,
    *,
    body: Any,
    token: str | None,
    ok: int,
    stop_at: float,
    throttled_until: float | None = None,
) -> httpx.Response | None:
    """One request, retried unchanged until it succeeds (or `stop_at` passes): connection
    errors, 5xx and 429 are retried (429 after its Retry-After, and only until
    `throttled_until`: a throttled pilot whose time is up stops); any other answer is an
    error of the run."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    while True:
        started = time.perf_counter()
        try:
            r = await http.request(method, path, json=body, headers=headers, timeout=30)
        except httpx.TransportError:
            stats.retried += 1
            if time.monotonic() > stop_at:
                return None
            await asyncio.sleep(RETRY_PAUSE)
            continue
        stats.note(kind, time.perf_counter() - started)
        if r.status_code == ok:
            return r
        if r.status_code == HTTPStatus.TOO_MANY_REQUESTS:
            stats.throttled += 1
            if throttled_until is not None and time.monotonic() > throttled_until:
                return None
            await asyncio.sleep(min(float(r.headers.get("Retry-After", "1")), 5.0))
        elif r.status_code >= HTTPStatus.INTERNAL_SERVER_ERROR:
            stats.retried += 1
            await asyncio.sleep(RETRY_PAUSE)
        else:
            stats.errors.append(f"{kind}: {r.status_code} {r.text[:200]}")
            return None
        if time.monotonic() > stop_at:
            return None


async def exchange(http: httpx.AsyncClient, pilot: Pilot, stats: Stats, stop_at: float) -> bool:
    r = await _send(
        http,
        stats,
        "exchange",
        "POST",
        "/api/auth/secret-exchange",
        body={"pilot_stamp": pilot.stamp, "pilot_secret": pilot.secret},
        token=None,
        ok=HTTPStatus.OK,
        stop_at=stop_at,
    )
    if r is None:
        return False
    pilot.token = r.json()["access_token"]
    return True


async def run_pilot(
    http: httpx.AsyncClient,
    pilot: Pilot,
    director_token: str,
    stats: Stats,
    *,
    until: float,
    batch: int,
    pause: float = 0.0,
    status_every: int = 4,
) -> None:
    """Exchange the secret, then send batches of `batch` lines until `until` (monotonic),
    with a status update (the director's PATCH) every `status_every` batches."""
    grace = until + 120  # a batch in flight when time is up is still delivered
    if not await exchange(http, pilot, stats, grace):
        stats.errors.append(f"{pilot.stamp}: no token")
        return
    seq = 0
    while time.monotonic() < until:
        ids = [f"{pilot.stamp}.{seq}.{k}" for k in range(batch)]
        lines = [
            {"timestamp": _now(), "severity": "INFO", "message": f"line {i} of the pilot log"}
            for i in ids
        ]
        r = await _send(
            http,
            stats,
            "logs",
            "POST",
            "/api/pilots/internal/message",
            body={"lines": lines},
            token=pilot.token,
            ok=HTTPStatus.NO_CONTENT,
            stop_at=grace,
            throttled_until=until,
        )
        if r is not None:
            stats.acked.update(ids)
        if seq % status_every == 0:
            status = "Running" if seq else "Waiting"
            await _send(
                http,
                stats,
                "status",
                "PATCH",
                "/api/pilots/metadata",
                body={pilot.stamp: {"Status": status}},
                token=director_token,
                ok=HTTPStatus.NO_CONTENT,
                stop_at=grace,
            )
        seq += 1
        if pause:
            await asyncio.sleep(pause)


async def stored_lines(
    http: httpx.AsyncClient, admin_token: str, stamps: Sequence[str], per_page: int = 10_000
) -> list[str]:
    """The ids of every stored line of these pilots (duplicates kept), via the search API."""
    found: list[str] = []
    for start in range(0, len(stamps), 100):
        chunk = list(stamps[start : start + 100])
        page = 1
        while True:
            r = await http.post(
                "/api/pilots/search/logs",
                params={"page": page, "per_page": per_page},
                headers={"Authorization": f"Bearer {admin_token}"},
                json={"search": [{"parameter": "PilotStamp", "operator": "in", "values": chunk}]},
                timeout=120,
            )
            if r.status_code == HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE:
                break
            r.raise_for_status()
            rows = r.json()
            found += [str(row["Message"]).split()[1] for row in rows]
            if len(rows) < per_page:
                break
            page += 1
    return found


def percentiles(values: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99 in milliseconds (nearest rank); pure."""
    if not values:
        return {"p50_ms": 0.0, "p95_ms": 0.0, "p99_ms": 0.0}
    ordered = sorted(values)

    def rank(q: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))] * 1000

    return {"p50_ms": rank(0.50), "p95_ms": rank(0.95), "p99_ms": rank(0.99)}


async def restart_under_load(
    server: ServerProc, *, pilots: int, batch: int, restarts: list[signal.Signals], gap: float
) -> tuple[Stats, int, list[str]]:
    """Start the swarm, kill and restart the server once per entry of `restarts` with `gap`
    seconds of load between, then let the swarm run for `gap` more; returns the stats, the
    number of lines acknowledged before the last restart and the stored line ids."""
    async with httpx.AsyncClient(base_url=server.url) as http:
        swarm = await register(http, server.director_token, pilots, "Restart.Test.org")
        stats = Stats()
        until = time.monotonic() + gap * (len(restarts) + 1) + 60  # ended by `stop` below

        async def pilot_task(p: Pilot) -> None:
            await run_pilot(
                http, p, server.director_token, stats, until=until, batch=batch, pause=0.05
            )

        tasks = [asyncio.create_task(pilot_task(p)) for p in swarm]
        acked_before_last = 0
        for sig in restarts:
            await asyncio.sleep(gap)
            await asyncio.to_thread(server.kill, sig)
            acked_before_last = len(stats.acked)
            await asyncio.sleep(0.5)  # clients meet a closed port
            await asyncio.to_thread(server.start)
        await asyncio.sleep(gap)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        stored = await stored_lines(http, server.admin_token, [p.stamp for p in swarm])
        return stats, acked_before_last, stored
