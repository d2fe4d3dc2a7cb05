"""The credential source the director injects into CE backends (director/ce/credentials.py)."""

from __future__ import annotations

import asyncio

import pytest

from director.ce.credentials import CredentialSource, NoCredentials, ServerCredentials
from director.errors import (
    CEPermanentError,
    CETemporaryError,
    ServerError,
    ServerUnavailable,
    TokenRefused,
)
from server.models import TokenResponse


class FakeIssuer:
    """Stands in for ServerClient.ce_token: counts calls, answers or fails as told."""

    def __init__(self, lifetime: int = 1200) -> None:
        self.lifetime = lifetime
        self.calls: list[tuple[str, int | None]] = []
        self.error: Exception | None = None

    async def ce_token(self, audience: str, lifetime_s: int | None = None) -> TokenResponse:
        self.calls.append((audience, lifetime_s))
        await asyncio.sleep(0)  # let concurrent askers pile up on the lock
        if self.error is not None:
            raise self.error
        return TokenResponse(
            access_token=f"token-{len(self.calls)}-{audience}", expires_in=self.lifetime
        )


async def test_a_token_per_audience_cached_until_a_third_of_its_life_is_left() -> None:
    now = [1000.0]
    issuer = FakeIssuer(lifetime=1200)
    source = ServerCredentials(issuer, clock=lambda: now[0])
    assert isinstance(source, CredentialSource)

    first = await source.token("https://ce1/arex", lifetime_s=1200)
    assert await source.token("https://ce1/arex") == first  # cached
    other = await source.token("https://ce2/arex")
    assert other != first
    assert len(issuer.calls) == 2

    now[0] += 799  # 401 s of 1200 left: still more than a third
    assert await source.token("https://ce1/arex") == first
    now[0] += 2  # less than a third left: renewed
    assert await source.token("https://ce1/arex") != first
    assert issuer.calls[0] == ("https://ce1/arex", 1200)


async def test_queues_asking_at_once_share_one_token() -> None:
    issuer = FakeIssuer()
    source = ServerCredentials(issuer)
    tokens = await asyncio.gather(*(source.token("https://ce/arex") for _ in range(5)))
    assert len(set(tokens)) == 1
    assert len(issuer.calls) == 1


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (ServerUnavailable("POST /api/auth/ce-token: no answer"), CETemporaryError),
        (ServerError("POST /api/auth/ce-token: 422 bad audience", 422), CETemporaryError),
        (TokenRefused("POST /api/auth/ce-token: 401", 401), CEPermanentError),
        (ServerError("POST /api/auth/ce-token: 403 not TrustedHost", 403), CEPermanentError),
    ],
    ids=["unavailable", "other-4xx", "401", "403"],
)
async def test_server_errors_become_ce_auth_errors(error: Exception, expected: type) -> None:
    issuer = FakeIssuer()
    issuer.error = error
    with pytest.raises(expected) as caught:
        await ServerCredentials(issuer).token("https://ce/arex")
    assert caught.value.category == "auth"
    assert str(error) in str(caught.value)
    assert caught.value.__cause__ is error


async def test_without_a_source_asking_is_a_permanent_auth_error() -> None:
    source = NoCredentials("dry run")
    with pytest.raises(CEPermanentError, match="dry run"):
        await source.token("https://ce/arex")
    with pytest.raises(CEPermanentError, match="dry run"):
        await source.proxy()
