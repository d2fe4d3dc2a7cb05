"""The server's request path in process: CPU per request of the hot routes, and a profile.

Run: `.venv/bin/python bench/request_path.py [--requests 2000] [--profile DIR] [--only OP,...]
[--concurrency N]`

The app is called as an ASGI callable (no uvicorn, no socket, no HTTP client), so the CPU
time of this process per request (`time.process_time`) is the app's own: middleware, routing,
dependencies, validation, logic, database driver, serialisation. It is not the server's CPU
per request of the wrk/httpx benchmarks (uvicorn's HTTP parsing and the socket come on top,
~0.3 ms here) but moves with it, and load moves it little. SQLite in a temporary directory;
the table is filled as `bench/server_vs_diracx.py` fills it (register, then patch a quarter).

    register  POST /api/pilots/ one pilot per request
    patch     PATCH /api/pilots/metadata one stamp (Status, StatusReason)
    search    POST /api/pilots/search?page=2&per_page=100, Status filter, sort by time
    summary   POST /api/pilots/summary grouped by GridSite and Status
    exchange  POST /api/auth/secret-exchange with bound secrets minted in bulk, each once

With `--profile DIR`, each operation is run again under cProfile into DIR/<op>.prof
(`python -m pstats`, or `snakeviz`); the timed runs are not profiled.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from in_process import Driver, sqlite_app

from server.identity import ADMIN, mint_user_token

Request = tuple[str, str, bytes, bytes | None]  # method, path, query, body


def operations(prefix: str, creds: list[tuple[str, str]]) -> dict[str, Callable[[int], Request]]:
    def register(i: int) -> Request:
        body = {
            "pilot_stamp": f"{prefix}{i}",
            "vo": "lhcb",
            "grid_site": f"LCG.Site{i % 10}.org",
            "destination_site": f"ce{i % 7}.example.org",
        }
        return "POST", "/api/pilots/", b"", json.dumps(body).encode()

    def patch(i: int) -> Request:
        body = {f"{prefix}{i}": {"Status": "Running", "StatusReason": "bench"}}
        return "PATCH", "/api/pilots/metadata", b"", json.dumps(body).encode()

    search_body = json.dumps(
        {
            "search": [{"parameter": "Status", "operator": "eq", "value": "Submitted"}],
            "sort": [{"parameter": "SubmissionTime", "direction": "desc"}],
        }
    ).encode()
    summary_body = json.dumps({"grouping": ["GridSite", "Status"]}).encode()

    def exchange(i: int) -> Request:
        stamp, secret = creds[i % len(creds)]
        body = {"pilot_stamp": stamp, "pilot_secret": secret}
        return "POST", "/api/auth/secret-exchange", b"", json.dumps(body).encode()

    return {
        "register": register,
        "patch": patch,
        "search": lambda i: ("POST", "/api/pilots/search", b"page=2&per_page=100", search_body),
        "summary": lambda i: ("POST", "/api/pilots/summary", b"", summary_body),
        "exchange": exchange,
    }


EXPECTED = {"register": 201, "patch": 204, "search": 206, "summary": 200, "exchange": 200}


async def mint(driver: Driver, prefix: str, n: int) -> list[tuple[str, str]]:
    """`n` pilots registered in bulk with one bound secret each (the director's call)."""
    creds: list[tuple[str, str]] = []
    done = 0
    while done < n:
        batch = min(1000, n - done)
        pilots = [
            {"pilot_stamp": f"{prefix}x{done + k}", "grid_site": "LCG.X.org"} for k in range(batch)
        ]
        body = json.dumps({"vo": "lhcb", "mint_secrets": True, "pilots": pilots}).encode()
        status, answer = await driver.call_for_body("POST", "/api/pilots/bulk", b"", body)
        assert status == 201, status
        result = json.loads(answer)
        creds += [(s["pilot_stamp"], s["pilot_secret"]) for s in result["secrets"]]
        done += batch
    return creds


async def run(args: argparse.Namespace) -> dict[str, Any]:
    app = sqlite_app("bench-path-")
    results: dict[str, Any] = {}
    async with app.router.lifespan_context(app):
        keys = app.state.ctx.keys
        token = mint_user_token(keys, sub="bench", vo="lhcb", properties=[ADMIN], lifetime=86400)
        driver = Driver(app, token)
        anonymous = Driver(app, None)
        n = args.requests
        creds = await mint(driver, "c", 2 * n + 200)
        ops = operations("p", creds)
        # warm-up: every route, imports and caches settled; the table as the benchmark has it
        for i in range(args.fill):
            assert await driver.call(*ops["register"](100000 + i)) == 201
        for op in ("patch", "search", "summary", "exchange"):
            for i in range(20):
                d = anonymous if op == "exchange" else driver
                await d.call(*ops[op](100000 + i))
        selected = args.only.split(",") if args.only else list(EXPECTED)
        for op in selected:
            d = anonymous if op == "exchange" else driver
            make = ops[op]
            base = 0 if op != "exchange" else 200
            cpu0, wall0 = time.process_time(), time.perf_counter()
            for i in range(0, n, args.concurrency):
                batch = range(base + i, base + min(n, i + args.concurrency))
                statuses = await asyncio.gather(*(d.call(*make(k)) for k in batch))
                wrong = [status for status in statuses if status != EXPECTED[op]]
                if wrong:
                    raise RuntimeError(f"{op}: status {wrong[0]}")
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
            results[op] = {"cpu_ms_per_request": 1000 * cpu / n, "wall_ms": 1000 * wall / n}
            print(f"{op:9} {1000 * cpu / n:7.3f} ms CPU/req {1000 * wall / n:7.3f} ms wall")
        if args.profile:
            args.profile.mkdir(parents=True, exist_ok=True)
            for op in selected:
                d = anonymous if op == "exchange" else driver
                make = ops[op]
                base = n if op in ("register", "patch") else (200 + n if op == "exchange" else 0)
                if op == "patch":
                    base = 0  # already patched stamps: the same statement, re-run
                prof = cProfile.Profile()
                prof.enable()
                for i in range(min(n, 1000)):
                    await d.call(*make(base + i))
                prof.disable()
                prof.dump_stats(str(args.profile / f"{op}.prof"))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="timed requests per operation")
    parser.add_argument("--fill", type=int, default=2000, help="pilots registered before timing")
    parser.add_argument("--only", help="comma-separated operations (default: all)")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=1,
        help="requests in flight at once (the benchmarks against DiracX keep 16): one at a time "
        "hid the SQLite pool's opening and closing of connections (docs/performance.md, "
        "Connections closed in place)",
    )
    parser.add_argument("--profile", type=Path, help="cProfile each operation into DIR/<op>.prof")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = asyncio.run(run(args))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
