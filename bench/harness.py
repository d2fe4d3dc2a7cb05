"""Shared parts of the benchmark scripts: server processes, their CPU and memory, wrk and an
httpx load loop (the second workload: a Python client as the director is). Goals and the
machine's load: bench/goals.py.

Why this shape: the machines are small and shared, so a Python load generator measures
itself, not the server (see docs/performance.md). Throughput is driven by `wrk`
with a Lua script per operation, and the primary figure is the server's own CPU time per
request, read from /proc/<pid>/stat before and after each phase: it is fair to both sides of a
comparison whatever the client costs.

Each Lua script stops its thread after `limit` responses and prints a STOP line; the harness
then sends wrk SIGINT (wrk otherwise sleeps for its whole -d duration) and reads the JSON
summary that the script's done() prints.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from string import Template
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class ServerProcess:
    """A server started as a child process, its output in a log file, stopped on exit."""

    def __init__(
        self,
        name: str,
        cmd: Sequence[str],
        *,
        url: str,
        env: Mapping[str, str] | None = None,
        log_path: Path,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.url = url
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            list(cmd),
            env=dict(env) if env is not None else None,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(
        self, path: str, *, timeout: float = 120.0, headers: dict[str, str] | None = None
    ) -> float:
        """Poll `path` until it answers anything but 503 or a refused connection; returns
        the seconds waited (DiracX answers 503 while its configuration loads)."""
        start = time.monotonic()
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode}; see {self.log_path}"
                )
            try:
                resp = httpx.get(self.url + path, headers=headers or {}, timeout=5)
                if resp.status_code != HTTPStatus.SERVICE_UNAVAILABLE:
                    return time.monotonic() - start
            except httpx.TransportError:
                pass
            if time.monotonic() - start > timeout:
                raise TimeoutError(f"{self.name} not ready after {timeout:.0f} s")
            time.sleep(0.2)

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def peak_rss_mb(self) -> float:
        return peak_rss_mb(self.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- wrk ------------------------------------------------------------------------------------

LUA_COMMON = r"""
local limit = $limit
local prefix = "$prefix"
local issued = 0
local answered = 0
statuses = {}
local threads = {}
wrk.headers["Authorization"] = "Bearer $token"
wrk.headers["Content-Type"] = "application/json"

function setup(thread)
  table.insert(threads, thread)
end

function request()
  issued = issued + 1
  return make_request(issued)
end

function response(status, headers, body)
  answered = answered + 1
  local key = tostring(status)
  statuses[key] = (statuses[key] or 0) + 1
  if on_body then on_body(status, body) end
  if answered == limit then
    io.write("STOP\n")
    io.flush()
    wrk.thread:stop()
  end
end

function done(summary, latency, requests)
  local t = threads[1]
  local st = t:get("statuses")
  local parts = {}
  for k, v in pairs(st) do table.insert(parts, string.format('"%s":%d', k, v)) end
  io.write(string.format(
    '{"requests":%d,"issued":%d,"duration_us":%d,"p50_us":%d,"p95_us":%d,"p99_us":%d,' ..
    '"errors":%d,"statuses":{%s}}\n',
    summary.requests, t:get("issued_total"), summary.duration,
    latency:percentile(50), latency:percentile(95), latency:percentile(99),
    summary.errors.connect + summary.errors.read + summary.errors.write +
    summary.errors.timeout, table.concat(parts, ",")))
end
"""

# `issued` is a local; expose it to done() through a global updated on every request
LUA_ISSUED = r"""
local _make = make_request
make_request = function(i)
  issued_total = i
  return _make(i)
end
"""

# Request scripts that more than one benchmark sends (the same workload, so comparable figures):
# one pilot registered per request, and one stamp's Status patched per request (`prefix .. i`:
# the pilots `LUA_REGISTER` made under the same prefix).
LUA_REGISTER = r"""
function make_request(i)
  return wrk.format("POST", "/api/pilots/", nil,
    '{"pilot_stamp":"' .. prefix .. i .. '","vo":"lhcb","grid_site":"LCG.Site' .. (i % 10) ..
    '.org","destination_site":"ce' .. (i % 7) .. '.example.org"}')
end
"""

LUA_PATCH = r"""
function make_request(i)
  return wrk.format("PATCH", "/api/pilots/metadata", nil,
    '{"' .. prefix .. i .. '":{"Status":"Running","StatusReason":"bench"}}')
end
"""

# One secret exchange per request, each with the next of `creds` (stamp, secret) in turn.
_LUA_EXCHANGE = r"""
local creds = { $creds }
function make_request(i)
  local c = creds[((i - 1) % #creds) + 1]
  return wrk.format("POST", "/api/auth/secret-exchange", nil,
    '{"pilot_stamp":"' .. c[1] .. '","pilot_secret":"' .. c[2] .. '"}')
end
"""

# Appended to a script whose answers the benchmark reads (`run_wrk`'s `bodies`).
LUA_BODIES = r"""
function on_body(status, body)
  io.write("BODY " .. body .. "\n")
end
"""


def lua_list(items: list[str]) -> str:
    """Lua table items (already Lua literals), for a `{ ... }` in a script."""
    return ",".join(items)


def exchange_script(creds: list[tuple[str, str]]) -> str:
    """`_LUA_EXCHANGE` over `creds` (stamps and secrets are hex: no Lua escaping needed)."""
    return _LUA_EXCHANGE.replace("$creds", lua_list([f'{{"{s}","{p}"}}' for s, p in creds]))


@dataclass
class WrkResult:
    op: str
    requests: int
    issued: int
    seconds: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    statuses: dict[str, int]
    errors: int
    cpu_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def cpu_ms_per_request(self) -> float:
        """Server CPU over every request it served (wrk stops with a few still in flight:
        the server serves those too, so divide by what was sent)."""
        return 1000 * self.cpu_s / max(self.issued, 1)

    def as_dict(self) -> dict[str, Any]:
        return {
            "op": self.op,
            "requests": self.requests,
            "issued": self.issued,
            "seconds": round(self.seconds, 3),
            "req_per_s": round(self.rps, 1),
            "p50_ms": round(self.p50_ms, 2),
            "p95_ms": round(self.p95_ms, 2),
            "p99_ms": round(self.p99_ms, 2),
            "cpu_ms_per_request": round(self.cpu_ms_per_request, 3),
            "statuses": self.statuses,
            "errors": self.errors,
            **self.extra,
        }


def lua_script(make_request: str, *, limit: int, prefix: str, token: str) -> str:
    """A complete wrk script: the common bookkeeping plus an op's `make_request(i)`."""
    common = Template(LUA_COMMON).substitute(limit=limit, prefix=prefix, token=token)
    return common + "\n" + make_request + "\n" + LUA_ISSUED


def run_wrk(
    op: str,
    url: str,
    script: str,
    *,
    server_pid: int | None,
    connections: int = 16,
    timeout_s: int = 60,
    max_seconds: int = 600,
    bodies: list[str] | None = None,
) -> WrkResult:
    """Run wrk with one thread and `connections` connections until the script's limit of
    responses; measure the server's CPU over the phase. Lines the script prints as
    `BODY <text>` (from an `on_body(status, body)` hook) are collected into `bodies`."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
        path = f.name
    try:
        cpu0 = cpu_seconds(server_pid) if server_pid else 0.0
        proc = subprocess.Popen(
            [
                "wrk",
                "-t1",
                f"-c{connections}",
                f"-d{max_seconds}s",
                f"--timeout={timeout_s}s",
                "-s",
                path,
                url,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert proc.stdout is not None
        summary: dict[str, Any] | None = None
        output: list[str] = []
        for line in proc.stdout:
            output.append(line)
            if line.startswith("STOP"):
                proc.send_signal(signal.SIGINT)
            elif line.startswith('{"requests"'):
                summary = json.loads(line)
            elif line.startswith("BODY ") and bodies is not None:
                bodies.append(line[5:])
        proc.wait()
        time.sleep(0.3)  # let the server finish the requests still in flight
        cpu1 = cpu_seconds(server_pid) if server_pid else 0.0
    finally:
        os.unlink(path)
    if summary is None:
        raise RuntimeError(f"wrk gave no summary for {op}:\n{''.join(output)}")
    return WrkResult(
        op=op,
        requests=summary["requests"],
        issued=summary["issued"],
        seconds=summary["duration_us"] / 1e6,
        p50_ms=summary["p50_us"] / 1000,
        p95_ms=summary["p95_us"] / 1000,
        p99_ms=summary["p99_us"] / 1000,
        statuses=summary["statuses"],
        errors=summary["errors"],
        cpu_s=cpu1 - cpu0,
    )


# --- httpx ----------------------------------------------------------------------------------

# an op's request number i (from 1) -> (method, path, JSON body)
RequestMaker = Callable[[int], tuple[str, str, str]]


def run_httpx(
    op: str,
    url: str,
    make_request: RequestMaker,
    *,
    token: str,
    limit: int,
    server_pid: int | None,
    connections: int = 16,
    timeout_s: float = 60.0,
) -> WrkResult:
    """The second workload: `limit` requests from one `httpx.AsyncClient` with `connections`
    requests in flight, as a Python client (the director) sends them; the server's CPU over
    the phase as with wrk. The client itself costs more CPU than wrk and shares the cores, so
    its requests/s say little here (benchmarking.md); the CPU per request is the figure."""

    async def load() -> tuple[list[float], dict[str, int], int, float]:
        latencies: list[float] = []
        statuses: dict[str, int] = {}
        errors = 0
        counter = iter(range(1, limit + 1))
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        async with httpx.AsyncClient(
            base_url=url, headers=headers, limits=limits, timeout=timeout_s
        ) as client:

            async def worker() -> None:
                nonlocal errors
                for i in counter:
                    method, path, body = make_request(i)
                    t = time.perf_counter()
                    try:
                        resp = await client.request(method, path, content=body)
                    except httpx.TransportError:
                        errors += 1
                        continue
                    latencies.append(time.perf_counter() - t)
                    key = str(resp.status_code)
                    statuses[key] = statuses.get(key, 0) + 1

            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(connections)))
            return latencies, statuses, errors, time.perf_counter() - started

    cpu0 = cpu_seconds(server_pid) if server_pid else 0.0
    latencies, statuses, errors, seconds = asyncio.run(load())
    time.sleep(0.3)  # as after wrk
    cpu1 = cpu_seconds(server_pid) if server_pid else 0.0
    ms = [1000 * x for x in latencies]
    return WrkResult(
        op=op,
        requests=len(latencies),
        issued=limit,
        seconds=seconds,
        p50_ms=percentile(ms, 50),
        p95_ms=percentile(ms, 95),
        p99_ms=percentile(ms, 99),
        statuses=statuses,
        errors=errors,
        cpu_s=cpu1 - cpu0,
    )


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of raw samples."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def write_json(path: Path | None, payload: Any) -> None:
    text = json.dumps(payload, indent=2, sort_keys=True)
    if path is None:
        print(text)
    else:
        path.write_text(text + "\n")


# --- our server -----------------------------------------------------------------------------

SITE_DIRECTOR = str(REPO / ".venv" / "bin" / "site-director")


def start_site_director(
    data_dir: Path,
    *,
    port: int | None = None,
    db_url: str | None = None,
    vos: Sequence[str] = ("lhcb",),
    env: Mapping[str, str] | None = None,
) -> ServerProcess:
    """`site-director server` with one uvicorn worker, warnings only; waits until healthy."""
    port = port or free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    cmd = [SITE_DIRECTOR, "server", "--data-dir", str(data_dir), "--port", str(port)]
    cmd += ["--log-level", "warning"]
    for vo in vos:
        cmd += ["--vo", vo]
    if db_url:
        cmd += ["--db", db_url]
    server = ServerProcess(
        "site-director",
        cmd,
        url=f"http://127.0.0.1:{port}",
        env={**os.environ, **(env or {})},
        log_path=data_dir / "server.log",
    )
    server.wait_ready("/api/health")
    return server


def site_director_token(
    data_dir: Path,
    *,
    sub: str = "bench",
    vo: str = "lhcb",
    properties: Sequence[str] = ("ServiceAdministrator",),
    lifetime: int = 24 * 3600,
    issuer: str | None = None,
) -> str:
    cmd = [SITE_DIRECTOR, "token", "--data-dir", str(data_dir), "--sub", sub, "--vo", vo]
    cmd += ["--lifetime", str(lifetime)]
    for prop in properties:
        cmd += ["--property", prop]
    if issuer:
        cmd += ["--issuer", issuer]
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()
