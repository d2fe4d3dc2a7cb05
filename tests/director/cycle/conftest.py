"""Shared set-up of the cycle's tests (`director/cycle/`): a config of one local CE on the live
TLS server in a site of its own, a director on it, and the reads the tests check with."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import pytest

from director.config import QueueRef
from director.loop import Director
from server.models import ScalarSearch, SearchParams
from tests.conftest import LiveServer
from tests.director.conftest import settings_for, write_config

CALLS = ("search_page", "register_bulk", "patch_metadata", "revoke_secrets")


class SiteConfig(Protocol):
    def __call__(self, folder: Path | None = None, **config: Any) -> tuple[Path, str]: ...


class DirectorOnSite(Protocol):
    def __call__(
        self, *, settings: dict[str, Any] | None = None, **config: Any
    ) -> tuple[Director, str]: ...


@pytest.fixture
def site_config(live_server_tls: LiveServer, tmp_path: Path) -> SiteConfig:
    """`site_config(**config)`: `write_config` on the live server with the director's token,
    in `tmp_path` (or `folder`); returns (path, site)."""

    def write(folder: Path | None = None, **config: Any) -> tuple[Path, str]:
        config.setdefault("token", live_server_tls.director_token)
        return write_config(
            folder or tmp_path,
            server_url=live_server_tls.url,
            ca_file=live_server_tls.ca_file,
            **config,
        )

    return write


@pytest.fixture
def director_on_site(site_config: SiteConfig, make_director: Any) -> DirectorOnSite:
    """`director_on_site(**config)`: a director on a fresh site's config (`settings` are
    overrides of the loaded settings); returns (director, site)."""

    def make(*, settings: dict[str, Any] | None = None, **config: Any) -> tuple[Director, str]:
        path, site = site_config(**config)
        director: Director = make_director(settings_for(path, **(settings or {})))
        return director, site

    return make


async def pilots_of(director: Director, site: str) -> dict[str, dict[str, Any]]:
    """The site's pilots on the server, by stamp."""
    assert director.client is not None
    rows = await director.client.search(
        SearchParams(search=[ScalarSearch(parameter="GridSite", operator="eq", value=site)])
    )
    return {r["PilotStamp"]: r for r in rows}


def only_queue(director: Director) -> QueueRef:
    assert len(director.queues) == 1
    return director.queues[0]


def count_calls(director: Director) -> Counter[str]:
    """Counts the director's calls of the server's bulk routes from now on."""
    client = director.client
    assert client is not None
    calls: Counter[str] = Counter()

    def counted(name: str, call: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            calls[name] += 1
            return await call(*args, **kwargs)

        return wrapper

    for name in CALLS:
        setattr(client, name, counted(name, getattr(client, name)))
    return calls
