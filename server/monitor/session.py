"""Monitor sessions: the operator pastes an access token once; the browser keeps a cookie.

The cookie holds a token the server signs with its own keys but with its own JWT `typ`
(`monitor+jwt`), so it is useless as a bearer token on the API, and an API token is useless
as a cookie. It lives at most `SESSION_LIFETIME` seconds and never beyond the pasted token.
The pasted token itself is neither stored nor echoed.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from server.errors import Forbidden, Unauthorized
from server.identity import ACCESS_TYP, Identity, identity_from_token
from server.keys import KeyStore
from server.policies import READER

COOKIE = "sd_monitor"
COOKIE_PATH = "/monitor"
SESSION_TYP = "monitor+jwt"
SESSION_LIFETIME = 3600


def open_session(keys: KeyStore, pasted: str, now: int | None = None) -> tuple[str, int]:
    """A session token for a valid operator token, and its lifetime in seconds.

    The same rule as the API's Reader policy: no pilot tokens, no GenericPilot-only tokens.
    Raises Unauthorized (bad token) or Forbidden (a token that may not read pilots).
    """
    identity = identity_from_token(keys, pasted.strip(), ACCESS_TYP)
    READER.check(identity)
    claims = keys.verify(pasted.strip(), typ=ACCESS_TYP)
    moment = int(time.time()) if now is None else now
    expires = min(int(claims["exp"]), moment + SESSION_LIFETIME)
    session: dict[str, Any] = {
        "sub": identity.sub,
        "vo": identity.vo,
        "iss": keys.issuer,
        "jti": uuid.uuid4().hex,
        "iat": moment,
        "exp": expires,
        "dirac_properties": sorted(identity.properties),
        "dirac_vos": sorted(identity.extra_vos),
    }
    if identity.group:
        session["dirac_group"] = identity.group
    return keys.sign(session, typ=SESSION_TYP), expires - moment


def session_identity(keys: KeyStore, cookie: str | None) -> Identity:
    """The operator behind a session cookie, or Unauthorized."""
    if not cookie:
        raise Unauthorized("No monitor session")
    identity = identity_from_token(keys, cookie, SESSION_TYP)
    try:
        READER.check(identity)
    except Forbidden as exc:  # cannot happen for a session we minted; refuse all the same
        raise Unauthorized("Invalid session") from exc
    return identity
