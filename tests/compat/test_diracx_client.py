"""The published DiracX 0.7.0 client, unchanged, against our server over HTTPS.

This is the wire-compatibility promise of the pilot management API: an operator's existing
DiracX tooling works against this server. The client reads the OpenID configuration, then
sends `Authorization: Bearer` with the token from its credentials file.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import LiveServer

diracx_client = pytest.importorskip("diracx.client.aio", reason="diracx-client is not installed")


@pytest.fixture
def diracx_env(
    live_server_tls: LiveServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    from diracx.core.models import TokenResponse
    from diracx.core.preferences import get_diracx_preferences
    from diracx.core.utils import write_credentials

    credentials = tmp_path / "credentials.json"
    write_credentials(
        TokenResponse(
            access_token=live_server_tls.admin_token,
            expires_in=3600,
            token_type="Bearer",
            refresh_token=None,
        ),  # type: ignore[arg-type]
        location=credentials,
    )
    monkeypatch.setenv("DIRACX_URL", live_server_tls.url)
    monkeypatch.setenv("DIRACX_CREDENTIALS_PATH", str(credentials))
    monkeypatch.setenv("DIRACX_CA_PATH", str(live_server_tls.ca_file))
    get_diracx_preferences.cache_clear()
    yield
    get_diracx_preferences.cache_clear()


async def test_register_update_search_summary_with_the_diracx_client(diracx_env: None) -> None:
    from diracx.client.aio import AsyncDiracClient

    stamp = uuid.uuid4().hex
    async with AsyncDiracClient() as api:
        await api.pilots.register_pilot(pilot_stamp=stamp, vo="lhcb", grid_site="LCG.Compat.ch")
        await api.pilots.update_pilot_metadata({stamp: {"Status": "Running", "BenchMark": 7.5}})
        found = await api.pilots.search(
            search=[{"parameter": "PilotStamp", "operator": "eq", "value": stamp}]
        )
        assert len(found) == 1
        assert found[0]["Status"] == "Running"
        assert found[0]["BenchMark"] == 7.5
        assert found[0]["GridSite"] == "LCG.Compat.ch"
        summary = await api.pilots.summary(
            grouping=["GridSite", "Status"],
            search=[{"parameter": "GridSite", "operator": "eq", "value": "LCG.Compat.ch"}],
        )
        assert summary == [{"GridSite": "LCG.Compat.ch", "Status": "Running", "count": 1}]


async def test_paged_search_and_conflict_with_the_diracx_client(diracx_env: None) -> None:
    from azure.core.exceptions import HttpResponseError
    from diracx.client.aio import AsyncDiracClient

    site = f"LCG.Page{uuid.uuid4().hex[:6]}.ch"
    stamps = [uuid.uuid4().hex for _ in range(3)]
    async with AsyncDiracClient() as api:
        for stamp in stamps:
            await api.pilots.register_pilot(pilot_stamp=stamp, vo="lhcb", grid_site=site)
        spec = [{"parameter": "GridSite", "operator": "eq", "value": site}]
        first = await api.pilots.search(search=spec, page=1, per_page=2)
        second = await api.pilots.search(search=spec, page=2, per_page=2)
        assert sorted(p["PilotStamp"] for p in [*first, *second]) == sorted(stamps)
        with pytest.raises(HttpResponseError) as conflict:
            await api.pilots.register_pilot(pilot_stamp=stamps[0], vo="lhcb")
        assert conflict.value.status_code == 409
