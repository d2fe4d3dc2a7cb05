"""`ServerClient`: the director's typed view of the pilot/auth server, over one httpx client.

Errors, as `director.errors` draws them:

    ServerError          the server refused (4xx); `.status` holds the HTTP status
    └── ServerUnavailable  no answer, a timeout or a 5xx: nothing was done, retry later

httpx errors are translated here and chained with `from`, so callers never import httpx.
The token is read from its file on each request when the file changed (mtime or size), so an
operator or a renewal job can replace it without restarting the daemon.
"""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import AsyncIterator, Generator, Iterable, Mapping, Sequence
from http import HTTPStatus
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr

from director.errors import ConfigError, ServerError, ServerUnavailable
from server.models import (
    BulkRegistration,
    BulkRegistrationResult,
    LeaseGrant,
    LeaseRelease,
    LeaseRequest,
    PilotMetadata,
    QueuesReport,
    SearchParams,
    SecretRevocation,
    SummaryParams,
)

log = logging.getLogger(__name__)

USER_AGENT = "site-director"
PER_PAGE = 1000


class TokenSource:
    """The director's bearer token: a file reread when it changes, or a fixed value."""

    def __init__(self, path: Path | None = None, value: SecretStr | None = None) -> None:
        if path is None and value is None:
            raise ConfigError("server.token_file: required (or server.token)")
        self._path = path
        self._value = value.get_secret_value() if value is not None else ""
        self._seen: tuple[int, int] | None = None

    def get(self) -> str:
        if self._path is None:
            return self._value
        try:
            stat = os.stat(self._path)
        except OSError as exc:
            raise ConfigError(f"server.token_file: cannot read {self._path}: {exc}") from exc
        seen = (stat.st_mtime_ns, stat.st_size)
        if seen != self._seen:
            value = self._path.read_text().strip()
            if not value:
                raise ConfigError(f"server.token_file: {self._path} is empty")
            self._value, self._seen = value, seen
            log.info("token loaded from %s", self._path)
        return self._value


class _BearerAuth(httpx.Auth):
    def __init__(self, source: TokenSource) -> None:
        self._source = source

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self._source.get()}"
        yield request


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(body, dict) and "detail" in body:
        return str(body["detail"])[:500]
    return str(body)[:200]


class ServerClient:
    """Typed calls to the server; one instance per daemon, closed with `aclose()`."""

    def __init__(
        self,
        base_url: str,
        token: TokenSource | None,
        *,
        ca_bundle: Path | None = None,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        verify: Any = (
            ssl.create_default_context(cafile=str(ca_bundle)) if ca_bundle is not None else True
        )
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            auth=_BearerAuth(token) if token is not None else None,
            verify=verify,
            timeout=timeout,
            transport=transport,
            headers={"User-Agent": USER_AGENT},
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> ServerClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        ok: Iterable[int] = (HTTPStatus.OK,),
    ) -> httpx.Response:
        try:
            response = await self._http.request(method, path, json=json, params=params)
        except httpx.TimeoutException as exc:
            raise ServerUnavailable(f"{method} {path}: timed out") from exc
        except httpx.TransportError as exc:
            raise ServerUnavailable(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
        if response.status_code in set(ok):
            return response
        reason = f"{method} {path}: {response.status_code} {_detail(response)}"
        if response.status_code >= HTTPStatus.INTERNAL_SERVER_ERROR:
            raise ServerUnavailable(reason, response.status_code)
        raise ServerError(reason, response.status_code)

    # --- pilots -------------------------------------------------------------------------------

    async def register_bulk(self, body: BulkRegistration) -> BulkRegistrationResult:
        """Register pilots (and mint their bound secrets) in one all-or-nothing call."""
        response = await self._call(
            "POST",
            "/api/pilots/bulk",
            json=body.model_dump(mode="json"),
            ok=(HTTPStatus.CREATED, HTTPStatus.OK),
        )
        return BulkRegistrationResult.model_validate(response.json())

    async def patch_metadata(self, updates: Mapping[str, PilotMetadata]) -> None:
        """Patch many pilots by stamp in one call."""
        if not updates:
            return
        body = {
            stamp: meta.model_dump(mode="json", by_alias=True, exclude_none=True)
            for stamp, meta in updates.items()
        }
        await self._call(
            "PATCH", "/api/pilots/metadata", json=body, ok=(HTTPStatus.NO_CONTENT, HTTPStatus.OK)
        )

    async def search_page(
        self, params: SearchParams, page: int = 1, per_page: int = PER_PAGE
    ) -> tuple[list[dict[str, Any]], int | None]:
        """One page of a search and the total the server reports (None if it did not say)."""
        response = await self._call(
            "POST",
            "/api/pilots/search",
            json=params.model_dump(mode="json"),
            params={"page": page, "per_page": per_page},
            ok=(
                HTTPStatus.OK,
                HTTPStatus.PARTIAL_CONTENT,
                HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE,
            ),
        )
        total = None
        content_range = response.headers.get("Content-Range", "")
        if "/" in content_range:
            try:
                total = int(content_range.rsplit("/", 1)[1])
            except ValueError:
                total = None
        if response.status_code == HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE:
            return [], total
        rows: list[dict[str, Any]] = response.json()
        if response.status_code == HTTPStatus.OK:
            total = len(rows) + (page - 1) * per_page
        return rows, total

    async def search_pages(
        self, params: SearchParams, per_page: int = PER_PAGE
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """Every row of a search, one page at a time (the caller keeps what it needs)."""
        seen = 0
        page = 1
        while True:
            batch, total = await self.search_page(params, page, per_page)
            if batch:
                yield batch
            seen += len(batch)
            if not batch or total is None or seen >= total:
                return
            page += 1

    async def search(self, params: SearchParams, per_page: int = PER_PAGE) -> list[dict[str, Any]]:
        """Every row of a search, page by page."""
        return [row async for batch in self.search_pages(params, per_page) for row in batch]

    async def summary(self, params: SummaryParams) -> list[dict[str, Any]]:
        response = await self._call(
            "POST", "/api/pilots/summary", json=params.model_dump(mode="json")
        )
        result: list[dict[str, Any]] = response.json()
        return result

    async def search_logs(self, params: SearchParams, per_page: int = 100) -> list[dict[str, Any]]:
        response = await self._call(
            "POST",
            "/api/pilots/search/logs",
            json=params.model_dump(mode="json"),
            params={"page": 1, "per_page": per_page},
            ok=(
                HTTPStatus.OK,
                HTTPStatus.PARTIAL_CONTENT,
                HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE,
            ),
        )
        if response.status_code == HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE:
            return []
        result: list[dict[str, Any]] = response.json()
        return result

    # --- secrets ------------------------------------------------------------------------------

    async def revoke_secrets(self, stamps: Sequence[str]) -> None:
        """Revoke the secrets bound to these stamps (their pilots will never use them)."""
        if not stamps:
            return
        body = SecretRevocation(pilot_stamps=list(stamps))
        await self._call(
            "POST",
            "/api/pilots/secrets/revoke",
            json=body.model_dump(mode="json"),
            ok=(HTTPStatus.OK, HTTPStatus.NO_CONTENT),
        )

    # --- leases -------------------------------------------------------------------------------

    async def take_leases(self, holder: str, queues: Sequence[str], ttl: int) -> LeaseGrant:
        """Take or renew per-queue leases; the grant lists the queues this holder may work."""
        body = LeaseRequest(holder=holder, queues=list(queues), ttl_seconds=ttl)
        response = await self._call(
            "POST",
            "/api/director/leases",
            json=body.model_dump(mode="json"),
            ok=(HTTPStatus.OK, HTTPStatus.CREATED),
        )
        return LeaseGrant.model_validate(response.json())

    async def release_leases(self, holder: str, queues: Sequence[str]) -> None:
        body = LeaseRelease(holder=holder, queues=list(queues))
        try:
            response = await self._http.request(
                "DELETE", "/api/director/leases", json=body.model_dump(mode="json")
            )
        except httpx.TransportError as exc:
            raise ServerUnavailable(f"DELETE /api/director/leases: {exc}") from exc
        if response.status_code >= HTTPStatus.BAD_REQUEST:
            raise ServerError(
                f"DELETE /api/director/leases: {response.status_code} {_detail(response)}",
                response.status_code,
            )

    # --- queue reports ------------------------------------------------------------------------

    async def report_queues(self, body: QueuesReport) -> None:
        """Replace this director's report of its queues (limits, back-off, last cycle)."""
        await self._call(
            "PUT",
            "/api/director/queues",
            json=body.model_dump(mode="json"),
            ok=(HTTPStatus.NO_CONTENT, HTTPStatus.OK),
        )

    async def health(self) -> dict[str, Any]:
        response = await self._call("GET", "/api/health")
        result: dict[str, Any] = response.json()
        return result


def make_client(
    url: str,
    *,
    token_file: Path | None,
    token: SecretStr | None,
    ca_bundle: Path | None,
    timeout: float,
) -> ServerClient:
    return ServerClient(url, TokenSource(token_file, token), ca_bundle=ca_bundle, timeout=timeout)
