"""The goals of the benchmarks (issue [6/6]) and how a run reports against them.

Why one module: every script prints its figures the same way, "figure, measured, goal, met or
missed" (or "no goal"), and puts the same `goals` list into its JSON, so docs/performance.md
reads every result alike. The goals live here, next to each other, not scattered as constants.

Also the machine's load before a run: on these shared 2-core machines a figure measured while
something else runs is not a figure (/work/shared/reference/benchmarking.md), so every script
prints the load average first and warns when it is 1 or more.

Imports only the standard library and rich: render_wrappers.py and taskqueue_match.py use it
without the server harness.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rich.console import Console
from rich.table import Table

LOADED = 1.0  # load average (1 min) from which a run is flagged as measured on a loaded machine


@dataclass(frozen=True)
class Goal:
    """A figure's goal: `limit` in `unit`; `better` says which side meets it. `inclusive`:
    the limit itself meets it (<= / >=), else it must be strictly beaten (< / >). No limit:
    the figure is reported with "no goal"."""

    name: str
    unit: str
    limit: float | None
    better: Literal["lower", "higher"] = "lower"
    inclusive: bool = True

    def met(self, measured: float) -> bool | None:
        if self.limit is None:
            return None
        if self.better == "lower":
            return measured <= self.limit if self.inclusive else measured < self.limit
        return measured >= self.limit if self.inclusive else measured > self.limit

    def text(self) -> str:
        if self.limit is None:
            return "no goal"
        sign = {("lower", True): "<=", ("lower", False): "<", ("higher", True): ">=",
                ("higher", False): ">"}[(self.better, self.inclusive)]  # fmt: skip
        return f"{sign} {self.limit:,g} {self.unit}"


# --- the goals of issue [6/6] ---------------------------------------------------------------

VS_DIRACX_OPS = ("register", "patch", "search", "summary")


def vs_diracx(op: str) -> Goal:
    """Server CPU per request, DiracX 0.7.0's over ours (same client, SQLite, one worker,
    medians of 3 alternating rounds), on each workload."""
    return Goal(f"{op}: DiracX / ours, server CPU per request", "x", 10.0, "higher")


EXCHANGE_CPU = Goal("secret exchange: server CPU each", "ms", 1.0)
LOG_LINE_CPU = Goal("log lines (batches of 250): server CPU a line", "us", 20.0)
BULK_RATE = Goal("bulk registration with secrets (earlier goal)", "pilots/s", 5000.0, "higher")
DIRECTOR_QUEUES = 10_000  # the cycle's goals hold for this size (100,000 pilots)
DIRECTOR_WALL = Goal("director cycle, 10,000 queues / 100,000 pilots: wall", "s", 10.0)
DIRECTOR_RSS = Goal("director cycle, 10,000 queues: director peak RSS", "MB", 150.0)
SCALE_PILOTS = 1_000_000  # the scale run's goals hold for this size
SCALE_RSS = Goal("server peak RSS, 1M pilots", "MB", 120.0)
SCALE_SEARCH_P95 = Goal("search p95, 1M pilots (earlier goal)", "ms", 50.0, inclusive=False)
SCALE_SUMMARY = Goal("summary worst, 1M pilots (earlier goal)", "s", 1.0, inclusive=False)
TQ_CYCLE = Goal("task-queue matching, 10,000 TQ x 1,000 queues: worst cycle", "s", 1.0,
                inclusive=False)  # fmt: skip
TQ_MEMORY = Goal("task-queue matching: peak RSS above idle", "MB", 50.0, inclusive=False)


WORKERS_CPU_RATIO = 1.15


def workers_cpu(
    op: str, workers: int, limit: float | None = WORKERS_CPU_RATIO, load: str = ""
) -> Goal:
    """Server CPU per request (master and workers summed) with `workers` uvicorn workers on
    PostgreSQL over one worker's, medians of 3 alternating rounds: several workers must not
    cost more CPU per request (bench/workers.py). `limit=None`: a run too small to judge.
    `load`: how the load differed from the default (8 connections for every worker count)."""
    suffix = f", {load}" if load else ""
    return Goal(f"{op}: {workers} workers / 1, server CPU per request{suffix}", "x", limit)


def no_goal(name: str, unit: str) -> Goal:
    return Goal(name, unit, None)


# --- a run's report -------------------------------------------------------------------------


@dataclass
class GoalReport:
    """The figures of one run against their goals: printed as one table, and as the JSON's
    `goals` list (figure, measured, unit, goal, met: true, false or null for no goal)."""

    title: str
    rows: list[dict[str, Any]] = field(default_factory=list)

    def add(self, goal: Goal, measured: float, note: str = "") -> dict[str, Any]:
        met = goal.met(measured)
        row = {
            "figure": goal.name,
            "measured": float(f"{measured:.4g}"),
            "unit": goal.unit,
            "goal": goal.text(),
            "limit": goal.limit,
            "better": goal.better,
            "met": met,
        }
        if note:
            row["note"] = note
        self.rows.append(row)
        return row

    def print(self, console: Console) -> None:
        table = Table(title=self.title)
        for col in ("figure", "measured", "goal", "met"):
            table.add_column(col, justify="left" if col == "figure" else "right")
        for row in self.rows:
            verdict = {True: "[green]met[/]", False: "[red]missed[/]", None: "-"}
            measured = f"{row['measured']:,.4g} {row['unit']}"
            if abs(row["measured"]) >= 1000:
                measured = f"{row['measured']:,.0f} {row['unit']}"
            figure = row["figure"] + (f" ({row['note']})" if row.get("note") else "")
            table.add_row(figure, measured, row["goal"], verdict[row["met"]])
        console.print(table)

    def as_json(self) -> list[dict[str, Any]]:
        return self.rows


# --- the machine ----------------------------------------------------------------------------


def machine_state() -> dict[str, Any]:
    """Load average and CPU pressure (PSI) now: how busy the shared machine was."""
    state: dict[str, Any] = {"cpus": os.cpu_count()}
    try:
        state["loadavg"] = Path("/proc/loadavg").read_text().split()[:3]
        state["cpu_pressure"] = Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except OSError:
        pass
    return state


def check_load(console: Console) -> dict[str, Any]:
    """Print the load average before a run and warn from 1 up; returns the machine's state
    for the JSON (`machine_before`)."""
    state = machine_state()
    load = state.get("loadavg", [])
    console.print(f"load average before the run: {' '.join(load) or 'unknown'} "
                  f"({state['cpus']} cores)")  # fmt: skip
    state["loaded"] = bool(load) and float(load[0]) >= LOADED
    if state["loaded"]:
        console.print(
            f"[bold red]WARNING[/]: load average {load[0]} >= {LOADED:g}: the machine is busy; "
            "figures measured now are not figures (wall times most, CPU times less)"
        )
    return state
