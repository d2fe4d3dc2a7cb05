"""`ServerClient` against the real server (HTTPS on loopback)."""

from __future__ import annotations

from pathlib import Path

import pytest

from director.daemon import client_for
from director.errors import ServerError
from server.models import SummaryParams
from tests.conftest import LiveServer
from tests.director.conftest import settings_for, write_config


async def test_the_token_file_is_read_again_when_it_changes(
    live_server_tls: LiveServer, tmp_path: Path
) -> None:
    path, _ = write_config(
        tmp_path, server_url=live_server_tls.url, ca_file=live_server_tls.ca_file, token="not-a-jwt"
    )
    async with client_for(settings_for(path)) as client:
        with pytest.raises(ServerError) as refused:
            await client.summary(SummaryParams(grouping=["Status"]))
        assert refused.value.status == 401
        (tmp_path / "director.token").write_text(live_server_tls.director_token + "\n")
        assert isinstance(await client.summary(SummaryParams(grouping=["Status"])), list)
