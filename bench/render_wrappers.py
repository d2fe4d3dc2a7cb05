"""How long rendering 10,000 pilot wrappers takes (the director renders one per pilot).

Run: .venv/bin/python bench/render_wrappers.py [N] [--json out.json]. Prints the figures;
asserts nothing (timings are not asserted in tests). Two queues: one whose pilot files are
downloaded on the worker node (the production case), and one that embeds a 100 kB pilot file in
every wrapper, where copying the bytes of each wrapper is most of the cost. Issue [6/6] sets no
goal for rendering: the figures are printed with "no goal".
"""

from __future__ import annotations

import argparse
import secrets
import time
from pathlib import Path
from typing import Any

from goals import GoalReport, check_load, machine_state, no_goal
from harness import write_json
from rich.console import Console

from director.render import TemplateRenderer
from director.wrapper import WrapperFile, WrapperOptions, WrapperRenderer

DOWNLOADED = (
    WrapperFile("dirac-pilot.py", sha512="0" * 128),
    WrapperFile("pilotTools.py", sha512="1" * 128),
    WrapperFile("pilotCommands.py", sha512="2" * 128),
)
EMBEDDED = (WrapperFile("dirac-pilot.py", content=secrets.token_bytes(100_000)),)


def bench(label: str, files: tuple[WrapperFile, ...], n: int) -> dict[str, Any]:
    options = WrapperOptions(
        server_url="https://diracx.example.org",
        vo="lhcb",
        site="LCG.Example.org",
        ce="ce.example.org",
        queue="long",
        setup="LHCb-Production",
        extensions=("LHCb",),
        pilot_files=files,
        pilot_locations=("https://diracx.example.org/pilot", "file:///cvmfs/lhcb.cern.ch/pilot"),
    )
    started = time.perf_counter()
    prepared = WrapperRenderer(TemplateRenderer()).prepare(options)
    prepare_s = time.perf_counter() - started
    stamps = [secrets.token_hex(16) for _ in range(n)]
    pilot_secret = secrets.token_hex(32)
    started = time.perf_counter()
    size = 0
    for stamp in stamps:
        size += len(prepared.render(stamp, pilot_secret))
    elapsed = time.perf_counter() - started
    print(
        f"{label}: prepared in {prepare_s * 1000:.1f} ms; {n} wrappers of "
        f"{size / n / 1024:.1f} kB in {elapsed:.3f} s ({elapsed / n * 1e6:.1f} us each)"
    )
    return {
        "label": label.strip(),
        "wrappers": n,
        "wrapper_kb": round(size / n / 1024, 1),
        "prepare_ms": round(prepare_s * 1000, 2),
        "render_s": round(elapsed, 4),
        "us_each": round(elapsed / n * 1e6, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n", type=int, nargs="?", default=10_000, help="wrappers per queue")
    parser.add_argument("--json", type=Path, help="write the JSON here (default: none)")
    args = parser.parse_args()
    console = Console(width=150)
    before = check_load(console)
    results = [
        bench("downloaded pilot files", DOWNLOADED, args.n),
        bench("embedded 100 kB pilot ", EMBEDDED, args.n),
    ]
    goals = GoalReport("Goals: wrapper rendering")
    for r in results:
        goals.add(no_goal(f"render {args.n:,} wrappers, {r['label']}", "s"), r["render_s"])
    goals.print(console)
    if args.json:
        report = {
            "benchmark": "render_wrappers",
            "machine_before": before,
            "machine": machine_state(),
            "results": results,
            "goals": goals.as_json(),
        }
        write_json(args.json, report)


if __name__ == "__main__":
    main()
