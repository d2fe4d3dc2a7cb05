"""The director's errors, so callers catch at the level they need.

    DirectorError
    ├── ConfigError              bad configuration: the program stops (exit 2)
    ├── DemandUnavailable        the demand source cannot say what is needed: submit nothing
    ├── ServerError              the pilot/auth server cannot be used for this request
    │   ├── ServerUnavailable    no answer, or a 5xx: retry later, submit nothing meanwhile
    │   ├── TokenRefused         401: the server refused the director's token
    │   └── TokenUnavailable     the token file is missing, unreadable or empty: nothing sent
    └── CEError                  a computing element failed; `category` says how
        ├── CETemporaryError     unreachable, timed out, CE-side error: back off the queue
        └── CEPermanentError     rejected, or auth refused: the pilots are Aborted with the reason

Foreign errors (httpx, htcondor2, OSError) are translated at the boundary and chained with
`from`, so a traceback still shows the original.
"""

from __future__ import annotations

from typing import Literal

CECategory = Literal["auth", "unreachable", "rejected", "ce_error"]


class DirectorError(Exception):
    """Base of every error the director raises on purpose."""


class ConfigError(DirectorError):
    """The configuration cannot be used; the message names the key path and the reason."""


class DemandUnavailable(DirectorError):
    """The demand source could not be read this cycle (its database is down, say): the
    queues it serves want nothing until it answers again, rather than every free slot."""


class ServerError(DirectorError):
    """The server refused a request (4xx), or could not be asked; `status` is the HTTP status
    (None when no answer came)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ServerUnavailable(ServerError):
    """The server did not answer, or answered 5xx: nothing was done, try again later."""


class TokenRefused(ServerError):
    """401: the server does not accept the director's token (expired, revoked, another
    installation's): every call fails the same way until the operator replaces it."""


class TokenUnavailable(ServerError):
    """The director's token file cannot be read now (missing, unreadable, empty). A subclass of
    ServerError so that a cycle treats it like a server it cannot use: it logs the reason and
    tries again next cycle, when the file may be back."""


class CEError(DirectorError):
    """A computing element failed. `category` classifies it for back-off and StatusReason."""

    temporary: bool = True

    def __init__(self, message: str, category: CECategory = "ce_error") -> None:
        super().__init__(message)
        self.category: CECategory = category

    @property
    def reason(self) -> str:
        """A one-line StatusReason for pilots this error hit (255 characters at most)."""
        return f"{self.category}: {self}"[:255]


class CETemporaryError(CEError):
    """Unreachable, timed out, or a CE-side error: back off the queue and retry later."""

    temporary = True


class CEPermanentError(CEError):
    """Rejected or refused: retrying the same thing will not help; pilots become Aborted."""

    temporary = False
