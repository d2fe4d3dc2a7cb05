"""The `taskqueues` demand source at scale: 10,000 task queues against 1,000 director queues.

Run: `.venv/bin/python bench/taskqueue_match.py [--task-queues 10000] [--queues 1000]
[--cycles 5] [--mysql root@127.0.0.1:3306] [--json out.json]`

A throw-away database on MariaDB gets the TaskQueueDB schema (diracx-db 0.7.0, as
`director.taskqueue_db` mirrors it) and N task queues with a realistic spread: most for any
site, some with 1-3 of 200 sites, banned sites, a CE, platforms, job types, GPU, multicore
(MultiProcessor + <n>Processors) and WholeNode tags, DIRAC's CPU-time segments, 1-50 waiting
jobs each, in two VOs. It is filled by a child process, so this process's memory is only the
director's. The director's 1,000 queues sit at 200 sites, five queues each (single-core,
8-core, whole-node, GPU, el8).

One cycle = `TaskQueueJobDemand.refresh()` (three statements in one read-only transaction,
then the bit-set index) + `demand()` for every queue. Reported: the median and worst cycle
(read and match apart), the dry run's explanation of every queue, and memory: resident size
after the source is built (idle) and peak resident size after the cycles.

Goals (issue [6/6], bench/goals.py): the worst cycle under 1 s; peak memory under 50 MB above
idle. Printed last, met or missed. `--task-queues 1000 --queues 100 --cycles 2` for a quick
check (then "no goal": the goals hold for 10,000 x 1,000).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import create_async_engine

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from goals import TQ_CYCLE, TQ_MEMORY, GoalReport, check_load, machine_state, no_goal
from rich.console import Console

from director.config import QueueRef, Settings
from director.demand import TaskQueueJobDemand
from director.taskqueue_db import VALUE_TABLES, jobs, metadata, task_queues
from director.taskqueues import matches

GOAL_SIZE = (10_000, 1_000)  # task queues, queues: the size the goals hold for
CPU_SEGMENTS = [360, 1800, 3600, 21600, 43200, 86400, 172800, 259200, 345600]
SITES = [f"LCG.Site{i:03d}.org" for i in range(200)]


def rss_mb() -> float:
    """Resident size now (not the peak)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def task_queue_rows(n: int, seed: int = 1) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows for tq_TaskQueues and (table, TQId, Value) rows for the tq_TQTo* tables."""
    rnd = random.Random(seed)
    heads, values = [], []
    for tq_id in range(1, n + 1):
        vo = "lhcb" if rnd.random() < 0.9 else "dteam"
        heads.append(
            {
                "TQId": tq_id,
                "Owner": f"user{rnd.randrange(300)}",
                "OwnerGroup": rnd.choice([f"{vo}_user", f"{vo}_prod", f"{vo}_mc"]),
                "VO": vo,
                "CPUTime": rnd.choice(CPU_SEGMENTS),
                "Priority": 1.0,
                "Enabled": True,
            }
        )

        def add(name: str, chosen: list[str], tq_id: int = tq_id) -> None:
            values.extend({"field": name, "TQId": tq_id, "Value": v} for v in set(chosen))

        if rnd.random() < 0.3:
            add("sites", rnd.sample(SITES, rnd.randint(1, 3)))
        if rnd.random() < 0.05:
            add("banned_sites", rnd.sample(SITES, rnd.randint(1, 5)))
        if rnd.random() < 0.02:
            add("grid_ces", [f"ce.site{rnd.randrange(200):03d}.org"])
        if rnd.random() < 0.4:
            add("platforms", rnd.sample(["el7", "el8", "el9"], rnd.randint(1, 2)))
        if rnd.random() < 0.1:
            add("job_types", [rnd.choice(["User", "MCSimulation", "Merge", "Test"])])
        kind = rnd.random()
        if kind < 0.10:
            add("tags", ["GPU"])
        elif kind < 0.25:
            cores = rnd.choice([2, 4, 8, 16])
            add("tags", ["MultiProcessor", f"{cores}Processors"])
        elif kind < 0.30:
            add("tags", ["WholeNode", "MultiProcessor"])
    return heads, values


async def fill(url: str, n: int) -> int:
    """Create the schema and n task queues with 1-50 jobs each; returns the number of jobs."""
    engine = create_async_engine(url)
    heads, values = task_queue_rows(n)
    rnd = random.Random(2)
    job_rows = []
    for head in heads:
        for _ in range(rnd.randint(1, 50)):
            job_rows.append(
                {
                    "TQId": head["TQId"],
                    "JobId": len(job_rows) + 1,
                    "Priority": 1,
                    "RealPriority": 1.0,
                }
            )
    async with engine.begin() as conn:
        await conn.run_sync(metadata.drop_all)
        await conn.run_sync(metadata.create_all)
        await conn.execute(insert(task_queues), heads)
        for start in range(0, len(job_rows), 20_000):
            await conn.execute(insert(jobs), job_rows[start : start + 20_000])
        for name, table in VALUE_TABLES.items():
            rows = [{"TQId": v["TQId"], "Value": v["Value"]} for v in values if v["field"] == name]
            if rows:
                await conn.execute(insert(table), rows)
    await engine.dispose()
    return len(job_rows)


def director_settings(url: str, n_queues: int) -> Settings:
    kinds = [
        {"cpu_time": 86400},
        {"cpu_time": 172800, "processors": 8},
        {"cpu_time": 259200, "processors": 64, "tags": ["WholeNode"]},
        {"cpu_time": 86400, "tags": ["GPU"], "required_tags": ["GPU"]},
        {"cpu_time": 43200, "platform": "el8"},
    ]
    sites: dict[str, Any] = {}
    for i in range(n_queues):
        site = SITES[(i // len(kinds)) % len(SITES)]
        ce = f"ce.{site.split('.')[1].lower()}.org"
        entry = sites.setdefault(site, {"ces": {ce: {"ce": {"kind": "local"}, "queues": {}}}})
        entry["ces"][ce]["queues"][f"q{i}"] = kinds[i % len(kinds)]
    return Settings(
        server={"url": "https://server.example.org", "token": "unused"},
        vos=["lhcb"],
        director={
            "demand": {"source": "taskqueues", "url": url, "platforms": {"el9": ["el8", "el7"]}}
        },
        sites=sites,
    )


async def measure(url: str, n_queues: int, cycles: int) -> dict[str, Any]:
    settings = director_settings(url, n_queues)
    refs: list[QueueRef] = list(settings.queues())
    demand = settings.director.demand
    assert demand.source == "taskqueues"
    source = TaskQueueJobDemand(demand, settings.vos)
    for ref in refs:
        source.resource(ref)  # part of the director's configuration, built once
    gc.collect()
    idle = rss_mb()
    reads, matches_s, totals, demanded = [], [], [], 0
    try:
        for _ in range(cycles):
            t0 = time.perf_counter()
            await source.refresh()
            t1 = time.perf_counter()
            demanded = sum(source.demand(ref, 0) or 0 for ref in refs)
            t2 = time.perf_counter()
            reads.append(t1 - t0)
            matches_s.append(t2 - t1)
            totals.append(t2 - t0)
        t3 = time.perf_counter()
        explained = [source.explain(ref, detail=True) for ref in refs]
        explain_s = time.perf_counter() - t3
        peak = peak_rss_mb()
        index = source._index  # the bench checks the index against the rules
        assert index is not None
        # spot check: the index against the one-rule-per-line reference, for 25 queues
        for ref in refs[:: max(1, len(refs) // 25)]:
            r = source.resource(ref)
            expected = sum(tq.jobs for tq in index.task_queues if matches(tq, r))
            assert index.jobs(index.match(r)) == expected, ref.key
        n_tq = len(index)
    finally:
        await source.aclose()
    return {
        "task_queues_with_jobs_read": n_tq,
        "queues": len(refs),
        "cycles": cycles,
        "cycle_median_s": statistics.median(totals),
        "cycle_max_s": max(totals),
        "read_median_s": statistics.median(reads),
        "match_median_s": statistics.median(matches_s),
        "jobs_demanded_per_cycle": demanded,
        "explain_all_detail_s": explain_s,
        "example_explanation": next((e for e in explained if "TQ" in e), ""),
        "rss_idle_mb": idle,
        "rss_peak_mb": peak,
        "above_idle_mb": peak - idle,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task-queues", type=int, default=10_000)
    parser.add_argument("--queues", type=int, default=1_000)
    parser.add_argument("--cycles", type=int, default=5)
    parser.add_argument("--mysql", default="root@127.0.0.1:3306", help="user[:pw]@host:port")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--fill-only", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.fill_only:
        print(asyncio.run(fill(args.fill_only, args.task_queues)))
        return 0

    import asyncmy

    console = Console(width=150)
    before = check_load(console)
    database = f"sdbench_tq_{os.getpid()}"
    user, _, where = args.mysql.rpartition("@")
    host, _, port = where.partition(":")
    name, _, password = user.partition(":")

    async def admin(statement: str) -> None:
        conn = await asyncmy.connect(
            host=host, port=int(port or 3306), user=name, password=password
        )
        async with conn.cursor() as cur:
            await cur.execute(statement)
        conn.close()

    asyncio.run(admin(f"CREATE DATABASE {database} CHARACTER SET utf8mb4"))
    url = f"mysql+asyncmy://{user}@{where}/{database}?charset=utf8mb4"
    try:
        t0 = time.perf_counter()
        filled = subprocess.run(
            [sys.executable, __file__, "--fill-only", url, "--task-queues", str(args.task_queues)],
            check=True,
            capture_output=True,
            text=True,
        )
        n_jobs = int(filled.stdout.strip())
        print(
            f"filled {args.task_queues} task queues, {n_jobs} jobs in "
            f"{time.perf_counter() - t0:.1f} s"
        )
        result = asyncio.run(measure(url, args.queues, args.cycles))
    finally:
        asyncio.run(admin(f"DROP DATABASE IF EXISTS {database}"))
    result["jobs"] = n_jobs
    result["machine_before"] = before
    result["machine"] = machine_state()
    goals = GoalReport(f"Goals: task-queue matching, MariaDB, {args.cycles} cycles")
    at_size = (args.task_queues, args.queues) == GOAL_SIZE
    size = f"{args.task_queues:,} TQ x {args.queues:,} queues"
    cycle_goal = TQ_CYCLE if at_size else no_goal(f"task-queue matching, {size}: worst cycle", "s")
    memory_goal = (
        TQ_MEMORY if at_size else no_goal(f"task-queue matching, {size}: peak RSS above idle", "MB")
    )
    time_met = goals.add(cycle_goal, result["cycle_max_s"])["met"] is not False
    memory_met = goals.add(memory_goal, result["above_idle_mb"])["met"] is not False
    result["goals"] = goals.as_json()
    print(
        f"{result['task_queues_with_jobs_read']} task queues x {result['queues']} queues, "
        f"{args.cycles} cycles:"
    )
    print(
        f"  cycle {result['cycle_median_s']:.3f} s median, {result['cycle_max_s']:.3f} s worst "
        f"(read {result['read_median_s']:.3f} s + match {result['match_median_s']:.3f} s)"
    )
    print(
        f"  memory {result['rss_idle_mb']:.1f} MB idle, {result['rss_peak_mb']:.1f} MB peak: "
        f"{result['above_idle_mb']:.1f} MB above idle"
    )
    print(f"  dry-run explanations of all queues: {result['explain_all_detail_s']:.3f} s")
    print(f"  e.g. {result['example_explanation']}")
    print(f"  jobs demanded per cycle, all queues: {result['jobs_demanded_per_cycle']}")
    goals.print(console)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if time_met and memory_met else 1


if __name__ == "__main__":
    sys.exit(main())
