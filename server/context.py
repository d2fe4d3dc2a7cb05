"""What every request needs, built once at start-up and kept on `app.state`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request

from server.db.engine import Database
from server.errors import InvalidRequest
from server.keys import KeyStore
from server.settings import ServerSettings


@dataclass
class ServerContext:
    settings: ServerSettings
    db: Database
    keys: KeyStore
    #: Per-process memo of slow, slowly changing reads (e.g. the monitor's filter choices);
    #: it lives and dies with the app.
    memo: dict[Any, Any] = field(default_factory=dict)

    def require_known_vo(self, vo: str) -> None:
        """A VO this server does not serve is a 400 (DiracX's answer), before anything is stored."""
        if vo not in self.settings.vos:
            raise InvalidRequest(f"Unknown VO {vo!r}")


async def _context(request: Request) -> ServerContext:
    # async on purpose: FastAPI runs a sync dependency in a worker thread, on every request
    ctx: ServerContext = request.app.state.ctx
    return ctx


Context = Annotated[ServerContext, Depends(_context)]
