"""Our server's own operations, with no DiracX 0.7.0 counterpart: bulk registration with
secrets, secret exchanges, log ingestion.

Run: `.venv/bin/python bench/server_ops.py [--repeat 3] [--json out.json]`

One uvicorn worker on SQLite (WAL), driven by `wrk` (one thread) with Lua scripts:

    bulk      POST /api/pilots/bulk, 1,000 pilots per request with mint_secrets=true
              (the director's call), 2 connections; goal (an earlier one) >= 5,000 pilots/s
    exchange  POST /api/auth/secret-exchange with the secrets minted above, each stamp once,
              32 connections; refresh tokens are stored; goal <= 1.0 ms of server CPU each
              (>= 1,000/s on one core)
    logs      POST /api/pilots/internal/message, batches of 250 lines (~110 bytes each) from
              100 pilots (their tokens from real exchanges), 16 connections, each batch
              stamped with the time it is sent (`--log-timestamps fixed`: the same 250
              timestamps in every batch, a worst case for the index); goal <= 20 us of server
              CPU a line (>= 50,000 lines/s on one core)

Figures: throughput as wrk saw it, p50/p95 per request, and the server's CPU time per
request and per item (pilot, exchange, log line) from /proc/<pid>/stat. The goals (issue [6/6],
bench/goals.py) are printed last, each met or missed.
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from goals import BULK_RATE, EXCHANGE_CPU, LOG_LINE_CPU, GoalReport, check_load, machine_state
from harness import (
    LUA_BODIES,
    ServerProcess,
    WrkResult,
    exchange_script,
    lua_list,
    lua_script,
    median,
    run_wrk,
    site_director_token,
    start_site_director,
    write_json,
)
from rich.console import Console
from rich.table import Table

BULK = r"""
local batch = $batch
function make_request(i)
  local parts = {}
  for k = 1, batch do
    parts[k] = '{"pilot_stamp":"' .. prefix .. i .. '-' .. k ..
      '","grid_site":"LCG.Bench.org","destination_site":"ce1.bench.org","queue":"q' ..
      (k % 10) .. '"}'
  end
  return wrk.format("POST", "/api/pilots/bulk", nil,
    '{"vo":"lhcb","mint_secrets":true,"pilots":[' .. table.concat(parts, ",") .. ']}')
end
"""

# Two timelines for the lines' timestamps. `advancing` (the default): batch i is stamped
# `start + i/4` seconds, its lines a millisecond apart, as pilots sending their recent lines
# would be. `fixed`: every batch carries the same 250 timestamps (the first version of this
# script); new rows then land beside every earlier batch's in the (VO, TimeStamp) index, a
# worst case that dirties ~250 index pages per batch instead of a few.
LOGS = r"""
local tokens = { $tokens }
local fixed = $fixed
local start = $start
local texts = {}
for k = 1, 250 do
  texts[k] = '","severity":"INFO","scope":"Pilot","message":"Line ' .. k ..
    ' of the pilot log: checking the CVMFS repository and the local disk space"}'
end
local function batch(i)
  local lines = {}
  for k = 1, 250 do
    local stamp
    if fixed then
      stamp = "2026-11-28T03:00:00." .. string.format("%06d", k)
    else
      local us = (i - 1) * 250000 + (k - 1) * 1000
      stamp = os.date("!%Y-%m-%dT%H:%M:%S", start + math.floor(us / 1000000)) ..
        "." .. string.format("%06d", us % 1000000)
    end
    lines[k] = '{"timestamp":"' .. stamp .. 'Z' .. texts[k]
  end
  return '{"lines":[' .. table.concat(lines, ",") .. ']}'
end
local fixed_body = batch(1)
function make_request(i)
  local t = tokens[((i - 1) % #tokens) + 1]
  return wrk.format("POST", "/api/pilots/internal/message",
    {["Authorization"] = "Bearer " .. t, ["Content-Type"] = "application/json"},
    fixed and fixed_body or batch(i))
end
"""

UNITS = {"bulk": "pilots/s", "exchange": "exchanges/s", "logs": "lines/s"}


@contextmanager
def profiled(server: ServerProcess, out: Path | None, name: str) -> Iterator[None]:
    """With `out`, py-spy samples the server over the block into `out/name.txt` (collapsed
    stacks, `--nonblocking` so the server is not paused; its CPU figures still include
    py-spy's reads, so compare profiled runs only with profiled runs)."""
    if out is None:
        yield
        return
    out.mkdir(parents=True, exist_ok=True)
    cmd = ["py-spy", "record", "--pid", str(server.pid), "--format", "raw", "--rate", "200"]
    cmd += ["--nonblocking", "-o", str(out / f"{name}.txt")]
    spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)
        spy.wait(timeout=60)


def check(result: WrkResult, expected: str) -> None:
    unexpected = {k: v for k, v in result.statuses.items() if k != expected}
    if unexpected or result.errors:
        raise RuntimeError(f"{result.op}: unexpected answers {unexpected}, {result.errors} errors")


def bulk_phase(
    server: ServerProcess, token: str, requests: int, batch: int
) -> tuple[WrkResult, list[tuple[str, str]]]:
    prefix = "b" + secrets.token_hex(3) + "-"
    bodies: list[str] = []
    script = BULK.replace("$batch", str(batch)) + LUA_BODIES
    lua = lua_script(script, limit=requests, prefix=prefix, token=token)
    result = run_wrk("bulk", server.url, lua, server_pid=server.pid, connections=2, bodies=bodies)
    check(result, "201")
    creds: list[tuple[str, str]] = []
    for text in bodies:
        for minted in json.loads(text)["secrets"]:
            creds.append((minted["pilot_stamp"], minted["pilot_secret"]))
    items = batch * result.requests
    result.extra = {
        "batch": batch,
        "items": items,
        "items_per_s": round(items / result.seconds, 1),
        "cpu_us_per_item": round(1e6 * result.cpu_s / (batch * result.issued), 1),
    }
    return result, creds


def exchange_phase(
    server: ServerProcess, creds: list[tuple[str, str]], n: int, connections: int
) -> WrkResult:
    lua = lua_script(exchange_script(creds), limit=n, prefix="", token="unused")
    result = run_wrk("exchange", server.url, lua, server_pid=server.pid, connections=connections)
    check(result, "200")
    result.extra = {
        "items": result.requests,
        "items_per_s": round(result.rps, 1),
        "cpu_us_per_item": round(1e6 * result.cpu_s / result.issued, 1),
    }
    return result


def pilot_tokens(server: ServerProcess, creds: list[tuple[str, str]]) -> list[str]:
    tokens = []
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for stamp, secret in creds:
            resp = client.post(
                "/api/auth/secret-exchange", json={"pilot_stamp": stamp, "pilot_secret": secret}
            )
            resp.raise_for_status()
            tokens.append(resp.json()["access_token"])
    return tokens


def logs_phase(
    server: ServerProcess, tokens: list[str], batches: int, timestamps: str = "advancing"
) -> WrkResult:
    lua = lua_script(
        LOGS.replace("$tokens", lua_list([f'"{t}"' for t in tokens]))
        .replace("$fixed", "true" if timestamps == "fixed" else "false")
        .replace("$start", str(int(time.time()))),
        limit=batches,
        prefix="",
        token="unused",
    )
    result = run_wrk("logs", server.url, lua, server_pid=server.pid, connections=16)
    check(result, "204")
    lines = 250 * result.requests
    result.extra = {
        "items": lines,
        "items_per_s": round(lines / result.seconds, 1),
        "cpu_us_per_item": round(1e6 * result.cpu_s / (250 * result.issued), 2),
        "timestamps": timestamps,
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs; medians are reported")
    parser.add_argument("--bulk-requests", type=int, default=20)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--exchanges", type=int, default=3000)
    parser.add_argument("--exchange-connections", type=int, default=32)
    parser.add_argument("--log-batches", type=int, default=2000)
    parser.add_argument(
        "--log-timestamps",
        choices=("advancing", "fixed"),
        default="advancing",
        help="advancing: each batch stamped with its send time; fixed: the same 250 in every "
        "batch (a worst case for the (VO, TimeStamp) index)",
    )
    parser.add_argument("--json", type=Path)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument(
        "--profile", type=Path, help="py-spy each measured phase into DIR/<op>-<run>.txt"
    )
    args = parser.parse_args()
    console = Console(stderr=True, width=150)
    before = check_load(console)
    work = Path(tempfile.mkdtemp(prefix="bench-ops-"))
    runs: dict[str, list[WrkResult]] = {"bulk": [], "exchange": [], "logs": []}
    server = start_site_director(work)
    try:
        director = site_director_token(
            work, sub="bench-director", properties=["TrustedHost"], issuer=server.url
        )
        # warm up every route once
        _, warm = bulk_phase(server, director, 2, 200)
        exchange_phase(server, warm[:200], 100, args.exchange_connections)
        logs_phase(server, pilot_tokens(server, warm[200:210]), 20, args.log_timestamps)
        for rep in range(args.repeat):
            with profiled(server, args.profile, f"bulk-{rep + 1}"):
                bulk, creds = bulk_phase(server, director, args.bulk_requests, args.batch)
            tokens = pilot_tokens(server, creds[:100])
            with profiled(server, args.profile, f"exchange-{rep + 1}"):
                exchange = exchange_phase(
                    server, creds[100:], args.exchanges, args.exchange_connections
                )
            with profiled(server, args.profile, f"logs-{rep + 1}"):
                logs = logs_phase(server, tokens, args.log_batches, args.log_timestamps)
            for r in (bulk, exchange, logs):
                runs[r.op].append(r)
                console.print(
                    f"run {rep + 1} {r.op:8} {r.extra['items_per_s']:10.0f} {UNITS[r.op]:12} "
                    f"{r.cpu_ms_per_request:8.2f} ms CPU/req p95 {r.p95_ms:7.1f} ms"
                )
        peak = server.peak_rss_mb()
    finally:
        server.stop()
    goals = GoalReport(f"Goals: server operations, SQLite, one worker ({args.repeat} run(s))")
    report = summarise(runs, peak, args, goals)
    report["machine_before"] = before
    print_table(console, report)
    goals.print(console)
    write_json(args.json, report)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


def summarise(
    runs: dict[str, list[WrkResult]], peak: float, args: argparse.Namespace, goals: GoalReport
) -> dict[str, Any]:
    ops: dict[str, Any] = {}
    note = f"median of {args.repeat}"
    for op, results in runs.items():
        rate = median([r.extra["items_per_s"] for r in results])
        cpu_us = median([r.extra["cpu_us_per_item"] for r in results])
        if op == "bulk":
            row = goals.add(BULK_RATE, rate, f"wall rate, {note}")
        elif op == "exchange":
            row = goals.add(EXCHANGE_CPU, cpu_us / 1000, note)
        else:
            row = goals.add(LOG_LINE_CPU, cpu_us, note)
        ops[op] = {
            "unit": UNITS[op],
            "rate": round(rate, 1),
            "goal": row["goal"],
            "met": row["met"],
            "req_per_s": round(median([r.rps for r in results]), 1),
            "p50_ms": round(median([r.p50_ms for r in results]), 2),
            "p95_ms": round(median([r.p95_ms for r in results]), 2),
            "cpu_ms_per_request": round(median([r.cpu_ms_per_request for r in results]), 3),
            "cpu_us_per_item": round(median([r.extra["cpu_us_per_item"] for r in results]), 2),
            "runs": [r.as_dict() for r in results],
        }
    return {
        "benchmark": "server_ops",
        "repeat": args.repeat,
        "database": "SQLite (WAL), one uvicorn worker",
        "client": "wrk -t1 (Lua scripts)",
        "log_timestamps": args.log_timestamps,
        "server_peak_rss_mb": round(peak, 1),
        "machine": machine_state(),
        "ops": ops,
        "goals": goals.as_json(),
    }


def print_table(console: Console, report: dict[str, Any]) -> None:
    table = Table(title=f"Server operations (medians of {report['repeat']} run(s))")
    for col in ("op", "rate", "req/s", "p50/p95 ms", "CPU ms/req", "CPU us/item"):
        table.add_column(col, justify="right")
    for op, e in report["ops"].items():
        table.add_row(
            op,
            f"{e['rate']:.0f} {e['unit']}",
            f"{e['req_per_s']:.1f}",
            f"{e['p50_ms']:.1f}/{e['p95_ms']:.1f}",
            f"{e['cpu_ms_per_request']:.2f}",
            f"{e['cpu_us_per_item']:.1f}",
        )
    console.print(table)
    console.print(f"server peak RSS: {report['server_peak_rss_mb']} MB")


if __name__ == "__main__":
    main()
