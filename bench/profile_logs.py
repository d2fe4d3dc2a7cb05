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
import gc
import json
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from server.app import create_app
from server.identity import TRUSTED_HOST, mint_user_token
from server.settings import ServerSettings

LINES = 250


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


async def call(app: Any, token: str, body: bytes) -> int:
    """One POST straight into the ASGI app; the status it answered."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/api/pilots/internal/message",
        "raw_path": b"/api/pilots/internal/message",
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"bench"),
            (b"authorization", f"Bearer {token}".encode()),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 1234),
        "server": ("127.0.0.1", 8000),
    }
    sent = False
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            await asyncio.sleep(3600)
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


async def main(batches: int, profile: Path | None, gc_mode: str = "on") -> None:
    data = Path(tempfile.mkdtemp(prefix="profile-logs-"))
    settings = ServerSettings(
        data_dir=data,
        db_url=f"sqlite+aiosqlite:///{data / 'bench.db'}",
        issuer="https://bench.test",
        vos=["lhcb"],
        maintenance=False,
    )
    app = create_app(settings)
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
        start = datetime.now(UTC)
        bodies = [batch_body(i, start) for i in range(batches + 20)]
        for i in range(20):  # warm-up
            assert await call(app, tokens[i % 100], bodies[i]) == 204
        if gc_mode == "freeze":
            gc.freeze()
        elif gc_mode == "off":
            gc.disable()
        profiler = cProfile.Profile() if profile else None
        cpu0 = time.process_time()
        if profiler:
            profiler.enable()
        for i in range(20, batches + 20):
            status = await call(app, tokens[i % 100], bodies[i])
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
    parser.add_argument(
        "--gc",
        choices=("on", "freeze", "off"),
        default="on",
        help="the cyclic collector as is, with the start-up heap frozen, or off (to see its cost)",
    )
    args = parser.parse_args()
    asyncio.run(main(args.batches, args.profile, args.gc))
