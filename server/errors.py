"""Domain errors raised by the logic and db layers, and the one table mapping them to HTTP.

    ServerDomainError
    ├── InvalidRequest       400  bad search, unknown VO, contradictory fields
    │   └── InvalidValue     400  a value the database or its driver cannot take
    ├── Unauthorized         401  no, bad or expired credentials (secret, token)
    ├── Forbidden            403  authenticated, but not allowed to do this
    ├── NotFound             404  e.g. unknown pilot stamps
    ├── AlreadyExists        409  e.g. stamps already registered
    ├── TooLarge             413  over a size or count limit: nothing was stored
    ├── SearchTimeout        422  a search ran past the server's time budget and was stopped
    ├── RateLimited          429  over a rate limit: nothing was stored (Retry-After)
    ├── DatabaseUnavailable  503  the database does not answer (Retry-After)
    └── StorageFull          507  no space left for the database (Retry-After)

Logic never imports FastAPI; the database layer translates its driver's errors into these
(`server.db.driver_errors`); the app installs one exception handler that reads STATUS_OF.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any


class ServerDomainError(Exception):
    """`detail` is what the client sees, in DiracX's `{"detail": ...}` shape."""

    #: Seconds a client should wait before trying again (a `Retry-After` header), or None.
    retry_after: int | None = None

    def __init__(self, detail: Any) -> None:
        super().__init__(detail if isinstance(detail, str) else repr(detail))
        self.detail = detail


class InvalidRequest(ServerDomainError):
    """A bad search, an unknown VO, contradictory fields, or a value the database cannot store."""


class InvalidValue(InvalidRequest):
    """A value the database or its driver cannot take (an unpaired surrogate, an integer
    beyond 64 bits, a NUL in PostgreSQL text...): the client's fault, not an outage."""


class Unauthorized(ServerDomainError):
    """No, bad, expired or revoked credentials (token or pilot secret)."""


class Forbidden(ServerDomainError):
    """Authenticated, but not allowed to do this (role, VO or pilot)."""


class NotFound(ServerDomainError):
    """Unknown pilot stamps or secret."""


class AlreadyExists(ServerDomainError):
    """Pilot stamps already registered, or a clashing concurrent write."""


class TooLarge(ServerDomainError):
    """Over a size or count limit: nothing was stored."""


class SearchTimeout(ServerDomainError):
    """A search statement ran past `search_timeout` and was stopped: the same request would
    be stopped again, so a 4xx (never a 5xx that clients retry)."""


class RateLimited(ServerDomainError):
    """Over a rate limit: nothing was stored; `Retry-After` says when to try again."""

    def __init__(self, detail: Any, retry_after: int = 60) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class DatabaseUnavailable(ServerDomainError):
    """The database does not answer: retry later"""

    retry_after = 5


class StorageFull(ServerDomainError):
    """No space left for the database: nothing was stored, retry later"""

    retry_after = 30


STATUS_OF: dict[type[ServerDomainError], HTTPStatus] = {
    InvalidRequest: HTTPStatus.BAD_REQUEST,
    Unauthorized: HTTPStatus.UNAUTHORIZED,
    Forbidden: HTTPStatus.FORBIDDEN,
    NotFound: HTTPStatus.NOT_FOUND,
    AlreadyExists: HTTPStatus.CONFLICT,
    TooLarge: HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
    SearchTimeout: HTTPStatus.UNPROCESSABLE_ENTITY,
    RateLimited: HTTPStatus.TOO_MANY_REQUESTS,
    DatabaseUnavailable: HTTPStatus.SERVICE_UNAVAILABLE,
    StorageFull: HTTPStatus.INSUFFICIENT_STORAGE,
}


def status_of(error: ServerDomainError) -> HTTPStatus:
    for cls in type(error).__mro__:
        if cls in STATUS_OF:
            return STATUS_OF[cls]
    return HTTPStatus.BAD_REQUEST
