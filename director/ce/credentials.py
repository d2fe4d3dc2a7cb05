"""Where CE backends get the credentials they present to their CEs: an interface the director
injects, so that no backend ever talks to the server itself.

    CredentialSource          what a backend is given at construction
    ├── NoCredentials         the dry run, or a director without a server: every ask fails
    └── ServerCredentials     CE tokens from this project's server, cached per audience

A backend asks `await credentials.token(audience)` for a bearer token whose `aud` is its CE
(ARC's REST interface; HTCondor-CE SciTokens, which the backend writes to a file for the
HTCondor client with `write_private_file`), or `await credentials.proxy()` for an X.509 proxy
file. It never caches a token itself: the source keeps one per audience until shortly before it
expires (a third of its lifetime is left), so a token never runs out in flight and many queues
of one CE share one token. A CE block opts in with `ce_token: {lifetime_s}` (`CETokenOptions`).

Errors, as `director.errors` draws them, so a backend passes them on unchanged:
`CETemporaryError("auth")` when the issuer cannot answer now (down, timed out, the director's
own token file missing for a moment): the queue backs off; `CEPermanentError("auth")` when it
refuses (401/403): retrying will not help until the operator acts.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from director.errors import CEPermanentError, CETemporaryError, ServerError, TokenRefused
from server.models import TokenResponse

RENEW_FRACTION = 1 / 3
"""A cached token is renewed once less than this part of its lifetime is left."""


class CETokenOptions(BaseModel):
    """`ce_token: {}` in a CE block: present tokens for this CE issued by the director's own
    server (`POST /api/auth/ce-token`, through the injected credential source); the director's
    server token must carry TrustedHost."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    lifetime_s: int = Field(default=1200, ge=60, le=86400, description="asked for; may be capped")


@runtime_checkable
class CredentialSource(Protocol):
    """What the director hands every CE backend at construction."""

    async def token(self, audience: str, *, lifetime_s: int | None = None) -> str:
        """A bearer token for the CE at `audience` (its URL, or what the CE expects in `aud`).

        `lifetime_s` asks for a lifetime; the issuer may cap it. The same token comes back until
        shortly before it expires. Raises CETemporaryError or CEPermanentError (category
        "auth"), as the module docstring says.
        """
        ...

    async def proxy(self) -> Path:
        """The path of a valid X.509 proxy file (mode 0600). Same errors as `token`."""
        ...

    async def aclose(self) -> None:
        """Release what the source holds; called once when the director stops."""
        ...


class NoCredentials:
    """The source of a director that cannot fetch credentials (the dry run has no server):
    asking is a permanent auth error naming why, so a backend configured for issued tokens
    fails clearly instead of sending nothing."""

    def __init__(self, why: str = "this director has no credential source") -> None:
        self.why = why

    async def token(self, audience: str, *, lifetime_s: int | None = None) -> str:
        raise CEPermanentError(f"no CE token for {audience}: {self.why}", "auth")

    async def proxy(self) -> Path:
        raise CEPermanentError(f"no X.509 proxy: {self.why}", "auth")

    async def aclose(self) -> None:
        return None


class TokenIssuer(Protocol):
    """The part of `director.client.ServerClient` that `ServerCredentials` uses."""

    async def ce_token(self, audience: str, lifetime_s: int | None = None) -> TokenResponse: ...


@dataclass(frozen=True)
class _Cached:
    value: str
    renew_at: float


class ServerCredentials:
    """CE tokens from this project's server (`POST /api/auth/ce-token` with the director's
    service token), through the director's one `ServerClient`; cached per audience."""

    def __init__(self, issuer: TokenIssuer, *, clock: Callable[[], float] = time.time) -> None:
        self._issuer = issuer
        self._clock = clock
        self._tokens: dict[str, _Cached] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def token(self, audience: str, *, lifetime_s: int | None = None) -> str:
        lock = self._locks.setdefault(audience, asyncio.Lock())
        async with lock:  # queues of one CE asking at once get one token, not one each
            cached = self._tokens.get(audience)
            if cached is not None and self._clock() < cached.renew_at:
                return cached.value
            try:
                issued = await self._issuer.ce_token(audience, lifetime_s)
            except TokenRefused as exc:
                raise CEPermanentError(f"the server refused a CE token: {exc}", "auth") from exc
            except ServerError as exc:
                if exc.status in (HTTPStatus.UNAUTHORIZED, HTTPStatus.FORBIDDEN):
                    raise CEPermanentError(f"the server refused a CE token: {exc}", "auth") from exc
                raise CETemporaryError(f"the server gave no CE token: {exc}", "auth") from exc
            lifetime = max(0, issued.expires_in)
            self._tokens[audience] = _Cached(
                issued.access_token, self._clock() + lifetime * (1 - RENEW_FRACTION)
            )
            return issued.access_token

    async def proxy(self) -> Path:
        raise CEPermanentError("the server issues no X.509 proxies", "auth")

    async def aclose(self) -> None:
        """Nothing of its own: the director closes its server client."""
        self._tokens.clear()


def write_private_file(path: Path, content: str) -> None:
    """Replace `path` with `content`, mode 0600, atomically: a reader (the HTCondor client at
    its next authentication) sees the old file or the new one, never a part of either. The
    folder is made 0700 if missing. Raises OSError."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # made 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            os.fchmod(handle.fileno(), 0o600)
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
