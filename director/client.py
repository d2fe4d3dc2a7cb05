"""`ServerClient`: the director's typed view of the pilot/auth server, over one httpx client.

Errors, as `director.errors` draws them:

    ServerError            the server refused (4xx); `.status` holds the HTTP status
    ├── ServerUnavailable  no answer, a timeout or a 5xx: nothing was done, retry later
    ├── TokenRefused       401: the server does not accept the director's token
    └── TokenUnavailable   the token file cannot be read: nothing was sent

httpx errors are translated here and chained with `from`, so callers never import httpx. Every
message names the URL it was about, so an operator sees which server is down or refusing.
The token is read from its file on each request when the file changed (mtime or size), so an
operator or a renewal job can replace it without restarting the daemon; its `exp` claim is
read (not verified: the server does that) for the expiry metric.

The director's own questions about pilots (a queue's live pilots, its counts, the live pilots
without a CE reference of many queues) are methods here returning typed rows (`LivePilot`,
`PilotCounts`), so the cycle never reads a search row by its DiracX column names.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
from collections.abc import AsyncIterator, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any, NamedTuple

import httpx
from joserfc import jws
from joserfc.errors import JoseError
from pydantic import BaseModel, Field, SecretStr, TypeAdapter

from director.batching import chunks
from director.errors import (
    ConfigError,
    ServerError,
    ServerUnavailable,
    TokenRefused,
    TokenUnavailable,
)
from server.models import (
    FINAL_STATUSES,
    Ban,
    BanRequest,
    BanTarget,
    BulkRegistration,
    KillRequest,
    LeaseGrant,
    LeaseRelease,
    LeaseRequest,
    MintedSecret,
    OutputFetchRequest,
    PilotMetadata,
    PilotOutput,
    PilotOutputUpload,
    PilotRequest,
    PilotStatus,
    QueueEmptyPilots,
    RequestOutcomes,
    ScalarSearch,
    SearchParams,
    SecretRevocation,
    SummaryParams,
    TokenResponse,
    VectorSearch,
)

log = logging.getLogger(__name__)

USER_AGENT = "site-director"
PER_PAGE = 1000
SEARCH_QUEUES = 1000
"""Queues per search of unreferenced pilots (four lists of at most this many names)."""
SEARCH_PAGE = 10_000
LIVE_STATUSES: tuple[str, ...] = tuple(
    status.value for status in PilotStatus if status not in FINAL_STATUSES
)
"""The statuses a pilot can still leave, as the server names them."""
_WAITING = ("Submitted", "Waiting", "Unknown")
_ROW_COLUMNS = ["PilotStamp", "PilotJobReference", "Status", "SubmissionTime"]
_QUEUE_COLUMNS = ("GridSite", "DestinationSite", "Queue", "VO")


class QueueId(NamedTuple):
    """A queue as the server's pilot records name it."""

    site: str
    """GridSite"""
    ce: str
    """DestinationSite"""
    queue: str
    """Queue: the CE's name of the queue"""
    vo: str
    """VO: whose pilots (one CE queue may serve several VOs, each counted on its own)"""

    def live_search(self) -> list[ScalarSearch | VectorSearch]:
        """The search for this queue's pilots that are not final."""
        return [
            ScalarSearch(parameter="GridSite", operator="eq", value=self.site),
            ScalarSearch(parameter="DestinationSite", operator="eq", value=self.ce),
            ScalarSearch(parameter="Queue", operator="eq", value=self.queue),
            ScalarSearch(parameter="VO", operator="eq", value=self.vo),
            VectorSearch(parameter="Status", operator="in", values=list(LIVE_STATUSES)),
        ]


def ce_reference(row: Mapping[str, Any]) -> str | None:
    """The CE reference of a pilot search row, or None before the director patched it on (the
    server stores the stamp as the reference of a pilot registered without one, as DiracX
    does)."""
    reference = row.get("PilotJobReference")
    if not reference or reference == row.get("PilotStamp"):
        return None
    return str(reference)


def _unix_time(value: Any) -> float | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


@dataclass(frozen=True, slots=True)
class LivePilot:
    """A pilot that is not final, as the director reads it from the server."""

    stamp: str
    status: PilotStatus
    """`Unknown` for a status this director does not know."""
    reference: str | None
    """The CE reference; None until the director patched it on (`ce_reference`)."""
    submitted_at: float | None
    """Unix time of the registration, None when the server did not say."""
    queue: QueueId

    @classmethod
    def from_row(cls, row: Mapping[str, Any], queue: QueueId) -> LivePilot:
        try:
            status = PilotStatus(str(row.get("Status")))
        except ValueError:
            status = PilotStatus.UNKNOWN
        return cls(
            stamp=str(row.get("PilotStamp")),
            status=status,
            reference=ce_reference(row),
            submitted_at=_unix_time(row.get("SubmissionTime")),
            queue=queue,
        )


@dataclass(frozen=True, slots=True)
class PilotCounts:
    """A queue's pilots as its slots count them."""

    waiting: int
    """Submitted, Waiting or Unknown."""
    running: int


def token_expiry(token: str) -> float | None:
    """The `exp` claim of a JWT as Unix time, read without verifying the signature (the server
    verifies; the director only wants to warn before its token runs out), or None."""
    try:
        claims = json.loads(jws.extract_compact(token.encode()).payload)
        exp = claims.get("exp") if isinstance(claims, dict) else None
    except (JoseError, ValueError, UnicodeDecodeError):
        return None
    return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None


class TokenSource:
    """The director's bearer token: a file reread when it changes, or a fixed value."""

    def __init__(self, path: Path | None = None, value: SecretStr | None = None) -> None:
        if path is None and value is None:
            raise ConfigError("server.token_file: required (or server.token)")
        self._path = path
        self._value = value.get_secret_value() if value is not None else ""
        self._seen: tuple[int, int] | None = None
        self.expires_at: float | None = token_expiry(self._value) if self._value else None
        """The `exp` of the token last read (Unix time), None when it has none or is no JWT."""

    def get(self) -> str:
        """The token; raises TokenUnavailable (naming the file) when it cannot be read."""
        if self._path is None:
            return self._value
        try:
            stat = os.stat(self._path)
            seen = (stat.st_mtime_ns, stat.st_size)
            if seen == self._seen:
                return self._value
            value = self._path.read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise TokenUnavailable(
                f"server.token_file: cannot read {self._path}: {reason}"
            ) from exc
        if not value:
            raise TokenUnavailable(f"server.token_file: {self._path} is empty")
        # a replaced token is worth a line in the daemon's log; the first reading is not
        log.log(logging.INFO if self._seen else logging.DEBUG, "token read from %s", self._path)
        self._value, self._seen = value, seen
        self.expires_at = token_expiry(value)
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


JSON_HEADERS = {"Content-Type": "application/json"}


class _MintedSecrets(BaseModel):
    """What the director reads of a `BulkRegistrationResult`: its secrets (the rest ignored)."""

    secrets: list[MintedSecret] = Field(default_factory=list)


_METADATA_UPDATES: TypeAdapter[dict[str, PilotMetadata]] = TypeAdapter(dict[str, PilotMetadata])
"""The body of `PATCH /api/pilots/metadata`: stamp -> the fields to set."""


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
        verify: Any = True
        if ca_bundle is not None:
            try:
                verify = ssl.create_default_context(cafile=str(ca_bundle))
            except (OSError, ssl.SSLError) as exc:
                reason = getattr(exc, "strerror", None) or str(exc)
                raise ConfigError(f"server.ca_bundle: cannot use {ca_bundle}: {reason}") from exc
        self.base_url = base_url.rstrip("/")
        self.token = token
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
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
        content: bytes | None = None,
        params: Mapping[str, Any] | None = None,
        ok: Iterable[int] = (HTTPStatus.OK,),
    ) -> httpx.Response:
        """`content`: a JSON body already serialised (by pydantic-core, for the bulk calls)."""
        response = await self._send(method, path, json=json, content=content, params=params)
        if response.status_code in set(ok):
            return response
        raise self._refusal(method, path, response)

    async def _send(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        content: bytes | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> httpx.Response:
        """One request; no answer becomes ServerUnavailable naming the URL."""
        url = f"{self.base_url}{path}"
        headers = JSON_HEADERS if content is not None else None
        try:
            return await self._http.request(
                method, path, json=json, content=content, params=params, headers=headers
            )
        except httpx.TimeoutException as exc:
            raise ServerUnavailable(f"{method} {url}: timed out") from exc
        except httpx.TransportError as exc:
            raise ServerUnavailable(
                f"{method} {url}: no answer: {type(exc).__name__}: {exc}"
            ) from exc

    def _refusal(self, method: str, path: str, response: httpx.Response) -> ServerError:
        url = f"{self.base_url}{path}"
        status = response.status_code
        if status == HTTPStatus.UNAUTHORIZED:
            return TokenRefused(
                f"{method} {url}: 401 the server refused the director's token: {_detail(response)}",
                status,
            )
        reason = f"{method} {url}: {status} {_detail(response)}"
        if status >= HTTPStatus.INTERNAL_SERVER_ERROR:
            return ServerUnavailable(reason, status)
        return ServerError(reason, status)

    # --- pilots -------------------------------------------------------------------------------

    async def register_bulk(self, body: BulkRegistration | bytes) -> dict[str, str]:
        """Register pilots (and mint their bound secrets) in one all-or-nothing call; the
        secrets minted, by stamp.

        Up to 10,000 pilots a call; `body` is a `BulkRegistration` or its JSON
        (`director.cycle.registration.registration_body`). Of the answer only the secrets are
        read, by pydantic-core in one pass: its 10,000 pilot records as models were ~10 MB of
        the director's peak per group."""
        if isinstance(body, BulkRegistration):
            body = body.__pydantic_serializer__.to_json(body)
        response = await self._call(
            "POST",
            "/api/pilots/bulk",
            content=body,
            ok=(HTTPStatus.CREATED, HTTPStatus.OK),
        )
        minted = _MintedSecrets.model_validate_json(response.content)
        return {m.pilot_stamp: m.pilot_secret for m in minted.secrets if m.pilot_stamp is not None}

    async def patch_metadata(self, updates: Mapping[str, PilotMetadata] | bytes) -> None:
        """Patch many pilots by stamp in one call: `updates` serialised in one pass, as above,
        or already as JSON (`director.cycle.registration.record_body`)."""
        if not updates:
            return
        if isinstance(updates, bytes):
            body = updates
        else:
            body = _METADATA_UPDATES.dump_json(dict(updates), by_alias=True, exclude_none=True)
        await self._call(
            "PATCH",
            "/api/pilots/metadata",
            content=body,
            ok=(HTTPStatus.NO_CONTENT, HTTPStatus.OK),
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

    async def live_pilots(self, queue: QueueId) -> list[LivePilot]:
        """The queue's pilots that are not final."""
        params = SearchParams(parameters=list(_ROW_COLUMNS), search=queue.live_search())
        return [LivePilot.from_row(row, queue) for row in await self.search(params)]

    async def pilot_counts(self, queue: QueueId) -> PilotCounts:
        """The queue's waiting and running pilots, by the server's records."""
        rows = await self.summary(SummaryParams(grouping=["Status"], search=queue.live_search()))
        by_status = {str(row.get("Status")): int(row.get("count", 0)) for row in rows}
        return PilotCounts(
            waiting=sum(by_status.get(status, 0) for status in _WAITING),
            running=by_status.get("Running", 0),
        )

    async def unreferenced_pilots(
        self, queues: Iterable[QueueId]
    ) -> dict[QueueId, list[LivePilot]]:
        """The live pilots without a CE reference of these queues, by queue: one search per
        `SEARCH_QUEUES` queues instead of one per queue. Only those pilots matter to the
        reconciliation, so the others are dropped page by page (a busy site has many)."""
        wanted = sorted(set(queues))
        found: dict[QueueId, list[LivePilot]] = {}
        for chunk in chunks(wanted, SEARCH_QUEUES):
            chunk_set = set(chunk)
            params = SearchParams(
                parameters=[*_ROW_COLUMNS, *_QUEUE_COLUMNS],
                search=[
                    VectorSearch(
                        parameter=column,
                        operator="in",
                        values=sorted({queue[index] for queue in chunk}),
                    )
                    for index, column in enumerate(_QUEUE_COLUMNS)
                ]
                + [VectorSearch(parameter="Status", operator="in", values=list(LIVE_STATUSES))],
            )
            async for rows in self.search_pages(params, SEARCH_PAGE):
                for row in rows:
                    queue = QueueId(*(str(row.get(column)) for column in _QUEUE_COLUMNS))
                    if queue in chunk_set and ce_reference(row) is None:
                        found.setdefault(queue, []).append(LivePilot.from_row(row, queue))
        return found

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

    # --- credentials for the CEs ------------------------------------------------------------

    async def ce_token(self, audience: str, lifetime_s: int | None = None) -> TokenResponse:
        """A short-lived token for the CE at `audience` (`POST /api/auth/ce-token`), which the
        director's service token (TrustedHost) buys. Callers cache it
        (`director.ce.credentials.ServerCredentials`); 403 when the token lacks TrustedHost."""
        body: dict[str, Any] = {"audience": audience}
        if lifetime_s is not None:
            body["lifetime"] = lifetime_s
        response = await self._call("POST", "/api/auth/ce-token", json=body)
        return TokenResponse.model_validate(response.json())

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
        path = "/api/director/leases"
        response = await self._send("DELETE", path, json=body.model_dump(mode="json"))
        if response.status_code >= HTTPStatus.BAD_REQUEST:
            raise self._refusal("DELETE", path, response)

    # --- queue reports ------------------------------------------------------------------------

    async def report_queues(self, body: bytes) -> None:
        """Replace this director's report of its queues (limits, back-off, last cycle): the
        JSON of a `QueuesReport` (`director.queue_report.report_body`)."""
        await self._call(
            "PUT",
            "/api/director/queues",
            content=body,
            ok=(HTTPStatus.NO_CONTENT, HTTPStatus.OK),
        )

    async def reported_factors(self) -> dict[tuple[str, str], tuple[float, datetime]]:
        """The submission factor last reported of each queue of the token's VOs, keyed by
        (VO, queue key), with when it was reported (the latest report when several
        directors serve a queue): what a restarted director starts from."""
        response = await self._call("GET", "/api/director/queues")
        found: dict[tuple[str, str], tuple[float, datetime]] = {}
        for row in response.json():
            factor, at = row.get("SubmissionFactor"), row.get("ReportedAt")
            if not isinstance(factor, int | float) or not isinstance(at, str):
                continue
            reported = datetime.fromisoformat(at)
            reported = reported.replace(tzinfo=UTC) if reported.tzinfo is None else reported
            key = (str(row.get("VO")), str(row.get("QueueKey")))
            if key not in found or found[key][1] < reported:
                found[key] = (float(factor), reported)
        return found

    async def empty_pilots(self, since: datetime) -> list[QueueEmptyPilots]:
        """Per queue of the token's VOs: Done pilots that ended since `since` with and
        without a job (one call for all queues, once per cycle)."""
        response = await self._call(
            "GET", "/api/director/queues/empty-pilots", params={"since": since.isoformat()}
        )
        return [QueueEmptyPilots.model_validate(item) for item in response.json()]

    # --- bans ---------------------------------------------------------------------------------

    async def list_bans(self, vo: str | None = None, *, history: bool = False) -> list[Ban]:
        """The bans in force in the token's VOs (or `vo`'s); `history` adds the ended ones."""
        params: dict[str, Any] = {"history": "true"} if history else {}
        if vo is not None:
            params["vo"] = vo
        response = await self._call("GET", "/api/bans", params=params)
        return [Ban.model_validate(item) for item in response.json()]

    async def ban(self, body: BanRequest) -> Ban:
        """Ban a site, CE or queue (the token needs the SiteManager property)."""
        response = await self._call(
            "POST",
            "/api/bans",
            json=body.model_dump(mode="json", exclude_none=True),
            ok=(HTTPStatus.CREATED,),
        )
        return Ban.model_validate(response.json())

    async def allow(self, body: BanTarget) -> list[Ban]:
        """Lift the ban in force on exactly this target; the bans lifted."""
        response = await self._call(
            "POST", "/api/bans/allow", json=body.model_dump(mode="json", exclude_none=True)
        )
        return [Ban.model_validate(item) for item in response.json()]

    # --- kills and pilot outputs ---------------------------------------------------------------

    async def request_kills(self, body: KillRequest) -> list[PilotRequest]:
        """Ask for pilots to be killed (the token needs the Operator property)."""
        response = await self._call(
            "POST",
            "/api/pilots/kills",
            json=body.model_dump(mode="json", exclude_none=True),
            ok=(HTTPStatus.CREATED,),
        )
        return [PilotRequest.model_validate(item) for item in response.json()]

    async def request_outputs(self, body: OutputFetchRequest) -> list[PilotRequest]:
        """Ask for pilots' CE output to be fetched (the token needs the Operator property)."""
        response = await self._call(
            "POST",
            "/api/pilots/output-requests",
            json=body.model_dump(mode="json", exclude_none=True),
            ok=(HTTPStatus.CREATED,),
        )
        return [PilotRequest.model_validate(item) for item in response.json()]

    async def list_requests(
        self,
        kind: str = "kill",
        *,
        state: str | None = None,
        vo: str | None = None,
        pilot_stamp: str | None = None,
    ) -> list[PilotRequest]:
        """Kill (`kind` "kill") or output-fetch ("output") requests of the token's VOs;
        `state="pending"`: those due now, what a director carries out, oldest first."""
        path = "/api/pilots/kills" if kind == "kill" else "/api/pilots/output-requests"
        params = {
            k: v for k, v in (("state", state), ("vo", vo), ("pilot_stamp", pilot_stamp)) if v
        }
        response = await self._call("GET", path, params=params)
        return [PilotRequest.model_validate(item) for item in response.json()]

    async def record_outcomes(self, kind: str, body: RequestOutcomes) -> list[PilotRequest]:
        """Record what came of requests (a director's token); the requests as they now stand."""
        path = "/api/pilots/kills" if kind == "kill" else "/api/pilots/output-requests"
        response = await self._call("PATCH", path, json=body.model_dump(mode="json"))
        return [PilotRequest.model_validate(item) for item in response.json()]

    async def upload_output(self, body: PilotOutputUpload) -> PilotOutput:
        """Upload one pilot's CE output, or that the CE no longer has it."""
        response = await self._call(
            "PUT", "/api/pilots/output", json=body.model_dump(mode="json", exclude_none=True)
        )
        return PilotOutput.model_validate(response.json())

    async def pilot_output(self, stamp: str) -> PilotOutput | None:
        """The pilot's stored CE output; None when none is stored (or not visible)."""
        path = "/api/pilots/output"
        response = await self._send("GET", path, params={"pilot_stamp": stamp})
        if response.status_code == HTTPStatus.NOT_FOUND:
            return None
        if response.status_code != HTTPStatus.OK:
            raise self._refusal("GET", path, response)
        return PilotOutput.model_validate(response.json())

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
