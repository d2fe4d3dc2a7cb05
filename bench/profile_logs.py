"""Log ingestion driven in process, for profiles: the ASGI app called directly (no socket, no
client library in the way), SQLite, batches of 250 lines as `bench/server_ops.py` sends them
(`advancing` timestamps).

Run: `.venv/bin/python bench/profile_logs.py [--batches 400] [--profile out.prof]`

Prints the process CPU time per line over the measured batches (this process is the server
here, so the figure includes nothing but the app, the event loop and SQLite), and with
`--profile` writes a cProfile of the measured batches (read it with `python -m pstats`).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from in_process import Driver, add_gc_option, set_gc, sqlite_app

from server.identity import TRUSTED_HOST, mint_user_token

LINES = 250
PATH = "/api/pilots/internal/message"


def batch_body(i: int, start: datetime) -> bytes:
    """Batch `i`: 250 lines a millisecond apart, starting i/4 s after `start` (as wrk sends)."""
    first = start + timedelta(microseconds=i * 250_000)
    lines = [
        {
            "timestamp": (first + timedelta(milliseconds=k)).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "severity": "INFO",
            "scope": "Pilot",
            "message": f"Line {k + 1} of the pilot log: checking the CVMFS repository and "
            "the local disk space",
        }
        for k in range(LINES)
    ]
    return json.dumps({"lines": lines}).encode()


async def main(batches: int, profile: Path | None, gc_mode: str = "on") -> None:
    app = sqlite_app("profile-logs-")
    async with app.router.lifespan_context(app):
        keys = app.state.ctx.keys
        director = mint_user_token(
            keys, sub="bench", vo="lhcb", properties=[TRUSTED_HOST], lifetime=3600
        )
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            stamps = [f"prof{i:04d}" for i in range(100)]
            r = await client.post(
                "/api/pilots/bulk",
                json={
                    "vo": "lhcb",
                    "mint_secrets": True,
                    "pilots": [{"pilot_stamp": s} for s in stamps],
                },
                headers={"Authorization": f"Bearer {director}"},
            )
            r.raise_for_status()
            tokens = []
            for minted in r.json()["secrets"]:
                pair = {k: minted[k] for k in ("pilot_stamp", "pilot_secret")}
                x = await client.post("/api/auth/secret-exchange", json=pair)
                x.raise_for_status()
                tokens.append(x.json()["access_token"])
        pilots = [Driver(app, token) for token in tokens]
        start = datetime.now(UTC)
        bodies = [batch_body(i, start) for i in range(batches + 20)]
        for i in range(20):  # warm-up
            assert await pilots[i % 100].call("POST", PATH, b"", bodies[i]) == 204
        set_gc(gc_mode)
        profiler = cProfile.Profile() if profile else None
        cpu0 = time.process_time()
        if profiler:
            profiler.enable()
        for i in range(20, batches + 20):
            status = await pilots[i % 100].call("POST", PATH, b"", bodies[i])
            assert status == 204, status
        if profiler:
            profiler.disable()
            profiler.dump_stats(profile)  # type: ignore[arg-type]
        cpu = time.process_time() - cpu0
    print(f"{batches} batches of {LINES}: {1e6 * cpu / (batches * LINES):.2f} us CPU a line")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=400)
    parser.add_argument("--profile", type=Path)
    add_gc_option(parser)
    args = parser.parse_args()
    asyncio.run(main(args.batches, args.profile, args.gc))
