"""The director's two bulk calls driven in process, for profiles: `POST /api/pilots/bulk`
(register pilots, mint one bound secret each) and `PATCH /api/pilots/metadata` (their CE
references), the ASGI app called directly on SQLite, with bodies shaped as the director sends
them (`director/client.py`: the models serialised by pydantic-core).

Run: `.venv/bin/python bench/profile_bulk.py [--groups 5] [--pilots 10000] [--profile out.prof]`

Prints the process CPU time per pilot of each call, over the measured groups (this process is
the server here; the bodies are made before the clock starts, so the figure is the app, the
event loop and SQLite only). The database grows by a group per round, as in a director cycle.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from server.app import create_app
from server.identity import TRUSTED_HOST, mint_user_token
from server.models import BulkRegistration, PilotMetadata, SecretConstraints
from server.settings import ServerSettings

_UPDATES: TypeAdapter[dict[str, PilotMetadata]] = TypeAdapter(dict[str, PilotMetadata])


def register_body(group: int, pilots: int) -> bytes:
    """A group as the director registers it: 10 pilots a queue, secrets minted."""
    body = BulkRegistration.model_validate(
        {
            "vo": "lhcb",
            "pilots": [
                {
                    "pilot_stamp": f"{group:04d}{i:08d}abcdef0123456789ab",
                    "grid_type": "HTCondorCE",
                    "grid_site": f"LCG.Site{i // 100}.org",
                    "destination_site": f"ce{i // 10}.site.org",
                    "queue": f"queue{i // 10}",
                }
                for i in range(pilots)
            ],
            "mint_secrets": True,
            "secret_constraints": SecretConstraints(
                expiration_minutes=60, pilot_secret_use_count_max=1
            ),
        }
    )
    return body.__pydantic_serializer__.to_json(body)


def patch_body(group: int, pilots: int) -> bytes:
    """The group's references, as the director patches them after submitting."""
    updates = _UPDATES.validate_python(
        {
            f"{group:04d}{i:08d}abcdef0123456789ab": {
                "pilot_job_reference": f"htcondor://ce{i // 10}.site.org/{group}.{i}"
            }
            for i in range(pilots)
        }
    )
    return _UPDATES.dump_json(updates, by_alias=True, exclude_none=True)


async def call(app: Any, token: str, method: str, path: str, body: bytes) -> tuple[int, bytes]:
    """One request straight into the ASGI app; its status and body."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
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
    chunks: list[bytes] = []

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
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    return status, b"".join(chunks)


async def main(groups: int, pilots: int, profile: Path | None, gc_mode: str = "on") -> None:
    data = Path(tempfile.mkdtemp(prefix="profile-bulk-"))
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
        token = mint_user_token(
            keys, sub="bench", vo="lhcb", properties=[TRUSTED_HOST], lifetime=3600
        )
        # warm-up: a small group, not measured
        warm = register_body(9999, 100)
        status, _ = await call(app, token, "POST", "/api/pilots/bulk", warm)
        assert status == 201, status
        status, _ = await call(app, token, "PATCH", "/api/pilots/metadata", patch_body(9999, 100))
        assert status == 204, status
        if gc_mode == "freeze":
            gc.freeze()
        elif gc_mode == "off":
            gc.disable()
        register_cpu: list[float] = []
        patch_cpu: list[float] = []
        profiler = cProfile.Profile() if profile else None
        for group in range(groups):
            reg, patch = register_body(group, pilots), patch_body(group, pilots)
            if profiler:
                profiler.enable()
            cpu0 = time.process_time()
            status, answer = await call(app, token, "POST", "/api/pilots/bulk", reg)
            cpu1 = time.process_time()
            assert status == 201, (status, answer[:300])
            status, answer = await call(app, token, "PATCH", "/api/pilots/metadata", patch)
            cpu2 = time.process_time()
            if profiler:
                profiler.disable()
            assert status == 204, (status, answer[:300])
            register_cpu.append(cpu1 - cpu0)
            patch_cpu.append(cpu2 - cpu1)
        if profiler:
            profiler.dump_stats(profile)  # type: ignore[arg-type]

    def us(values: list[float]) -> str:
        per = [1e6 * v / pilots for v in values]
        median = statistics.median(per)
        return f"median {median:.1f} us/pilot (min {min(per):.1f}, max {max(per):.1f})"

    print(f"{groups} groups of {pilots} pilots")
    print(f"  POST /api/pilots/bulk       {us(register_cpu)}")
    print(f"  PATCH /api/pilots/metadata  {us(patch_cpu)}")
    total = [a + b for a, b in zip(register_cpu, patch_cpu, strict=True)]
    print(f"  both                        {us(total)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", type=int, default=5)
    parser.add_argument("--pilots", type=int, default=10_000)
    parser.add_argument("--profile", type=Path)
    parser.add_argument(
        "--gc",
        choices=("on", "freeze", "off"),
        default="on",
        help="the cyclic collector as is, with the start-up heap frozen, or off (to see its cost)",
    )
    args = parser.parse_args()
    asyncio.run(main(args.groups, args.pilots, args.profile, args.gc))
