"""Helpers for the director's tests: a config writer, a director on the live TLS server, a
clock the tests move by hand, and clean-up of local CE processes."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from director.config import Settings, load_config
from director.daemon import client_for
from director.loop import Director

TEST_TEMPLATES = Path(__file__).parent / "templates"


class ManualClock:
    """Wall time that moves only when a test says so."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def queue_block(**overrides: Any) -> dict[str, Any]:
    block: dict[str, Any] = {
        "max_total_pilots": 4,
        "max_waiting_pilots": 4,
        "pilots_per_cycle": 2,
        "environment": {"TEST_PILOT_SLEEP": "0", "TEST_PILOT_EXIT": "0"},
    }
    block.update(overrides)
    return block


def write_config(
    folder: Path,
    *,
    server_url: str,
    ca_file: Path | None,
    token: str | None,
    queues: dict[str, dict[str, Any]] | None = None,
    slots: int = 4,
    site: str | None = None,
    director: dict[str, Any] | None = None,
    test_wrapper: bool = True,
    ce_name: str = "localhost",
) -> tuple[Path, str]:
    """A config file with one local CE; returns (path, site name). Each call gets a site of
    its own, so tests sharing the session's server never see each other's pilots."""
    site = site or f"Test.{uuid.uuid4().hex[:10]}.org"
    token_file = folder / "director.token"
    if token is not None:
        token_file.write_text(token + "\n")
        token_file.chmod(0o600)
    config: dict[str, Any] = {
        "server": {
            "url": server_url,
            "token_file": str(token_file),
            "ca_bundle": str(ca_file) if ca_file else None,
        },
        "director": {
            "work_dir": str(folder / "work"),
            "template_dir": str(TEST_TEMPLATES) if test_wrapper else None,
            "name": "test-director",
            "backoff": {"initial_seconds": 60, "max_seconds": 600},
            **(director or {}),
        },
        "vos": ["lhcb"],
        "pilot": {"files": [{"name": "dirac-pilot.py", "template": "demo-pilot.py"}]},
        "sites": {
            site: {
                "ces": {
                    ce_name: {
                        "ce": {"kind": "local", "slots": slots},
                        "queues": queues or {"default": queue_block()},
                    }
                }
            }
        },
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, site


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def make_director(
    tmp_path: Path, clock: ManualClock
) -> AsyncIterator[Callable[[Settings], Director]]:
    """Directors on the live server; their local CE processes are killed at the end."""
    made: list[Director] = []

    def make(settings: Settings) -> Director:
        director = Director(settings, client=client_for(settings), clock=clock)
        made.append(director)
        return director

    yield make
    for director in made:
        for ref in director.queues:
            ce = director.ce_for(ref)
            jobs = await ce.list_jobs(director.spec_for(ref))
            await ce.kill([j.reference for j in jobs])
        await director.close()
        if director.client is not None:
            await director.client.aclose()


def settings_for(path: Path, **overrides: Any) -> Settings:
    return load_config(path, overrides)


async def revoked_stamps(live: Any) -> set[str]:
    """Stamps whose bound secrets the server lists as revoked (an admin's view)."""
    import ssl

    import httpx

    async with httpx.AsyncClient(
        base_url=live.url,
        verify=ssl.create_default_context(cafile=str(live.ca_file)),
        headers={"Authorization": f"Bearer {live.admin_token}"},
    ) as admin:
        response = await admin.get("/api/pilots/secrets")
    assert response.status_code == 200, response.text
    return {s for info in response.json() if info["revoked"] for s in info["pilot_stamps"]}
