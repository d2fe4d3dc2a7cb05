"""Monitor sessions: the operator pastes an access token once; the browser keeps a cookie.

The cookie holds a token the server signs with its own keys but with its own JWT `typ`
(`monitor+jwt`), so it is useless as a bearer token on the API, and an API token is useless
as a cookie. It lives at most `SESSION_LIFETIME` seconds and never beyond the pasted token.
The pasted token itself is neither stored nor echoed.

The signature alone does not make a session: its id (`jti`) must also name a live row in the
database (`server.db.monitor_sessions`), which logout revokes. So a cookie copied before a
logout is refused after it, by every worker and host that shares the database.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any

from server.access import check_reader
from server.clock import utcnow
from server.context import ServerContext
from server.db import monitor_sessions as db
from server.errors import Forbidden, Unauthorized
from server.identity import ACCESS_TYP, Identity, identity_from_token
from server.keys import InvalidToken

COOKIE = "sd_monitor"
COOKIE_PATH = "/monitor"
SESSION_TYP = "monitor+jwt"
SESSION_LIFETIME = 3600


def _utc(moment: int) -> datetime:
    return datetime.fromtimestamp(moment, UTC).replace(tzinfo=None)


async def open_session(ctx: ServerContext, pasted: str) -> tuple[str, int]:
    """A session token for a valid operator token, and its lifetime in seconds; the session
    is recorded in the database before the token is returned.

    The same rule as the API's Reader policy: no pilot tokens, no GenericPilot-only tokens.
    Raises Unauthorized (bad token) or Forbidden (a token that may not read pilots).
    """
    keys = ctx.keys
    identity = identity_from_token(keys, pasted.strip(), ACCESS_TYP)
    check_reader(identity)
    claims = keys.verify(pasted.strip(), typ=ACCESS_TYP)
    moment = int(time.time())
    expires = min(int(claims["exp"]), moment + SESSION_LIFETIME)
    session_id = uuid.uuid4().hex
    session: dict[str, Any] = {
        "sub": identity.sub,
        "vo": identity.vo,
        "iss": keys.issuer,
        "jti": session_id,
        "iat": moment,
        "exp": expires,
        "dirac_properties": sorted(identity.properties),
        "dirac_vos": sorted(identity.extra_vos),
    }
    if identity.group:
        session["dirac_group"] = identity.group
    async with ctx.db.transaction() as conn:
        await db.insert_session(
            conn,
            session_id=session_id,
            sub=identity.sub,
            vo=identity.vo,
            issued_at=_utc(moment),
            expires_at=_utc(expires),
        )
    return keys.sign(session, typ=SESSION_TYP), expires - moment


async def session_identity(ctx: ServerContext, cookie: str | None) -> Identity:
    """The operator behind a live session cookie, or Unauthorized."""
    if not cookie:
        raise Unauthorized("No monitor session")
    identity = identity_from_token(ctx.keys, cookie, SESSION_TYP)
    try:
        check_reader(identity)
    except Forbidden as exc:  # cannot happen for a session we minted; refuse all the same
        raise Unauthorized("Invalid session") from exc
    async with ctx.db.read() as conn:
        alive = await db.session_alive(conn, identity.jti, utcnow())
    if not alive:
        raise Unauthorized("Session ended")
    return identity


async def close_session(ctx: ServerContext, cookie: str | None) -> None:
    """End the session a cookie names, if it is ours and not expired (else there is nothing
    left to end); never raises for a bad cookie, since logging out must always work."""
    if not cookie:
        return
    try:
        claims = ctx.keys.verify(cookie, typ=SESSION_TYP)
    except InvalidToken:
        return
    session_id = claims.get("jti")
    if not isinstance(session_id, str):
        return
    async with ctx.db.transaction() as conn:
        await db.revoke_session(conn, session_id)
