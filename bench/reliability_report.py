"""The figures of the Reliability table (docs/reliability.md): director crash trials, server
restarts under log load, and the 500-pilot load run on PostgreSQL.

Run: `.venv/bin/python bench/reliability_report.py [--trials 100] [--load-seconds 120]
      [--pilots 500] [--only crash,restart,load] [--json out.json]`

The same code as the tests in tests/reliability/ (which assert correctness only), run longer
and with the figures printed: a table, then one JSON document. Needs PostgreSQL on
127.0.0.1:5432 (user postgres, database `test` for the first connection) for the load run; it
works in a database of its own and drops it at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import ssl
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from server.identity import OPERATOR  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.reliability.crash_trials import OPERATOR_SUB, run_crash_trials  # noqa: E402
from tests.reliability.load import pg_create, pg_drop, pg_name, pg_url, run_load  # noqa: E402
from tests.reliability.swarm import ServerProc, restart_under_load  # noqa: E402


def make_ca(folder: Path) -> tuple[Path, Path, Path]:
    import trustme

    folder.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    ca_file, cert_file, key_file = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    ca.cert_pem.write_to_path(str(ca_file))
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    return ca_file, cert_file, key_file


async def crash(folder: Path, trials: int, seed: int) -> dict[str, Any]:
    ca_file, cert_file, key_file = make_ca(folder)
    server = ServerProc(folder / "server", free_port(), tls=(cert_file, key_file))
    verify = ssl.create_default_context(cafile=str(ca_file))
    await asyncio.to_thread(server.start, verify=verify)
    try:
        report = await run_crash_trials(
            folder / "trials",
            trials=trials,
            server_url=server.url,
            director_token=server.director_token,
            admin_token=server.admin_token,
            operator_token=server.token([OPERATOR], OPERATOR_SUB),
            ca_file=ca_file,
            seed=seed,
        )
    finally:
        await asyncio.to_thread(server.kill)
    return {
        "trials": len(report.trials),
        "violations": len(report.violations),
        "killed": sum(1 for t in report.trials if t.killed_at),
        "monitoring_first_restarts": sum(1 for t in report.trials if t.monitoring_first),
        "ce_jobs_at_kill": sum(t.jobs_after_kill for t in report.trials),
        "kill_requests": sum(t.kills for t in report.trials),
        "by_point": report.by_point(),
        "first_violations": report.violations[:10],
    }


async def restart(folder: Path, restarts: int) -> dict[str, Any]:
    server = ServerProc(folder / "server", free_port())
    await asyncio.to_thread(server.start)
    signals = [signal.SIGKILL if i % 3 != 2 else signal.SIGTERM for i in range(restarts)]
    try:
        stats, _, stored = await restart_under_load(
            server, pilots=20, batch=50, restarts=signals, gap=3.0
        )
    finally:
        await asyncio.to_thread(server.kill)
    counts = Counter(stored)
    return {
        "restarts": restarts,
        "sigkill": signals.count(signal.SIGKILL),
        "sigterm": signals.count(signal.SIGTERM),
        "lines_acked": len(stats.acked),
        "lines_stored": len(stored),
        "lines_lost": len(stats.acked - set(counts)),
        "duplicates": sum(c - 1 for c in counts.values() if c > 1),
        "client_retries": stats.retried,
        "errors": len(stats.errors),
    }


async def load(folder: Path, pilots: int, seconds: float, rate: int | None) -> dict[str, Any]:
    name = pg_name("bench")
    await pg_create(name)
    env = {"SITE_DIRECTOR_LOG_RATE_LINES_PER_MINUTE": str(rate)} if rate else {}
    server = ServerProc(folder / "server", free_port(), db_url=pg_url(name), env=env)
    try:
        await asyncio.to_thread(server.start)
        report = await run_load(server, pilots=pilots, seconds=seconds)
    finally:
        await asyncio.to_thread(server.kill)
        await pg_drop(name)
    figures = report.figures()
    figures["first_errors"] = report.errors[:10]
    return figures


def print_tables(out: Console, results: dict[str, Any]) -> None:
    table = Table(title="Reliability")
    for column in ("check", "count", "violations / lost", "notes"):
        table.add_column(column)
    if "crash" in results:
        c = results["crash"]
        table.add_row(
            "director SIGKILL + restart",
            f"{c['trials']} trials",
            str(c["violations"]),
            f"{len(c['by_point'])} kill points, {c['ce_jobs_at_kill']} CE jobs present at kills",
        )
    if "restart" in results:
        r = results["restart"]
        table.add_row(
            "server restart under log load",
            f"{r['restarts']} restarts",
            f"{r['lines_lost']} of {r['lines_acked']} acked lines",
            f"{r['duplicates']} duplicates, {r['client_retries']} client retries",
        )
    if "load" in results:
        x = results["load"]
        table.add_row(
            f"{x['pilots']} pilots on PostgreSQL",
            f"{x['seconds']} s, {x['requests']} requests",
            f"{x['lines_lost']} of {x['lines_acked']} acked lines; {x['errors']} errors",
            f"{x['lines_per_s']} lines/s, {x['requests_per_s']} req/s, {x['throttled_429']} 429s",
        )
    out.print(table)
    if "crash" in results:
        points = Table(title="Crash trials by kill point")
        for column in ("point", "trials", "violations", "CE jobs at kill"):
            points.add_column(column)
        for point, row in results["crash"]["by_point"].items():
            points.add_row(
                point, str(row["trials"]), str(row["violations"]), str(row["jobs_after_kill"])
            )
        out.print(points)
    if "load" in results:
        lat = Table(title="Load: latency per request kind (ms)")
        for column in ("kind", "p50", "p95", "p99"):
            lat.add_column(column)
        for kind, p in results["load"]["latency_ms"].items():
            lat.add_row(kind, f"{p['p50_ms']:.0f}", f"{p['p95_ms']:.0f}", f"{p['p99_ms']:.0f}")
        out.print(lat)


async def main(args: argparse.Namespace) -> int:
    only = set(args.only.split(","))
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="reliability-") as tmp:
        folder = Path(tmp)
        if "crash" in only:
            results["crash"] = await crash(folder / "crash", args.trials, args.seed)
        if "restart" in only:
            results["restart"] = await restart(folder / "restart", args.restarts)
        if "load" in only:
            results["load"] = await load(
                folder / "load", args.pilots, args.load_seconds, args.rate_per_minute
            )
    print_tables(Console(width=140), results)
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    bad = results.get("crash", {}).get("violations", 0)
    bad += results.get("restart", {}).get("lines_lost", 0)
    bad += results.get("load", {}).get("lines_lost", 0) + results.get("load", {}).get("errors", 0)
    return 1 if bad else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=100, help="director crash trials")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--restarts", type=int, default=6, help="server restarts under load")
    parser.add_argument("--pilots", type=int, default=500)
    parser.add_argument("--load-seconds", type=float, default=120.0)
    parser.add_argument(
        "--rate-per-minute", type=int, default=None, help="server's per-pilot log line rate"
    )
    parser.add_argument("--only", default="crash,restart,load")
    parser.add_argument("--json", help="also write the JSON here")
    sys.exit(asyncio.run(main(parser.parse_args())))
