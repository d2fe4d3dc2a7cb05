"""The server with several uvicorn workers on PostgreSQL: CPU per request against one worker's,
and the per-operation costs (server and database) that the capacity model is built on.

Run: `.venv/bin/python bench/workers.py [--workers 1,2] [--repeat 3]
[--database postgresql+asyncpg://postgres@127.0.0.1:5432/test] [--per-worker] [--json out.json]`

For each round and each worker count (alternating, the order flipping every round, so noise on
this shared machine hits both), a fresh database on the PostgreSQL server named by --database
and a fresh `site-director server --workers N`, driven by `wrk` (one thread, --connections,
default 8: within the server's pool of 10 connections a worker, so that the pool does not open
and close connections during a phase) with Lua scripts:

    register  POST /api/pilots/ (one pilot per request, the director's or an admin's call)
    bulk      POST /api/pilots/bulk, 1,000 pilots with minted secrets (the director's cycle)
    exchange  POST /api/auth/secret-exchange, each secret once (refresh tokens stored)
    refresh   POST /api/auth/pilot-token, each refresh token from the exchanges once
    logs      POST /api/pilots/internal/message, batches of --log-lines lines (default 20)
    patch     PATCH /api/pilots/metadata, one stamp each (Status, StatusReason)
    search    POST /api/pilots/search, a director's query: one GridSite's live pilots, page 1

Figures per operation: the server's CPU per request, summed over every process of the server
(the uvicorn master and its workers, from /proc/<pid>/stat and the children's, before and
after each phase), the PostgreSQL backends' CPU per request (the processes serving this run's
database, by their process title) and the background processes' (WAL writer, checkpointer,
background writer, autovacuum: shared with anything else using that PostgreSQL server), and
the WAL bytes per request (pg_current_wal_lsn() before and after; the whole cluster's). The
backends are sampled every 50 ms, so one that ends within a phase still counts; the number
started in a phase is reported (0 when the pool is big enough). After each round, the bytes on
disk per row of the tables that grow (PilotLogs: heap, 3 indexes, TOAST), after VACUUM.

The server's context switches are counted too (from /proc/<pid>/status): "preempted" is the
nonvoluntary ones per request, the scheduler taking a core from a server process that had work.
One worker at the default load is rarely preempted (0.05-0.15 a request) and two workers often
(3-7): two busy Python processes, PostgreSQL's backends and wrk want more than the 2 cores of
this machine. `--per-worker` gives each worker the connections one worker had (N workers get N
times --connections); a round in which a phase did not reach every worker is run again.

Goal (issue [6/6], bench/goals.py): with 2 workers, server CPU per request <= 1.15x one
worker's on each operation (medians over --repeat rounds). Printed last, each met or missed,
named with the load when it is not the default.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from goals import WORKERS_CPU_RATIO, GoalReport, check_load, machine_state, workers_cpu
from harness import (
    CLK_TCK,
    LUA_BODIES,
    LUA_PATCH,
    LUA_REGISTER,
    SITE_DIRECTOR,
    ServerProcess,
    WrkResult,
    cpu_seconds,
    exchange_script,
    free_port,
    lua_list,
    lua_script,
    median,
    run_wrk,
    site_director_token,
    write_json,
)
from rich.console import Console
from rich.table import Table

BULK = r"""
function make_request(i)
  local parts = {}
  for k = 1, 1000 do
    parts[k] = '{"pilot_stamp":"' .. prefix .. i .. '-' .. k ..
      '","grid_site":"LCG.Site' .. (k % 10) .. '.org","destination_site":"ce' .. (k % 7) ..
      '.example.org","queue":"q' .. (k % 10) .. '"}'
  end
  return wrk.format("POST", "/api/pilots/bulk", nil,
    '{"vo":"lhcb","mint_secrets":true,"pilots":[' .. table.concat(parts, ",") .. ']}')
end
"""

REFRESH = r"""
local pairs_ = { $pairs }
function make_request(i)
  local c = pairs_[((i - 1) % #pairs_) + 1]
  return wrk.format("POST", "/api/auth/pilot-token", nil,
    '{"refresh_token":"' .. c[2] .. '","pilot_stamp":"' .. c[1] .. '"}')
end
"""

LOGS = r"""
local tokens = { $tokens }
local n = $lines
local start = $start
local texts = {}
for k = 1, n do
  texts[k] = '","severity":"INFO","scope":"Pilot","message":"Line ' .. k ..
    ' of the pilot log: checking the CVMFS repository and the local disk space"}'
end
function make_request(i)
  local lines = {}
  for k = 1, n do
    local us = (i - 1) * 100000 + (k - 1) * 1000
    lines[k] = '{"timestamp":"' .. os.date("!%Y-%m-%dT%H:%M:%S", start + math.floor(us / 1000000))
      .. "." .. string.format("%06d", us % 1000000) .. 'Z' .. texts[k]
  end
  local t = tokens[((i - 1) % #tokens) + 1]
  return wrk.format("POST", "/api/pilots/internal/message",
    {["Authorization"] = "Bearer " .. t, ["Content-Type"] = "application/json"},
    '{"lines":[' .. table.concat(lines, ",") .. ']}')
end
"""

SEARCH = r"""
function make_request(i)
  return wrk.format("POST", "/api/pilots/search?page=1&per_page=100", nil,
    '{"search":[{"parameter":"GridSite","operator":"eq","value":"LCG.Site' .. (i % 10) ..
    '.org"},{"parameter":"Status","operator":"in","values":["Submitted","Running"]}]}')
end
"""

#: wrk's connections: within the pool of one worker (10), and enough to keep one worker busy
DEFAULT_CONNECTIONS = 8
OPS = ("register", "bulk", "exchange", "refresh", "logs", "patch", "search")
#: with --register-last: register once more as the round's last phase, reported without a goal
REGISTER_LAST = "register-last"
ITEMS = {"bulk": "pilot", "logs": "line"}  # the others: one item per request


# --- CPU of the server's process tree and of PostgreSQL --------------------------------------


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def tree_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of a process and its descendants, each by pid (a process gone between the
    listing and the read is left out)."""
    cpu: dict[int, float] = {}
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            cpu[p] = cpu_seconds(p)
            todo += children(p)
        except OSError:
            continue
    return cpu


def tree_switches(pid: int) -> dict[int, tuple[int, int]]:
    """Context switches of a process and its descendants, each by pid: (voluntary: the
    process waited, its event loop had nothing to do; nonvoluntary: the scheduler took the
    CPU from it while it had work, because more processes wanted to run than there were
    cores)."""
    out: dict[int, tuple[int, int]] = {}
    for p in tree_cpu(pid):
        counts: dict[str, int] = {}
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                key, _, value = line.partition(":")
                if key in ("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches"):
                    counts[key] = int(value)
        except OSError:
            continue
        out[p] = (counts["voluntary_ctxt_switches"], counts["nonvoluntary_ctxt_switches"])
    return out


def switches_delta(
    before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]]
) -> tuple[int, int]:
    """(voluntary, nonvoluntary) switches between two readings, summed over the processes."""
    waits = preempted = 0
    for pid, (v, n) in after.items():
        v0, n0 = before.get(pid, (0, 0))
        waits, preempted = waits + v - v0, preempted + n - n0
    return waits, preempted


def _postgres_processes() -> Iterator[tuple[int, str]]:
    """The PostgreSQL processes of this machine: pid and command line (NULs as spaces); one
    gone while being read is left out."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() != "postgres":
                continue
            title = (entry / "cmdline").read_text().replace("\0", " ")
        except OSError:
            continue
        yield int(entry.name), title


def postgres_cpu(database: str) -> dict[str, dict[int, float]]:
    """CPU seconds of the PostgreSQL processes, by pid: `backends` serving `database` (their
    title names it), `background` (WAL writer, checkpointer, ... : the cluster's)."""
    out: dict[str, dict[int, float]] = {"backends": {}, "background": {}}
    for pid, title in _postgres_processes():
        try:
            cpu = cpu_seconds(pid)
        except OSError:
            continue
        if f" {database} " in title:
            out["backends"][pid] = cpu
        elif title.startswith("postgres: ") and "idle" not in title and "(" not in title:
            out["background"][pid] = cpu
    return out


def reaped_cpu() -> float:
    """CPU seconds of the postmaster's ended children (cutime + cstime), all databases."""
    for pid, title in _postgres_processes():
        if title.startswith("postgres:"):
            continue  # a child; the postmaster runs under its program's path
        try:
            fields = _stat(pid)
        except OSError:
            continue
        return (int(fields[13]) + int(fields[14])) / CLK_TCK
    return 0.0


class PostgresSampler:
    """Reads `postgres_cpu` every 50 ms in a thread while a phase runs: the pool's overflow
    connections end during a phase, and a backend gone by the phase's end must still count
    (with the CPU last seen: it misses at most its last 50 ms)."""

    def __init__(self, database: str) -> None:
        self.database = database
        self.reaped0 = reaped_cpu()
        self.start = postgres_cpu(database)
        self.last = {k: dict(v) for k, v in self.start.items()}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self._sample()

    def _sample(self) -> None:
        for kind, cpu in postgres_cpu(self.database).items():
            self.last[kind].update(cpu)

    def stop(self) -> tuple[float, float, int, float]:
        """Since the start: CPU seconds of this database's backends and of the background
        processes, the backends started (the pool opening connections: each costs a fork and
        a login), and the CPU of every backend that ended, of any database (the postmaster
        reaps them: a check on what the 50 ms sampling misses, cluster-wide)."""
        self._stop.set()
        self._thread.join()
        self._sample()
        return (
            delta(self.start["backends"], self.last["backends"]),
            delta(self.start["background"], self.last["background"]),
            len(set(self.last["backends"]) - set(self.start["backends"])),
            reaped_cpu() - self.reaped0,
        )


def delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU spent between two readings: processes born in between count from zero."""
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


# --- PostgreSQL -----------------------------------------------------------------------------


def admin_dsn(url: str) -> tuple[str, str]:
    """The asyncpg DSN of --database's maintenance database and the server-side URL base."""
    parts = urlsplit(url.replace("+asyncpg", ""))
    return urlunsplit(parts), urlunsplit(parts._replace(path=""))


async def _sql(dsn: str, statement: str) -> Any:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(statement)
    finally:
        await conn.close()


def sql(dsn: str, statement: str) -> Any:
    return asyncio.run(_sql(dsn, statement))


def wal_lsn(dsn: str) -> int:
    text = sql(dsn, "SELECT pg_current_wal_lsn()::text")
    high, low = text.split("/")
    return (int(high, 16) << 32) + int(low, 16)


# --- one server -----------------------------------------------------------------------------


@dataclass
class Measured:
    result: WrkResult
    server_cpu: float
    db_cpu: float
    db_background_cpu: float
    wal_bytes: int
    workers_busy: int  # workers that spent CPU in the phase
    backends_started: int
    reaped_cpu: float
    switches: tuple[int, int]  # the server's (voluntary, nonvoluntary) context switches

    def as_dict(self, items_per_request: int) -> dict[str, Any]:
        n = max(self.result.issued, 1)
        return {
            **self.result.as_dict(),
            "items_per_request": items_per_request,
            "server_cpu_s": round(self.server_cpu, 3),
            "server_cpu_ms_per_request": round(1000 * self.server_cpu / n, 4),
            "db_cpu_ms_per_request": round(1000 * self.db_cpu / n, 4),
            "db_background_cpu_ms_per_request": round(1000 * self.db_background_cpu / n, 4),
            "wal_bytes_per_request": round(self.wal_bytes / n, 1),
            "workers_busy": self.workers_busy,
            "db_backends_started": self.backends_started,
            "db_reaped_cpu_ms_per_request": round(1000 * self.reaped_cpu / n, 4),
            "server_waits_per_request": round(self.switches[0] / n, 3),
            "server_preemptions_per_request": round(self.switches[1] / n, 3),
        }


class Bench:
    """One server (N workers) on a fresh database; runs measured phases against it."""

    def __init__(
        self,
        workers: int,
        admin: str,
        base: str,
        work: Path,
        cpus: str | None = None,
    ) -> None:
        self.workers = workers
        self.admin = admin
        self.database = f"sdbench_{os.getpid()}_{workers}w_{secrets.token_hex(2)}"
        sql(admin, f"CREATE DATABASE {self.database}")
        self.dsn = admin.rsplit("/", 1)[0] + "/" + self.database
        data = work / f"{workers}w-{secrets.token_hex(2)}"
        data.mkdir(parents=True)
        port = free_port()
        url = base.replace("postgresql://", "postgresql+asyncpg://") + "/" + self.database
        cmd = [SITE_DIRECTOR, "server", "--data-dir", str(data), "--port", str(port)]
        cmd += ["--log-level", "warning", "--vo", "lhcb", "--db", url, "--workers", str(workers)]
        if cpus:  # every process of the server on these CPUs (the workers inherit it)
            cmd = ["taskset", "-c", cpus, *cmd]
        # the maintenance stays on, as in production (every worker ticks, one runs it)
        self.server = ServerProcess(
            f"site-director x{workers}",
            cmd,
            url=f"http://127.0.0.1:{port}",
            env=dict(os.environ),
            log_path=data / "server.log",
        )
        self.server.wait_ready("/api/health")
        time.sleep(1.0)  # every worker up (the health check answered from one)
        self.token = site_director_token(
            data,
            sub="bench-director",
            properties=["TrustedHost", "ServiceAdministrator"],
            issuer=self.server.url,
        )

    def phase(
        self, op: str, lua: str, limit: int, connections: int, expect: str, prefix: str = ""
    ) -> tuple[Measured, list[str]]:
        bodies: list[str] = []
        script = lua_script(lua, limit=limit, prefix=prefix, token=self.token)
        wal0 = wal_lsn(self.admin)
        switches0 = tree_switches(self.server.pid)
        cpu0, sampler = tree_cpu(self.server.pid), PostgresSampler(self.database)
        result = run_wrk(
            op, self.server.url, script, server_pid=None, connections=connections, bodies=bodies
        )
        cpu1, (db_cpu, background_cpu, started, reaped) = tree_cpu(self.server.pid), sampler.stop()
        switches = switches_delta(switches0, tree_switches(self.server.pid))
        wal1 = wal_lsn(self.admin)
        unexpected = {k: v for k, v in result.statuses.items() if k != expect}
        if unexpected or result.errors:
            raise RuntimeError(f"{op}: unexpected answers {unexpected}, {result.errors} errors")
        busy = sum(
            1
            for pid in cpu1
            if pid != self.server.pid and cpu1[pid] - cpu0.get(pid, 0.0) > 2 / CLK_TCK
        )
        measured = Measured(
            result,
            delta(cpu0, cpu1),
            db_cpu,
            background_cpu,
            wal1 - wal0,
            busy,
            started,
            reaped,
            switches,
        )
        return measured, bodies

    def table_sizes(self) -> dict[str, dict[str, float]]:
        """Rows and on-disk bytes (heap, indexes, TOAST) of the tables that grow per pilot and
        per log line, after a VACUUM so the figures are settled (the capacity model's disk)."""
        sizes: dict[str, dict[str, float]] = {}
        sql(self.dsn, "VACUUM ANALYZE")
        for table in ("PilotLogs", "PilotAgents", "RefreshTokens", "PilotSecrets"):
            rows = int(sql(self.dsn, f'SELECT count(*) FROM "{table}"'))  # noqa: S608
            # a partitioned table (PilotLogs, migration 0008) holds nothing itself: the sum
            # over its partition tree (a plain table is a tree of one)
            size = int(
                sql(
                    self.dsn,
                    f"SELECT coalesce((SELECT sum(pg_total_relation_size(relid))"  # noqa: S608
                    f" FROM pg_partition_tree('\"{table}\"')),"
                    f" pg_total_relation_size('\"{table}\"'))",
                )
            )
            sizes[table] = {
                "rows": rows,
                "bytes": size,
                "bytes_per_row": round(size / rows, 1) if rows else 0.0,
            }
        return sizes

    def stop(self) -> None:
        self.server.stop()
        sql(self.admin, f"DROP DATABASE IF EXISTS {self.database} WITH (FORCE)")


def claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    data: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return data


def one_round(bench: Bench, args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    """Every phase once against one server; returns op -> figures."""
    out: dict[str, Any] = {}
    tag = secrets.token_hex(3)
    n = args.requests
    conns = args.connections * (bench.workers if args.per_worker else 1)

    def record(op: str, m: Measured, items: int) -> None:
        out[op] = m.as_dict(items)
        log(
            f"  {bench.workers}w {op:9} {m.result.rps:8.0f} req/s  server "
            f"{out[op]['server_cpu_ms_per_request']:6.3f} ms/req  db "
            f"{out[op]['db_cpu_ms_per_request']:6.3f} ms/req  WAL "
            f"{out[op]['wal_bytes_per_request']:8.0f} B/req  preempted "
            f"{out[op]['server_preemptions_per_request']:5.2f}/req  workers busy {m.workers_busy}  "
            f"backends started {m.backends_started}"
        )

    m, _ = bench.phase("register", LUA_REGISTER, n, conns, "201", prefix=f"r{tag}-")
    record("register", m, 1)
    bulk_requests = n // 1000 + 1  # more secrets than exchanges
    m, bodies = bench.phase("bulk", BULK + LUA_BODIES, bulk_requests, 2, "201", prefix=f"b{tag}-")
    record("bulk", m, 1000)
    creds = [
        (s["pilot_stamp"], s["pilot_secret"])
        for text in bodies
        for s in json.loads(text)["secrets"]
    ]
    m, bodies = bench.phase("exchange", exchange_script(creds[:n]) + LUA_BODIES, n, conns, "200")
    record("exchange", m, 1)
    pairs = [json.loads(b) for b in bodies]
    tokens = [(claims(p["access_token"])["pilot_stamp"], p) for p in pairs]
    table = lua_list([f'{{"{s}","{p["refresh_token"]}"}}' for s, p in tokens])
    m, _ = bench.phase("refresh", REFRESH.replace("$pairs", table), len(tokens) - 50, conns, "200")
    record("refresh", m, 1)
    access = lua_list([f'"{p["access_token"]}"' for _, p in tokens[-50:]])  # not refreshed
    lua = (
        LOGS.replace("$tokens", access)
        .replace("$lines", str(args.log_lines))
        .replace("$start", str(int(time.time())))
    )
    m, _ = bench.phase("logs", lua, n, conns, "204")
    record("logs", m, args.log_lines)
    m, _ = bench.phase("patch", LUA_PATCH, n, conns, "204", prefix=f"r{tag}-")
    record("patch", m, 1)
    m, _ = bench.phase("search", SEARCH, max(100, n // 10), conns, "206")
    record("search", m, 1)
    if args.register_last:
        m, _ = bench.phase("register", LUA_REGISTER, n, conns, "201", prefix=f"z{tag}-")
        record(REGISTER_LAST, m, 1)
    out["tables"] = bench.table_sizes()
    return out


def warm_up(bench: Bench, args: argparse.Namespace, log: Callable[[str], None]) -> None:
    """Every route once on every worker: a worker's first requests import, compile and fill
    its caches (hundreds of ms), and a phase whose connections all landed on one worker left
    the other cold, to be paid for inside a measured phase. Repeated (up to 5 times) until
    every phase of a warm-up round ran on every worker."""
    warm = argparse.Namespace(
        **{
            **vars(args),
            "requests": 300,
            "connections": 16,
            "per_worker": False,
            "register_last": False,
        }
    )
    for attempt in range(5):
        ran = one_round(bench, warm, lambda _: None)
        cold = unserved(ran, bench.workers)
        if bench.workers == 1 or not cold:
            return
        log(f"  warm-up {attempt + 1}: {', '.join(cold)} did not reach every worker; again")


#: rounds run again when a phase did not reach every worker, before giving up
ROUND_ATTEMPTS = 4


def unserved(ran: dict[str, Any], workers: int) -> list[str]:
    """The phases of a round that not every worker served (bulk aside: its few requests on
    2 connections reach one worker or two by chance). wrk opens its connections at once and
    the kernel hands each to whichever worker accepts first, so with few connections all may
    land on one worker: that phase measured one busy worker, not N."""
    return [op for op in OPS if op != "bulk" and ran[op]["workers_busy"] < workers]


def measured_round(
    workers: int, admin: str, base: str, work: Path, args: argparse.Namespace, console: Console
) -> dict[str, Any]:
    """One round on a fresh server and database, run again (a new server, so new
    connections) while a phase did not reach every worker, up to ROUND_ATTEMPTS times; the
    last attempt's phases that still did not are listed as `unserved` in the round."""
    for attempt in range(1, ROUND_ATTEMPTS + 1):
        bench = Bench(workers, admin, base, work, args.server_cpus)
        try:
            warm_up(bench, args, console.print)
            ran = one_round(bench, args, console.print)
        finally:
            bench.stop()
        ran["unserved"] = unserved(ran, workers) if workers > 1 else []
        if not ran["unserved"]:
            break
        again = "round run again" if attempt < ROUND_ATTEMPTS else "kept, marked unserved"
        console.print(f"  {', '.join(ran['unserved'])} did not reach every worker: {again}")
    return ran


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2", help="worker counts to compare (first: base)")
    parser.add_argument("--database", default="postgresql+asyncpg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; medians are reported")
    parser.add_argument("--requests", type=int, default=2000, help="requests per phase")
    parser.add_argument("--log-lines", type=int, default=20, help="lines per log batch")
    parser.add_argument(
        "--connections",
        type=int,
        default=DEFAULT_CONNECTIONS,
        help="wrk's connections (bulk: 2); at most the server's pool (10 a worker), so that "
        "the figures are the operations', not the pool's opening and closing of connections",
    )
    parser.add_argument(
        "--server-cpus",
        help="taskset's CPU list for the server (e.g. 1): with one CPU, N workers take turns "
        "instead of running at once, so the comparison shows the work each request costs, "
        "not two busy processes contending for the cores with wrk and PostgreSQL",
    )
    parser.add_argument(
        "--register-last",
        action="store_true",
        help="register once more as each round's last phase (no goal): tells whether being the "
        "first phase after the warm-up is what costs register more with 2 workers (one run: "
        "1.23x first, 1.07x last; the next: 1.35x and 1.32x; docs/performance.md)",
    )
    parser.add_argument(
        "--per-worker",
        action="store_true",
        help="--connections for each worker (N workers: N times as many), so that each worker "
        "carries the load one worker carried (docs/performance.md, Several workers)",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # stop: the servers and databases too
    if "postgresql" not in args.database:
        parser.error("--database must be a PostgreSQL URL (this bench reads its processes)")
    counts = [int(w) for w in args.workers.split(",")]
    console = Console(stderr=True, width=150)
    before = check_load(console)
    admin, base = admin_dsn(args.database)
    work = Path(tempfile.mkdtemp(prefix="bench-workers-"))
    runs: dict[int, list[dict[str, Any]]] = {w: [] for w in counts}
    try:
        for rep in range(args.repeat):
            order = counts if rep % 2 == 0 else list(reversed(counts))
            for workers in order:
                console.print(f"round {rep + 1}, {workers} worker(s)")
                runs[workers].append(measured_round(workers, admin, base, work, args, console))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    goals = GoalReport(
        f"Goals: {counts[-1]} workers vs {counts[0]} on PostgreSQL ({args.repeat} round(s))"
    )
    report = summarise(runs, counts, args, goals)
    report["machine_before"] = before
    print_table(console, report)
    goals.print(console)
    write_json(args.json, report)


def load_condition(args: argparse.Namespace) -> str:
    """How this run's load differs from the default (8 connections for every worker count);
    empty for the default."""
    if args.per_worker:
        return f"{args.connections} connection(s) per worker"
    return "" if args.connections == DEFAULT_CONNECTIONS else f"{args.connections} connection(s)"


def summarise(
    runs: dict[int, list[dict[str, Any]]],
    counts: list[int],
    args: argparse.Namespace,
    goals: GoalReport,
) -> dict[str, Any]:
    figures = ("server_cpu_ms_per_request", "db_cpu_ms_per_request",
               "db_background_cpu_ms_per_request", "wal_bytes_per_request", "req_per_s",
               "p50_ms", "p95_ms", "db_backends_started",
               "db_reaped_cpu_ms_per_request", "server_waits_per_request",
               "server_preemptions_per_request")  # fmt: skip
    ops: dict[str, Any] = {}
    load = load_condition(args)
    tables = {w: runs[w][-1]["tables"] for w in counts}
    for op in (*OPS, REGISTER_LAST) if args.register_last else OPS:
        entry: dict[str, Any] = {"items_per_request": runs[counts[0]][0][op]["items_per_request"]}
        for w in counts:
            entry[f"{w}w"] = {f: median([r[op][f] for r in runs[w]]) for f in figures}
            entry[f"{w}w"]["workers_busy"] = [r[op]["workers_busy"] for r in runs[w]]
            entry[f"{w}w"]["rounds_unserved"] = sum(op in r["unserved"] for r in runs[w])
        if len(counts) > 1:
            base = entry[f"{counts[0]}w"]["server_cpu_ms_per_request"]
            ratio = entry[f"{counts[-1]}w"]["server_cpu_ms_per_request"] / base
            entry["ratio"] = round(ratio, 3)
            if op == REGISTER_LAST:
                ops[op] = entry
                continue
            full = args.requests >= 2000 and args.repeat >= 3
            limit = WORKERS_CPU_RATIO if full else None
            goal = workers_cpu(op, counts[-1], limit, load)
            goals.add(goal, ratio, f"median of {args.repeat}")
        ops[op] = entry
    return {
        "benchmark": "workers",
        "repeat": args.repeat,
        "requests_per_phase": args.requests,
        "log_lines_per_batch": args.log_lines,
        "database": "PostgreSQL " + str(sql(admin_dsn(args.database)[0], "SHOW server_version")),
        "workers": counts,
        "server_cpus": args.server_cpus or "any",
        "client": f"wrk -t1 (Lua scripts), {args.connections} connections (bulk 2)"
        + (f", {load}" if load else ""),
        "machine": machine_state(),
        "ops": ops,
        "tables_after_last_round": tables,
        "runs": {str(w): runs[w] for w in counts},
        "goals": goals.as_json(),
    }


def print_table(console: Console, report: dict[str, Any]) -> None:
    counts = report["workers"]
    table = Table(title=f"Workers on PostgreSQL (medians of {report['repeat']} round(s))")
    table.add_column("op")
    for w in counts:
        for col in ("req/s", "server ms/req", "preempted /req", "db ms/req", "WAL B/req"):
            table.add_column(f"{w}w {col}", justify="right")
    table.add_column("ratio", justify="right")
    for op, e in report["ops"].items():
        row = [op]
        for w in counts:
            f = e[f"{w}w"]
            row += [
                f"{f['req_per_s']:.0f}",
                f"{f['server_cpu_ms_per_request']:.3f}",
                f"{f['server_preemptions_per_request']:.2f}",
                f"{f['db_cpu_ms_per_request']:.3f}",
                f"{f['wal_bytes_per_request']:.0f}",
            ]
        row.append(f"{e.get('ratio', float('nan')):.2f}")
        table.add_row(*row)
    console.print(table)
    for op, e in report["ops"].items():
        for w in counts:
            if e[f"{w}w"]["rounds_unserved"]:
                console.print(
                    f"{op}, {w} workers: {e[f'{w}w']['rounds_unserved']} round(s) where a worker "
                    "served none of it (too few connections): not a comparison of N workers"
                )
    for w, sizes in report["tables_after_last_round"].items():
        console.print(
            f"{w} worker(s), last round, on disk: "
            + ", ".join(
                f"{t} {v['rows']:,} rows {v['bytes_per_row']:.0f} B/row" for t, v in sizes.items()
            )
        )


if __name__ == "__main__":
    main()
