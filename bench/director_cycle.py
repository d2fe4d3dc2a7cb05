"""One full director submission cycle against the real server, with a sink CE.

Run: `.venv/bin/python bench/director_cycle.py [--queues 100,1000,10000] [--json out.json]`

Each size runs in its own process (so its peak memory is its own) against a fresh server on
loopback (SQLite, one uvicorn worker): `Director.run_cycle()` over N queues that each want 10
pilots (fill demand, 10 per cycle), with the packaged demo pilot embedded in each wrapper and
every CE a `SinkCE` (bench/sink_ce.py) that accepts submissions in memory. The cycle is the
real one (see `director/cycle/`): leases, one search for the reconciliation (per 1,000
queues), per queue the CE's list (only for queues with unreferenced pilots: none on a fresh
server), CE counts and plan, then per group of whole queues of at most
`director.group_pilots` pilots (10,000; `--group-pilots`) one bulk registration with minted
secrets, render, submit and one patch of references, group k+1 registering while group k
submits; the queue report.

Phases are timed by wrapping the director's steps; a phase's figure is the sum of its calls'
durations. The per-queue phases (prepare, reconcile, count, render, submit) run with
`director.concurrency` queues in flight, so theirs can exceed the wall time; search,
register+mint, patch and report are calls made once per cycle (per group), so theirs are the
calls' wall time (a group's register+mint overlaps the previous group's render, submit and
patch). Also reported: wall time, director CPU and peak RSS, server CPU.

Goal (issue [6/6], bench/goals.py): 10,000 queues / 100,000 pilots in <= 10 s end to end, the
director's peak memory <= 150 MB; printed last, met or missed (other sizes: "no goal").
`--queues 100` for a quick check.
"""

from __future__ import annotations

import director.errors  # noqa: F401 - first, as `site-director run` does (director/__init__.py)

# isort: split
import argparse
import asyncio
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from goals import (
    DIRECTOR_QUEUES,
    DIRECTOR_RSS,
    DIRECTOR_WALL,
    GoalReport,
    check_load,
    machine_state,
    no_goal,
)
from harness import cpu_seconds, site_director_token, start_site_director, write_json
from pydantic import SecretStr
from rich.console import Console
from rich.table import Table
from sink_ce import SinkCE, SinkStats

from director.ce.base import ComputingElement, QueueSpec
from director.client import LivePilot, PilotCounts, QueueId, ServerClient, TokenSource
from director.config import QueueRef, Settings
from director.cycle import submission as submission_module
from director.cycle.context import CycleContext
from director.cycle.outcomes import QueueOutcome
from director.cycle.reconcile import reconcile
from director.loop import Director
from server.models import (
    BulkRegistration,
    LeaseGrant,
    PilotMetadata,
)

PILOTS_PER_QUEUE = 10
CES_PER_SITE = 5
QUEUES_PER_CE = 2
PHASES = (
    "leases",
    "search",
    "prepare",
    "reconcile",
    "count",
    "register+mint",
    "render",
    "submit",
    "patch",
    "report",
)


class Phases:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def add(self, phase: str, started: float) -> None:
        self.seconds[phase] += time.perf_counter() - started
        self.calls[phase] += 1


class TimedClient(ServerClient):
    """The real client; register, patch and lease calls are timed."""

    phases: Phases

    async def register_bulk(self, body: BulkRegistration | bytes) -> dict[str, str]:
        t = time.perf_counter()
        try:
            return await super().register_bulk(body)
        finally:
            self.phases.add("register+mint", t)

    async def patch_metadata(self, updates: Mapping[str, PilotMetadata] | bytes) -> None:
        t = time.perf_counter()
        try:
            await super().patch_metadata(updates)
        finally:
            self.phases.add("patch", t)

    async def take_leases(self, holder: str, queues: Sequence[str], ttl: int) -> LeaseGrant:
        t = time.perf_counter()
        try:
            return await super().take_leases(holder, queues, ttl)
        finally:
            self.phases.add("leases", t)

    async def report_queues(self, body: bytes) -> None:
        t = time.perf_counter()
        try:
            await super().report_queues(body)
        finally:
            self.phases.add("report", t)

    async def unreferenced_pilots(
        self, queues: Iterable[QueueId]
    ) -> dict[QueueId, list[LivePilot]]:
        t = time.perf_counter()
        try:
            return await super().unreferenced_pilots(queues)
        finally:
            self.phases.add("search", t)


class TimedPrepared:
    """A prepared wrapper whose render() is timed."""

    def __init__(self, inner: Any, phases: Phases) -> None:
        self._inner = inner
        self._phases = phases

    def render(self, stamp: str, secret: str) -> str:
        t = time.perf_counter()
        try:
            return str(self._inner.render(stamp, secret))
        finally:
            self._phases.add("render", t)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def timed_director(
    settings: Settings, client: ServerClient, ces: dict[str, ComputingElement], phases: Phases
) -> Director:
    """The real director, its per-queue steps timed: prepare (the first call per queue builds
    its wrapper, later calls hit the cache), reconcile and count."""
    director = Director(settings, client=client, ces=ces)
    prepared = director.factory.prepared
    count = director.submission.count

    def timed_prepared(ref: QueueRef) -> Any:
        t = time.perf_counter()
        inner = prepared(ref)
        phases.add("prepare", t)
        return TimedPrepared(inner, phases)

    async def timed_count(
        ref: QueueRef, ce: ComputingElement, dry_run: bool, outcome: QueueOutcome
    ) -> PilotCounts:
        t = time.perf_counter()
        try:
            return await count(ref, ce, dry_run, outcome)
        finally:
            phases.add("count", t)

    async def timed_reconcile(
        context: CycleContext,
        ref: QueueRef,
        ce: ComputingElement,
        spec: QueueSpec,
        unreferenced: Sequence[LivePilot],
    ) -> None:
        t = time.perf_counter()
        try:
            await reconcile(context, ref, ce, spec, unreferenced)
        finally:
            phases.add("reconcile", t)

    director.factory.prepared = timed_prepared  # type: ignore[method-assign]
    director.submission.count = timed_count  # type: ignore[method-assign]
    submission_module.reconcile = timed_reconcile  # type: ignore[attr-defined]  # one director
    return director


def settings_for(
    queues: int, url: str, token: str, work_dir: Path, concurrency: int, group_pilots: int
) -> Settings:
    ces_per_site = CES_PER_SITE * QUEUES_PER_CE
    sites: dict[str, Any] = {}
    for s in range((queues + ces_per_site - 1) // ces_per_site):
        ces: dict[str, Any] = {}
        for c in range(CES_PER_SITE):
            qs = {}
            for q in range(QUEUES_PER_CE):
                if len(sites) * ces_per_site + c * QUEUES_PER_CE + q >= queues:
                    break
                qs[f"q{q}"] = {
                    "max_total_pilots": 1000,
                    "max_waiting_pilots": 1000,
                    "pilots_per_cycle": PILOTS_PER_QUEUE,
                }
            if qs:
                ces[f"ce{c}.site{s:05d}.example.org"] = {"ce": {"kind": "local"}, "queues": qs}
        sites[f"LCG.Site{s:05d}.org"] = {"vo": "lhcb", "ces": ces}
    return Settings(
        server={"url": url, "token": SecretStr(token), "timeout_seconds": 300},
        vos=["lhcb"],
        director={
            "work_dir": work_dir,
            "concurrency": concurrency,
            "name": "bench",
            "group_pilots": group_pilots,
        },
        pilot={
            "setup": "LHCb-Production",
            # what the pilots would call (an https URL); the director talks to the loopback one
            "diracx_url": "https://diracx.example.org",
            "pilot_script": "dirac-pilot.py",
            "files": [{"name": "dirac-pilot.py", "template": "demo-pilot.py"}],
            "python_commands": ["python3"],
        },
        sites=sites,
    )


async def one_cycle(
    queues: int, url: str, token: str, work: Path, concurrency: int, group_pilots: int
) -> dict[str, Any]:
    phases = Phases()
    stats = SinkStats()
    settings = settings_for(queues, url, token, work, concurrency, group_pilots)
    client = TimedClient(url, TokenSource(None, SecretStr(token)), timeout=300)
    client.phases = phases
    ces: dict[str, ComputingElement] = {}
    for ref in settings.queues():
        key = f"{ref.site}/{ref.ce}"
        if key not in ces:
            ces[key] = SinkCE(ref.ce, stats)
    director = timed_director(settings, client, ces, phases)
    cpu0 = time.process_time()
    started = time.perf_counter()
    outcomes = await director.run_cycle()
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu0
    await director.close()
    await client.aclose()
    errors = [o.error for o in outcomes if o.error]
    submitted = sum(o.submitted for o in outcomes)
    return {
        "queues": queues,
        "pilots": submitted,
        "errors": errors[:5],
        "error_count": len(errors),
        "wall_s": round(wall, 3),
        "ms_per_pilot": round(1000 * wall / max(submitted, 1), 3),
        "director_cpu_s": round(cpu, 3),
        "director_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "concurrency": concurrency,
        "group_pilots": group_pilots,
        "wrapper_kb": round(stats.wrapper_bytes / max(stats.submitted, 1) / 1024, 1),
        "phases_s": {
            p: round(phases.seconds.get(p, 0.0) + (stats.submit_seconds if p == "submit" else 0), 3)
            for p in PHASES
        },
        "phase_calls": {
            p: phases.calls.get(p, stats.calls if p == "submit" else 0) for p in PHASES
        },
    }


def child(args: argparse.Namespace) -> None:
    result = asyncio.run(
        one_cycle(
            args.one,
            args.url,
            os.environ["BENCH_DIRECTOR_TOKEN"],
            Path(args.work),
            args.concurrency,
            args.group_pilots,
        )
    )
    print(json.dumps(result))


def parent(args: argparse.Namespace) -> None:
    console = Console(stderr=True, width=150)
    before = check_load(console)
    results = []
    for n in [int(x) for x in args.queues.split(",")]:
        work = Path(tempfile.mkdtemp(prefix=f"bench-director-{n}-"))
        server = start_site_director(work / "server")
        try:
            token = site_director_token(
                work / "server", sub="bench-director", properties=["TrustedHost"],
                issuer=server.url,
            )  # fmt: skip
            server_cpu0 = cpu_seconds(server.pid)
            out = subprocess.run(
                [sys.executable, __file__, "--one", str(n), "--url", server.url,
                 "--work", str(work / "director"), "--concurrency", str(args.concurrency),
                 "--group-pilots", str(args.group_pilots)],
                check=True, capture_output=True, text=True,
                env={**os.environ, "BENCH_DIRECTOR_TOKEN": token},
            )  # fmt: skip
            result = json.loads(out.stdout.strip().splitlines()[-1])
            result["server_cpu_s"] = round(cpu_seconds(server.pid) - server_cpu0, 3)
            result["server_peak_rss_mb"] = round(server.peak_rss_mb(), 1)
        finally:
            server.stop()
            shutil.rmtree(work, ignore_errors=True)
        console.print(result)
        if result["error_count"]:
            raise SystemExit(f"{n} queues: {result['error_count']} queues failed")
        results.append(result)
    goals = GoalReport("Goals: one director cycle")
    for r in results:
        if r["queues"] == DIRECTOR_QUEUES:
            goals.add(DIRECTOR_WALL, r["wall_s"])
            goals.add(DIRECTOR_RSS, r["director_peak_rss_mb"])
        else:
            size = f"director cycle, {r['queues']:,} queues / {r['pilots']:,} pilots"
            goals.add(no_goal(f"{size}: wall", "s"), r["wall_s"])
            goals.add(no_goal(f"{size}: director peak RSS", "MB"), r["director_peak_rss_mb"])
    report = {
        "benchmark": "director_cycle",
        "pilots_per_queue": PILOTS_PER_QUEUE,
        "machine_before": before,
        "machine": machine_state(),
        "results": results,
        "goals": goals.as_json(),
    }
    table = Table(title="One director submission cycle (real server on loopback, SinkCE)")
    for col in ("queues", "pilots", "wall s", "ms/pilot", "director CPU s", "server CPU s",
                "director RSS MB", *PHASES):  # fmt: skip
        table.add_column(col, justify="right")
    for r in results:
        table.add_row(
            str(r["queues"]), str(r["pilots"]), f"{r['wall_s']:.2f}", f"{r['ms_per_pilot']:.3f}",
            f"{r['director_cpu_s']:.2f}", f"{r['server_cpu_s']:.2f}",
            f"{r['director_peak_rss_mb']:.0f}", *(f"{r['phases_s'][p]:.2f}" for p in PHASES),
        )  # fmt: skip
    console.print(table)
    console.print("phase columns: seconds summed over the calls (per-queue phases overlap)")
    goals.print(console)
    write_json(args.json, report)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queues", default="100,1000,10000")
    parser.add_argument("--concurrency", type=int, default=8, help="director.concurrency")
    parser.add_argument("--group-pilots", type=int, default=10_000, help="director.group_pilots")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        child(args)
    else:
        parent(args)


if __name__ == "__main__":
    main()
