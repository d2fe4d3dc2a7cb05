"""The FastAPI application: the routers, their exception handlers and middleware, assembled.

`create_app(settings)` builds everything from settings passed in; nothing is read from globals,
so tests make as many apps as they like (one per database backend). The HTTP machinery lives in
`server.http`, the routes in `server.routers`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

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


def create_app(settings: ServerSettings, *, fast_lane: bool = True) -> FastAPI:
    """The app; without `fast_lane` every route is served by FastAPI alone (the reference the
    fast lane is compared with in tests/server/test_hotpath.py)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        db = Database(settings.database_url)
        if settings.auto_migrate:
            await upgrade(db)
        keys = open_server_keys(settings)
        record_vos(settings.data_dir, settings.vos)
        app.state.ctx = ServerContext(settings=settings, db=db, keys=keys)
        # the scheduled maintenance: every process ticks, the lease holder runs it
        app.state.maintenance = MaintenanceRunner(app.state.ctx) if settings.maintenance else None
        if app.state.maintenance is not None:
            app.state.maintenance.start()
        try:
            yield
        finally:
            if app.state.maintenance is not None:
                await app.state.maintenance.stop()
            await db.close()

    app = FastAPI(
        title="Site Director server",
        version="0.1.0",
        lifespan=lifespan,
        description="Pilot and auth endpoints, wire-compatible with DiracX 0.7.0.",
    )
    handlers.install(app)
    app.add_exception_handler(LoginRequired, monitor.login_required)
    app.add_exception_handler(CrossSiteRequest, monitor.cross_site_refused)
    for router in (
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
    ):
        app.include_router(responses.document(router))
    hot = (*pilots.HOT, *auth.HOT) if fast_lane else ()
    app.add_middleware(Front, hot=hot, routes=app.routes)
    return app
