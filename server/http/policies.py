"""Access policies: one object per kind of caller, injected into every route.

A route declares who may call it by depending on exactly one policy; the policy authenticates
the bearer token and returns the caller's `Identity`, or raises 401/403. Finer checks (which
VO, which stamps) are made by the logic with the identity in hand (`server.access`). `tests/server/
test_policies.py` walks the route table so that no route escapes a policy.

    Public          no credentials (secret exchange, refresh, revoke, discovery, health)
    Reader          any user or service token (not a pilot, not a GenericPilot): reads its VO
    PilotManager    admin, TrustedHost (its VOs), GenericPilot (one pilot of its VO per call)
    PilotSelf       admin and managers as above, or a pilot token acting on its own stamp
    PilotOnly       a pilot token from the secret exchange
    LegacyPilot     a user token with GenericPilot
    Admin           ServiceAdministrator
    SiteManager     SiteManager (its VOs) or ServiceAdministrator: bans sites, CEs, queues
    PilotOperator   Operator (its VOs) or ServiceAdministrator: kills pilots, asks for outputs
    MonitorViewer   the pilot monitor's session cookie, then the Reader rule
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from server.access import check_reader
from server.context import ServerContext
from server.errors import Forbidden, Unauthorized
from server.identity import (
    ADMIN,
    GENERIC_PILOT,
    OPERATOR,
    SITE_MANAGER,
    TRUSTED_HOST,
    Identity,
    identity_from_token,
)
from server.logic.monitor_sessions import COOKIE, session_identity


def bearer_token(request: Request) -> str:
    return _bearer(request.headers.get("authorization", ""))


def _bearer(header: str) -> str:
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Missing bearer token")
    return token.strip()


class Policy:
    """Base of every policy; `check` says whether an authenticated identity may pass."""

    name = "policy"
    public = False

    async def __call__(self, request: Request) -> Identity | None:
        ctx: ServerContext = request.app.state.ctx
        return self.authorize(ctx, request.headers.get("authorization", ""))

    def authorize(self, ctx: ServerContext, authorization: str) -> Identity | None:
        """The caller's identity from its `Authorization` header, or 401/403 (None for a
        public route); the FastAPI dependency and the fast lane (`server.http.hotpath`) both
        decide here."""
        if self.public:
            return None
        identity = identity_from_token(ctx.keys, _bearer(authorization))
        self.check(identity)
        return identity

    def check(self, identity: Identity) -> None:
        raise NotImplementedError


class _Public(Policy):
    name = "public"
    public = True

    def check(self, identity: Identity) -> None:
        return None


class _Reader(Policy):
    name = "reader"

    def check(self, identity: Identity) -> None:
        check_reader(identity)


class _PilotManager(Policy):
    name = "pilot-manager"

    def check(self, identity: Identity) -> None:
        if identity.is_pilot:
            raise Forbidden("Pilot tokens cannot call operator endpoints.")
        if not identity.properties & {ADMIN, TRUSTED_HOST, GENERIC_PILOT}:
            raise Forbidden("Insufficient permissions to manage pilots.")


class _PilotSelf(Policy):
    name = "pilot-self"

    def check(self, identity: Identity) -> None:
        if identity.is_pilot:
            return
        _PilotManager.check(PILOT_MANAGER, identity)


class _PilotOnly(Policy):
    name = "pilot-only"

    def check(self, identity: Identity) -> None:
        if not identity.is_pilot:
            raise Forbidden("This endpoint takes a pilot token.")


class _LegacyPilot(Policy):
    name = "legacy-pilot"

    def check(self, identity: Identity) -> None:
        if identity.is_pilot or GENERIC_PILOT not in identity.properties:
            raise Forbidden("This endpoint takes a user token with the GenericPilot property.")


class _Admin(Policy):
    name = "admin"

    def check(self, identity: Identity) -> None:
        if not identity.is_admin:
            raise Forbidden("This endpoint is for service administrators.")


class _SiteManager(Policy):
    """DIRAC's SiteManager property (for the VOs of the token; the logic checks which) or an
    administrator (every VO): ban and allow sites, CEs and queues."""

    name = "site-manager"

    def check(self, identity: Identity) -> None:
        if identity.is_pilot:
            raise Forbidden("Pilot tokens cannot call operator endpoints.")
        if not identity.properties & {ADMIN, SITE_MANAGER}:
            raise Forbidden("Banning and allowing needs the SiteManager property.")


class _PilotOperator(Policy):
    """DIRAC's Operator property (for the VOs of the token; the logic checks which) or an
    administrator (every VO): kill pilots, ask for their CE output. DIRAC's PilotManager
    leaves `killPilot` to any authenticated caller; its WMSAdministrator, where killPilot
    began, defaults to Operator: the narrower rule. Not TrustedHost: a director carries
    kills out, it does not order them."""

    name = "pilot-operator"

    def check(self, identity: Identity) -> None:
        if identity.is_pilot:
            raise Forbidden("Pilot tokens cannot call operator endpoints.")
        if not identity.properties & {ADMIN, OPERATOR}:
            raise Forbidden("Killing pilots and fetching their output need the Operator property.")


class _Director(Policy):
    """Admins and TrustedHost service tokens: the director's own endpoints (leases, CE tokens)."""

    name = "director"

    def check(self, identity: Identity) -> None:
        if identity.is_pilot or not identity.properties & {ADMIN, TRUSTED_HOST}:
            raise Forbidden("This endpoint is for the site director's service token.")


class LoginRequired(Unauthorized):
    """No valid monitor session: the monitor answers with its login form, not a JSON 401."""


class _MonitorSession(Policy):
    """The pilot monitor's pages: a session cookie (see `server.logic.monitor_sessions`) instead of
    a bearer header, and then exactly what the Reader policy allows."""

    name = "monitor-session"

    async def __call__(self, request: Request) -> Identity:
        ctx: ServerContext = request.app.state.ctx
        try:
            return await session_identity(ctx, request.cookies.get(COOKIE))
        except Unauthorized as exc:
            raise LoginRequired(exc.detail) from exc

    def check(self, identity: Identity) -> None:
        READER.check(identity)


PUBLIC = _Public()
READER = _Reader()
PILOT_MANAGER = _PilotManager()
PILOT_SELF = _PilotSelf()
PILOT_ONLY = _PilotOnly()
LEGACY_PILOT = _LegacyPilot()
ADMIN_ONLY = _Admin()
DIRECTOR = _Director()
SITE_MANAGER_ONLY = _SiteManager()
PILOT_OPERATOR = _PilotOperator()
MONITOR = _MonitorSession()

Public = Annotated[None, Depends(PUBLIC)]
Reader = Annotated[Identity, Depends(READER)]
PilotManager = Annotated[Identity, Depends(PILOT_MANAGER)]
PilotSelf = Annotated[Identity, Depends(PILOT_SELF)]
PilotOnly = Annotated[Identity, Depends(PILOT_ONLY)]
LegacyPilot = Annotated[Identity, Depends(LEGACY_PILOT)]
AdminOnly = Annotated[Identity, Depends(ADMIN_ONLY)]
Director = Annotated[Identity, Depends(DIRECTOR)]
SiteManager = Annotated[Identity, Depends(SITE_MANAGER_ONLY)]
PilotOperator = Annotated[Identity, Depends(PILOT_OPERATOR)]
MonitorViewer = Annotated[Identity, Depends(MONITOR)]
