"""Search and summary latency with 1,000,000 pilots, on SQLite, MariaDB and PostgreSQL.

Run: `.venv/bin/python bench/scale.py [--pilots 1000000] [--backends sqlite,mariadb,postgres]
[--json out.json]`; `--pilots 100000` for a quick run.

For each backend: a fresh database (MariaDB on 127.0.0.1:3306 as root, PostgreSQL on
127.0.0.1:5432 as postgres, both dropped afterwards unless --keep), the server started on it
(one uvicorn worker; it creates the schema), then the table filled directly with bulk inserts
of 10,000 rows (the server's bulk endpoint is measured in server_ops.py; here only the
queries on a big table matter). Then, through the server's HTTP API, `wrk -c1`:

    search    indexed filter and a page of 100: Status=Running sorted by SubmissionTime
              (idx_status_time), page 2; and GridSite=<one of 100 sites> (Statuskey), page 1
    summary   grouped by GridSite and Status over the whole table
    monitor   the pilot monitor's overview (matrix, 24 h or 7 d chart, latest failures,
              queues) as an administrator and as a VO user, logged in with a session cookie;
              the first full page (with the filter choices, then kept a minute) apart

Goals at 1,000,000 pilots (bench/goals.py): server peak RSS <= 120 MB (issue [6/6]); search
p95 < 50 ms and summary < 1 s (earlier goals); the monitor has none. Printed last, met or
missed; other sizes print their figures with "no goal".
"""

from __future__ import annotations

import argparse
import asyncio
import random
import secrets
import shutil
import subprocess
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from goals import (
    SCALE_PILOTS,
    SCALE_RSS,
    SCALE_SEARCH_P95,
    SCALE_SUMMARY,
    Goal,
    GoalReport,
    check_load,
    machine_state,
    no_goal,
)
from harness import (
    ServerProcess,
    lua_script,
    percentile,
    run_wrk,
    site_director_token,
    start_site_director,
    write_json,
)
from rich.console import Console
from rich.table import Table
from sqlalchemy import insert

from server.db.engine import Database
from server.db.schema import PILOTS

DB_NAME = "sdbench_scale"
SITES = [f"LCG.Site{i:03d}.org" for i in range(100)]
STATUSES = (
    ["Done"] * 80 + ["Failed"] * 5 + ["Aborted"] * 5 + ["Running"] * 5 + ["Waiting"] * 3
) + ["Submitted"] * 2

SEARCH_STATUS = r"""
local body = '{"search":[{"parameter":"Status","operator":"eq","value":"Running"}],' ..
  '"sort":[{"parameter":"SubmissionTime","direction":"asc"}]}'
function make_request(i)
  return wrk.format("POST", "/api/pilots/search?page=2&per_page=100", nil, body)
end
"""

SEARCH_SITE = r"""
function make_request(i)
  local site = string.format("LCG.Site%03d.org", (i * 37) % 100)
  return wrk.format("POST", "/api/pilots/search?page=1&per_page=100", nil,
    '{"search":[{"parameter":"GridSite","operator":"eq","value":"' .. site .. '"}]}')
end
"""

SUMMARY = r"""
function make_request(i)
  return wrk.format("POST", "/api/pilots/summary", nil,
    '{"grouping":["GridSite","Status"]}')
end
"""


def create_database(backend: str) -> str | None:
    """A fresh database; returns its URL (None = SQLite under the data dir)."""
    if backend == "sqlite":
        return None
    if backend == "mariadb":
        sql = f"DROP DATABASE IF EXISTS {DB_NAME}; CREATE DATABASE {DB_NAME}"
        subprocess.run(["mysql", "-h127.0.0.1", "-uroot", "-e", sql], check=True)
        return f"mysql+asyncmy://root@127.0.0.1:3306/{DB_NAME}"
    for sql in (f"DROP DATABASE IF EXISTS {DB_NAME}", f"CREATE DATABASE {DB_NAME}"):
        subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-q", "-c", sql], check=True)
    return f"postgresql+asyncpg://postgres@127.0.0.1:5432/{DB_NAME}"


def drop_database(backend: str) -> None:
    if backend == "mariadb":
        subprocess.run(
            ["mysql", "-h127.0.0.1", "-uroot", "-e", f"DROP DATABASE IF EXISTS {DB_NAME}"],
            check=False,
        )
    elif backend == "postgres":
        subprocess.run(
            ["psql", "-h", "127.0.0.1", "-U", "postgres", "-q", "-c", f"DROP DATABASE {DB_NAME}"],
            check=False,
        )


def pilot_rows(start: int, count: int, rng: random.Random, now: datetime) -> list[dict[str, Any]]:
    rows = []
    for i in range(start, start + count):
        site = SITES[rng.randrange(len(SITES))]
        submitted = now - timedelta(seconds=rng.randrange(30 * 24 * 3600))
        rows.append(
            {
                "PilotStamp": f"{i:08x}{secrets.token_hex(12)}",
                "PilotJobReference": f"https://ce.example.org/job/{i}",
                "DestinationSite": f"ce{rng.randrange(3)}.{site}",
                "Queue": f"q{rng.randrange(4)}",
                "GridSite": site,
                "VO": "lhcb" if rng.random() < 0.9 else "dteam",
                "GridType": "HTCondorCE",
                "BenchMark": 0.0,
                "SubmissionTime": submitted,
                "LastUpdateTime": submitted,
                "Status": STATUSES[rng.randrange(len(STATUSES))],
                "StatusReason": "Unknown",
                "InitialJobID": 0,
                "CurrentJobID": 0,
                "AccountingSent": False,
            }
        )
    return rows


async def fill(url: str, total: int, chunk: int = 10_000) -> float:
    """Insert `total` pilots in bulk; returns seconds."""
    db = Database(url)
    rng = random.Random(42)
    now = datetime.now(UTC).replace(tzinfo=None)
    started = time.perf_counter()
    try:
        for start in range(0, total, chunk):
            rows = pilot_rows(start, min(chunk, total - start), rng, now)
            async with db.engine.begin() as conn:
                await conn.execute(insert(PILOTS), rows)
        if db.dialect == "postgresql":
            # VACUUM sets the visibility map (index-only counts skip the heap), as autovacuum
            # would soon after a real fill; ANALYZE gives the planner the statistics
            auto = await db.engine.connect()
            try:
                conn = await auto.execution_options(isolation_level="AUTOCOMMIT")
                await conn.exec_driver_sql('VACUUM ANALYZE "PilotAgents"')
            finally:
                await auto.close()
        elif db.is_mysql:
            async with db.engine.connect() as conn:
                await conn.exec_driver_sql("ANALYZE TABLE PilotAgents")
        else:
            async with db.engine.connect() as conn:
                await conn.exec_driver_sql("ANALYZE")
                await conn.commit()
    finally:
        await db.close()
    return time.perf_counter() - started


def wrk_latencies(
    server: ServerProcess, token: str, lua: str, n: int, expected: str
) -> dict[str, Any]:
    result = run_wrk("q", server.url, lua_script(lua, limit=n, prefix="", token=token),
                     server_pid=server.pid, connections=1)  # fmt: skip
    # a page that holds every match is a 200, a part of them a 206 (Content-Range)
    if not set(result.statuses) <= {expected, "200"} or result.errors:
        raise RuntimeError(f"unexpected answers {result.statuses}, {result.errors} errors")
    return {
        "requests": result.requests,
        "p50_ms": round(result.p50_ms, 2),
        "p95_ms": round(result.p95_ms, 2),
        "p99_ms": round(result.p99_ms, 2),
        "cpu_ms_per_request": round(result.cpu_ms_per_request, 2),
    }


def summary_latencies(server: ServerProcess, token: str, n: int) -> dict[str, Any]:
    """Each summary timed alone (wrk -c1), so the figure is one query's latency."""
    times = []
    for _ in range(n):
        r = run_wrk("summary", server.url, lua_script(SUMMARY, limit=1, prefix="", token=token),
                    server_pid=None, connections=1)  # fmt: skip
        if set(r.statuses) != {"200"}:
            raise RuntimeError(f"summary answered {r.statuses}")
        times.append(r.p50_ms / 1000)
    return {
        "runs": n,
        "median_s": round(sorted(times)[len(times) // 2], 3),
        "max_s": round(max(times), 3),
        "p95_s": round(percentile(times, 95), 3),
    }


def monitor_latencies(server: ServerProcess, data_dir: Path, n: int) -> dict[str, Any]:
    """Seconds per monitor request, each alone, for an administrator and a VO user."""
    result: dict[str, Any] = {}
    for who, props in (("admin", ("ServiceAdministrator",)), ("vo_user", ("NormalUser",))):
        token = site_director_token(data_dir, sub=who, properties=props, issuer=server.url)
        with httpx.Client(base_url=server.url, timeout=120) as client:
            r = client.post("/monitor/login", data={"token": token})
            if r.status_code != httpx.codes.SEE_OTHER:
                raise RuntimeError(f"monitor login answered {r.status_code}")
            started = time.perf_counter()
            if client.get("/monitor").status_code != httpx.codes.OK:
                raise RuntimeError("the monitor page did not answer 200")
            result[f"{who}_first_page_s"] = round(time.perf_counter() - started, 3)
            for window in ("24h", "7d"):
                times = []
                for _ in range(n):
                    started = time.perf_counter()
                    r = client.get("/monitor/fragments/overview", params={"range": window})
                    if r.status_code != httpx.codes.OK:
                        raise RuntimeError(f"the overview answered {r.status_code}")
                    times.append(time.perf_counter() - started)
                result[f"{who}_overview_{window}"] = {
                    "runs": n,
                    "median_s": round(sorted(times)[len(times) // 2], 3),
                    "max_s": round(max(times), 3),
                }
    return result


def run_backend(
    backend: str, pilots: int, work: Path, console: Console, searches: int
) -> dict[str, Any]:
    url = create_database(backend)
    data_dir = work / backend
    server = start_site_director(data_dir, db_url=url)
    try:
        db_url = url or f"sqlite+aiosqlite:///{(data_dir / 'site-director.db').resolve()}"
        console.print(f"{backend}: filling {pilots:,} pilots ...")
        fill_s = asyncio.run(fill(db_url, pilots))
        console.print(f"{backend}: filled in {fill_s:.1f} s ({pilots / fill_s:,.0f} rows/s)")
        token = site_director_token(data_dir, issuer=server.url)
        # warm the server and the database cache
        wrk_latencies(server, token, SEARCH_STATUS, 20, "206")
        wrk_latencies(server, token, SEARCH_SITE, 20, "206")
        search_status = wrk_latencies(server, token, SEARCH_STATUS, searches, "206")
        search_site = wrk_latencies(server, token, SEARCH_SITE, searches, "206")
        summary = summary_latencies(server, token, 5)
        monitor = monitor_latencies(server, data_dir, 5)
        rss = server.peak_rss_mb()
    finally:
        server.stop()
        drop_database(backend)
    result = {
        "backend": backend,
        "pilots": pilots,
        "fill_s": round(fill_s, 1),
        "search_status_page2": search_status,
        "search_site_page1": search_site,
        "summary_site_status": summary,
        "monitor": monitor,
        "server_peak_rss_mb": round(rss, 1),
    }
    console.print(result)
    return result


def add_goals(goals: GoalReport, r: dict[str, Any]) -> None:
    """A backend's figures against the goals, which hold at 1M pilots (other sizes: no goal)."""

    def goal(g: Goal) -> Goal:
        if r["pilots"] == SCALE_PILOTS:
            return g
        return no_goal(g.name.replace("1M", f"{r['pilots']:,}"), g.unit)

    search_p95 = max(r["search_status_page2"]["p95_ms"], r["search_site_page1"]["p95_ms"])
    r["goals"] = [
        goals.add(goal(SCALE_RSS), r["server_peak_rss_mb"], r["backend"]),
        goals.add(goal(SCALE_SEARCH_P95), search_p95, f"{r['backend']}, the slower search"),
        goals.add(goal(SCALE_SUMMARY), r["summary_site_status"]["max_s"], r["backend"]),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pilots", type=int, default=1_000_000)
    parser.add_argument("--backends", default="sqlite,mariadb,postgres")
    parser.add_argument("--searches", type=int, default=200, help="requests per search kind")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--keep", action="store_true", help="keep the SQLite work directory")
    args = parser.parse_args()
    console = Console(stderr=True, width=150)
    before = check_load(console)
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    results = [
        run_backend(b, args.pilots, work, console, args.searches) for b in args.backends.split(",")
    ]
    goals = GoalReport(f"Goals: {args.pilots:,} pilots")
    for r in results:
        add_goals(goals, r)
    report = {
        "benchmark": "scale",
        "pilots": args.pilots,
        "machine_before": before,
        "machine": machine_state(),
        "backends": results,
        "goals": goals.as_json(),
    }
    table = Table(title=f"{args.pilots:,} pilots: latency through the server (wrk -c1)")
    for col in (
        "backend",
        "fill s",
        "Status+sort p2 p50/p95 ms",
        "GridSite p1 p50/p95 ms",
        "summary median/max s",
        "monitor 24h/7d admin s",
        "monitor 24h/7d VO user s",
        "peak RSS MB",
    ):
        table.add_column(col, justify="right")
    for r in results:
        a, b, s = r["search_status_page2"], r["search_site_page1"], r["summary_site_status"]
        table.add_row(
            r["backend"],
            f"{r['fill_s']:.0f}",
            f"{a['p50_ms']:.1f}/{a['p95_ms']:.1f}",
            f"{b['p50_ms']:.1f}/{b['p95_ms']:.1f}",
            f"{s['median_s']:.3f}/{s['max_s']:.3f}",
            *(
                f"{m[f'{who}_overview_24h']['median_s']:.2f}/{m[f'{who}_overview_7d']['median_s']:.2f}"
                for m in [r["monitor"]]
                for who in ("admin", "vo_user")
            ),
            f"{r['server_peak_rss_mb']:.0f}",
        )
    console.print(table)
    goals.print(console)
    write_json(args.json, report)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
