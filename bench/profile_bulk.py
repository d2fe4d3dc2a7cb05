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
import statistics
import time
from pathlib import Path

from in_process import Driver, add_gc_option, set_gc, sqlite_app
from pydantic import TypeAdapter

from server.identity import TRUSTED_HOST, mint_user_token
from server.models import BulkRegistration, PilotMetadata, SecretConstraints

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


async def main(groups: int, pilots: int, profile: Path | None, gc_mode: str = "on") -> None:
    app = sqlite_app("profile-bulk-")
    async with app.router.lifespan_context(app):
        keys = app.state.ctx.keys
        token = mint_user_token(
            keys, sub="bench", vo="lhcb", properties=[TRUSTED_HOST], lifetime=3600
        )
        director = Driver(app, token)
        # warm-up: a small group, not measured
        warm = register_body(9999, 100)
        status, _ = await director.call_for_body("POST", "/api/pilots/bulk", b"", warm)
        assert status == 201, status
        status, _ = await director.call_for_body(
            "PATCH", "/api/pilots/metadata", b"", patch_body(9999, 100)
        )
        assert status == 204, status
        set_gc(gc_mode)
        register_cpu: list[float] = []
        patch_cpu: list[float] = []
        profiler = cProfile.Profile() if profile else None
        for group in range(groups):
            reg, patch = register_body(group, pilots), patch_body(group, pilots)
            if profiler:
                profiler.enable()
            cpu0 = time.process_time()
            status, answer = await director.call_for_body("POST", "/api/pilots/bulk", b"", reg)
            cpu1 = time.process_time()
            assert status == 201, (status, answer[:300])
            status, answer = await director.call_for_body(
                "PATCH", "/api/pilots/metadata", b"", patch
            )
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
    add_gc_option(parser)
    args = parser.parse_args()
    asyncio.run(main(args.groups, args.pilots, args.profile, args.gc))
