"""Our server side by side with DiracX 0.7.0: the same workload, client, database kind.

Run: `.venv/bin/python bench/server_vs_diracx.py [--repeat 3] [--clients wrk,httpx]
[--json out.json]`; `--repeat 1 --scale 0.1` for a quick check.

Both servers run at the same time, one uvicorn worker each, on SQLite (WAL) in fresh
directories; the phases alternate between them (which goes first flips every round) so that
noise on this shared machine hits both. Two workloads, each with unique stamps: `wrk` (one
thread, 16 connections, a Lua script per operation) and one `httpx.AsyncClient` with 16
requests in flight (a Python client, as the director is):

    register  2,000 x POST /api/pilots/ (one pilot per request)
    patch       500 x PATCH /api/pilots/metadata (one stamp: Status, StatusReason)
    search      300 x POST /api/pilots/search?page=2&per_page=100 (Status filter, sort)
    summary     300 x POST /api/pilots/summary (grouped by GridSite and Status)

Figures: requests/s and p50/p95 latency as wrk saw them, and the server's CPU milliseconds per
request from /proc/<pid>/stat (the primary figure: fair whatever the client costs). Ratios are
DiracX / ours for time, ours / DiracX for throughput; medians over --repeat runs.

Goal (issue [6/6], bench/goals.py): DiracX's server CPU per request >= 10x ours for each
operation on both workloads, medians of 3 rounds. Printed last, each met or missed.
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from diracx_baseline import DEFAULT_VENV, configure, ensure_venv
from goals import GoalReport, check_load, machine_state, vs_diracx
from harness import (
    LUA_PATCH,
    LUA_REGISTER,
    RequestMaker,
    ServerProcess,
    WrkResult,
    lua_script,
    median,
    run_httpx,
    run_wrk,
    site_director_token,
    start_site_director,
    write_json,
)
from rich.console import Console
from rich.table import Table

CLIENTS = ("wrk", "httpx")

SEARCH = r"""
local body = '{"search":[{"parameter":"Status","operator":"eq","value":"Submitted"}],' ..
  '"sort":[{"parameter":"SubmissionTime","direction":"desc"}]}'
function make_request(i)
  return wrk.format("POST", "/api/pilots/search?page=2&per_page=100", nil, body)
end
"""

SUMMARY = r"""
local body = '{"grouping":["GridSite","Status"]}'
function make_request(i)
  return wrk.format("POST", "/api/pilots/summary", nil, body)
end
"""


# The same requests for the httpx workload: op -> prefix -> (i -> method, path, body)
def py_register(prefix: str) -> RequestMaker:
    def make(i: int) -> tuple[str, str, str]:
        body = {
            "pilot_stamp": f"{prefix}{i}",
            "vo": "lhcb",
            "grid_site": f"LCG.Site{i % 10}.org",
            "destination_site": f"ce{i % 7}.example.org",
        }
        return "POST", "/api/pilots/", json.dumps(body)

    return make


def py_patch(prefix: str) -> RequestMaker:
    def make(i: int) -> tuple[str, str, str]:
        body = {f"{prefix}{i}": {"Status": "Running", "StatusReason": "bench"}}
        return "PATCH", "/api/pilots/metadata", json.dumps(body)

    return make


def py_search(prefix: str) -> RequestMaker:
    body = json.dumps(
        {
            "search": [{"parameter": "Status", "operator": "eq", "value": "Submitted"}],
            "sort": [{"parameter": "SubmissionTime", "direction": "desc"}],
        }
    )
    return lambda i: ("POST", "/api/pilots/search?page=2&per_page=100", body)


def py_summary(prefix: str) -> RequestMaker:
    body = json.dumps({"grouping": ["GridSite", "Status"]})
    return lambda i: ("POST", "/api/pilots/summary", body)


# op -> (Lua, the same in Python, number of requests, the status every answer must have)
OPS: dict[str, tuple[str, Callable[[str], RequestMaker], int, str]] = {
    "register": (LUA_REGISTER, py_register, 2000, "201"),
    "patch": (LUA_PATCH, py_patch, 500, "204"),
    "search": (SEARCH, py_search, 300, "206"),
    "summary": (SUMMARY, py_summary, 300, "200"),
}


def run_phase(
    client: str,
    op: str,
    server: ServerProcess,
    token: str,
    prefix: str,
    scale: float,
    connections: int,
) -> WrkResult:
    lua, py, count, expected = OPS[op]
    limit = max(1, int(count * scale))
    if client == "wrk":
        result = run_wrk(
            op,
            server.url,
            lua_script(lua, limit=limit, prefix=prefix, token=token),
            server_pid=server.pid,
            connections=connections,
        )
    else:
        result = run_httpx(
            op,
            server.url,
            py(prefix),
            token=token,
            limit=limit,
            server_pid=server.pid,
            connections=connections,
        )
    unexpected = {k: v for k, v in result.statuses.items() if k != expected}
    failed = sum(unexpected.values()) + result.errors
    # DiracX on SQLite sets no busy timeout beyond the driver's 5 s: under load a few of its
    # writes fail with "database is locked" (500). Counted and reported, not hidden; a run
    # with more than 5% failures is not a measurement.
    result.extra = {"failed": failed, "unexpected_statuses": unexpected}
    if failed > 0.05 * max(result.issued, 1):
        raise RuntimeError(
            f"{server.name} {client} {op}: unexpected answers {unexpected}, "
            f"{result.errors} socket errors"
        )
    return result


def warm_up(server: ServerProcess, token: str, tag: str) -> None:
    """Imports, caches and connection pools settle before anything is measured."""
    prefix = f"w{tag}{secrets.token_hex(3)}-"
    for op, n in (("register", 150), ("patch", 20), ("search", 20), ("summary", 20)):
        lua = OPS[op][0]
        run_wrk(
            op, server.url, lua_script(lua, limit=n, prefix=prefix, token=token), server_pid=None
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repeat", type=int, default=3, help="rounds; medians are reported (the goal: 3)"
    )
    parser.add_argument(
        "--clients", default=",".join(CLIENTS), help="workloads, of wrk,httpx (the goal: both)"
    )
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of each op's count")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--json", type=Path, help="write the JSON here (default: stdout)")
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="DiracX's venv")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()

    clients = [c for c in args.clients.split(",") if c]
    if not set(clients) <= set(CLIENTS):
        parser.error(f"--clients: of {','.join(CLIENTS)}")
    console = Console(stderr=True, width=150)
    before = check_load(console)
    work = Path(tempfile.mkdtemp(prefix="bench-vs-diracx-"))
    console.print(f"work directory {work}")
    venv = ensure_venv(args.venv)
    dx = configure(work / "diracx", venv=venv)
    runs: dict[str, dict[str, dict[str, list[WrkResult]]]] = {
        client: {name: {op: [] for op in OPS} for name in ("ours", "diracx")} for client in clients
    }
    ours = start_site_director(work / "ours")
    try:
        ours_token = site_director_token(work / "ours", issuer=ours.url)
        with dx.start() as theirs:
            dx_token = dx.token()
            servers = {"ours": (ours, ours_token), "diracx": (theirs, dx_token)}
            for name, (server, token) in servers.items():
                warm_up(server, token, name[0])
            for rep in range(args.repeat):
                # which server goes first flips every round
                order = list(servers.items())[:: -1 if rep % 2 else 1]
                for client in clients:
                    prefix = f"r{rep}{client[0]}{secrets.token_hex(4)}-"
                    for op in OPS:
                        for name, (server, token) in order:
                            result = run_phase(
                                client, op, server, token, prefix, args.scale, args.connections
                            )
                            runs[client][name][op].append(result)
                            console.print(
                                f"run {rep + 1} {client:5} {name:6} {op:8} {result.rps:8.1f} req/s "
                                f"{result.cpu_ms_per_request:7.2f} ms CPU/req "
                                f"p95 {result.p95_ms:7.1f} ms"
                            )
            rss = {"ours": ours.peak_rss_mb(), "diracx": theirs.peak_rss_mb()}
    finally:
        ours.stop()
    goals = GoalReport(
        f"Goals: DiracX 0.7.0 / ours in server CPU per request ({args.repeat} round(s))"
    )
    report = summarise(runs, rss, args, goals)
    report["machine_before"] = before
    print_table(console, report)
    goals.print(console)
    write_json(args.json, report)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


def summarise(
    runs: dict[str, dict[str, dict[str, list[WrkResult]]]],
    rss: dict[str, float],
    args: argparse.Namespace,
    goals: GoalReport,
) -> dict[str, Any]:
    workloads: dict[str, Any] = {}
    note = f"medians of {args.repeat}" if args.repeat >= 3 else f"{args.repeat} round(s), not 3"
    for client, by_server in runs.items():
        ops: dict[str, Any] = {}
        for op in OPS:
            entry: dict[str, Any] = {}
            for name in ("ours", "diracx"):
                results = by_server[name][op]
                entry[name] = {
                    "req_per_s": round(median([r.rps for r in results]), 1),
                    "p50_ms": round(median([r.p50_ms for r in results]), 2),
                    "p95_ms": round(median([r.p95_ms for r in results]), 2),
                    "cpu_ms_per_request": round(median([r.cpu_ms_per_request for r in results]), 3),
                    "failed": sum(r.extra.get("failed", 0) for r in results),
                    "runs": [r.as_dict() for r in results],
                }
            o, d = entry["ours"], entry["diracx"]
            entry["throughput_ratio"] = round(o["req_per_s"] / d["req_per_s"], 1)
            cpu_ratio = d["cpu_ms_per_request"] / o["cpu_ms_per_request"]
            entry["cpu_ratio"] = round(cpu_ratio, 2)
            entry["p95_ratio"] = round(d["p95_ms"] / o["p95_ms"], 1)
            row = goals.add(vs_diracx(op), cpu_ratio, f"{client}, {note}")
            entry["goal"], entry["met"] = row["goal"], row["met"]
            ops[op] = entry
        workloads[client] = ops
    return {
        "benchmark": "server_vs_diracx",
        "repeat": args.repeat,
        "scale": args.scale,
        "connections": args.connections,
        "clients": {
            "wrk": "wrk -t1 (Lua scripts, unique stamps)",
            "httpx": "one httpx.AsyncClient, requests in flight = connections",
        },
        "database": "SQLite (WAL), one uvicorn worker each",
        "peak_rss_mb": {k: round(v, 1) for k, v in rss.items()},
        "machine": machine_state(),
        "workloads": workloads,
        "goals": goals.as_json(),
    }


def print_table(console: Console, report: dict[str, Any]) -> None:
    for client, ops in report["workloads"].items():
        table = Table(
            title=f"Site Director vs DiracX 0.7.0, {client} "
            f"(medians of {report['repeat']} round(s))"
        )
        for col in (
            "op",
            "ours req/s",
            "DiracX req/s",
            "x req/s",
            "ours p50/p95 ms",
            "DiracX p50/p95 ms",
            "ours CPU ms/req",
            "DiracX CPU ms/req",
            "x CPU",
            "failed ours/DiracX",
        ):
            table.add_column(col, justify="right")
        for op, e in ops.items():
            o, d = e["ours"], e["diracx"]
            table.add_row(
                op,
                f"{o['req_per_s']:.0f}",
                f"{d['req_per_s']:.0f}",
                f"{e['throughput_ratio']:.1f}",
                f"{o['p50_ms']:.1f}/{o['p95_ms']:.1f}",
                f"{d['p50_ms']:.1f}/{d['p95_ms']:.1f}",
                f"{o['cpu_ms_per_request']:.2f}",
                f"{d['cpu_ms_per_request']:.2f}",
                f"{e['cpu_ratio']:.1f}",
                f"{o['failed']}/{d['failed']}",
            )
        console.print(table)
    console.print(f"peak RSS MB: {report['peak_rss_mb']}")


if __name__ == "__main__":
    main()
