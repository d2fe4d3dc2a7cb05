"""The FastAPI application: the routers, their exception handlers and middleware, assembled.

`create_app(settings)` builds everything from settings passed in; nothing is read from globals,
so tests make as many apps as they like (one per database backend). The HTTP machinery lives in
`server.http`, the routes in `server.routers`.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.asyncexitstack import AsyncExitStackMiddleware
from starlette.middleware import Middleware
from starlette.middleware.errors import ServerErrorMiddleware
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.types import ASGIApp

from server.context import ServerContext
from server.db.engine import Database
from server.db.migrate import upgrade
from server.http import handlers
from server.http.middleware import Front
from server.http.origin import CrossSiteRequest
from server.http.policies import LoginRequired
from server.installation import open_server_keys, record_vos
from server.routers import (
    auth,
    bans,
    cetokens,
    director,
    home,
    leases,
    logs,
    monitor,
    monitor_requests,
    pilot_requests,
    pilots,
    responses,
    secrets,
    wellknown,
)
from server.scheduler import MaintenanceRunner
from server.settings import ServerSettings


class _App(FastAPI):
    """FastAPI with a shorter middleware stack: Starlette's ServerErrorMiddleware (an error
    that escapes is a 500, and logged), ours (`Front`), then Starlette's ExceptionMiddleware
    (the handlers) and FastAPI's AsyncExitStackMiddleware around the router, as FastAPI builds
    it, without the two layers FastAPI adds for features this server does not use: OpenTelemetry
    exception recording (no tracer is configured) and `max_body_size` (None; `Front` limits
    bodies). Each layer is a call and a wrapped `send` on every request."""

    def build_middleware_stack(self) -> ASGIApp:
        error_handler = None
        handlers: dict[Any, Any] = {}
        for key, value in self.exception_handlers.items():
            if key in (500, Exception):
                error_handler = value
            else:
                handlers[key] = value
        middleware = [
            Middleware(ServerErrorMiddleware, handler=error_handler, debug=self.debug),
            *self.user_middleware,
            Middleware(ExceptionMiddleware, handlers=handlers, debug=self.debug),
            Middleware(AsyncExitStackMiddleware),
        ]
        app: ASGIApp = self.router
        for cls, args, kwargs in reversed(middleware):
            app = cls(app, *args, **kwargs)
        return app


def create_app(settings: ServerSettings, *, fast_lane: bool = True) -> FastAPI:
    """The app; without `fast_lane` every route is served by FastAPI alone (the reference the
    fast lane is compared with in tests/server/test_hotpath.py)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        db = Database(settings.database_url, pool_size=settings.db_pool_size)
        if settings.auto_migrate:
            await upgrade(db)
        keys = open_server_keys(settings)
        record_vos(settings.data_dir, settings.vos)
        app.state.ctx = ServerContext(settings=settings, db=db, keys=keys)
        # the scheduled maintenance: every process ticks, the lease holder runs it
        app.state.maintenance = MaintenanceRunner(app.state.ctx) if settings.maintenance else None
        if app.state.maintenance is not None:
            app.state.maintenance.start()
        # What exists now (modules, the app and its routes, the engine) lives as long as the
        # process: out of the collector's sight, a full collection no longer walks it. The
        # 10,000 models of a director's PATCH set such collections off, ~6 us a pilot.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            gc.unfreeze()  # several apps in one process (the tests) give theirs back
            if app.state.maintenance is not None:
                await app.state.maintenance.stop()
            await db.close()

    app = _App(
        title="Site Director server",
        version="0.1.0",
        lifespan=lifespan,
        description="Pilot and auth endpoints, wire-compatible with DiracX 0.7.0.",
    )
    handlers.install(app)
    app.add_exception_handler(LoginRequired, monitor.login_required)
    app.add_exception_handler(CrossSiteRequest, monitor.cross_site_refused)
    routers = (
        pilots.router,
        secrets.router,
        logs.router,
        auth.router,
        leases.router,
        director.router,
        bans.router,
        pilot_requests.router,
        cetokens.router,
        wellknown.router,
        monitor.router,
        monitor_requests.router,
        home.router,
    )
    for router in routers:
        app.include_router(responses.document(router))
    hot = (*pilots.HOT, *auth.HOT) if fast_lane else ()
    # the routes as their routers hold them: the objects FastAPI puts in scope["route"]
    app.add_middleware(Front, hot=hot, routes=[r for router in routers for r in router.routes])
    return app
