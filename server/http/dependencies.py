"""What a route gets injected besides its policy: the server's context, kept on `app.state`."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from server.context import ServerContext


async def _context(request: Request) -> ServerContext:
    # async on purpose: FastAPI runs a sync dependency in a worker thread, on every request
    ctx: ServerContext = request.app.state.ctx
    return ctx


Context = Annotated[ServerContext, Depends(_context)]
