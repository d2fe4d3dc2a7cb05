"""Who is calling: identities from verified tokens, and the tokens the server mints.

Access tokens carry the JWT header `typ: at+jwt` and refresh tokens `typ: rt+jwt`, so a
refresh token presented as an access token is refused by its header, before its claims are read.
Pilot tokens carry `pilot_stamp` and no properties; user and service tokens carry
`dirac_properties` and `dirac_group`.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from joserfc.errors import JoseError
from joserfc.jws import extract_compact

from server.errors import Unauthorized
from server.keys import REASON_EXPIRED, InvalidToken, KeyStore

log = logging.getLogger("server.auth")

ADMIN = "ServiceAdministrator"
TRUSTED_HOST = "TrustedHost"
NORMAL_USER = "NormalUser"
GENERIC_PILOT = "GenericPilot"
#: DIRAC's property for banning and allowing sites, CEs and queues (of the token's VOs)
SITE_MANAGER = "SiteManager"
#: DIRAC's Operator property (WMSAdministrator's default rule): kill pilots and ask for their
#: output (of the token's VOs)
OPERATOR = "Operator"
#: The properties this server gives meaning to; `site-director token` refuses any other.
KNOWN_PROPERTIES = frozenset(
    {ADMIN, TRUSTED_HOST, NORMAL_USER, GENERIC_PILOT, SITE_MANAGER, OPERATOR}
)

ACCESS_TYP = "at+jwt"
REFRESH_TYP = "rt+jwt"


@dataclass(frozen=True)
class Identity:
    sub: str
    vo: str
    jti: str
    properties: frozenset[str] = frozenset()
    group: str | None = None
    pilot_stamp: str | None = None
    family_id: str | None = None
    extra_vos: frozenset[str] = field(default_factory=frozenset)

    @property
    def is_pilot(self) -> bool:
        """A pilot token from the secret exchange (not a legacy GenericPilot user token)."""
        return self.pilot_stamp is not None

    @property
    def is_admin(self) -> bool:
        return not self.is_pilot and ADMIN in self.properties

    @property
    def vos(self) -> frozenset[str]:
        """The VOs this identity acts for: its own, plus any a service token lists."""
        return frozenset({self.vo}) | self.extra_vos


def refused(reason: InvalidToken | str, detail: str = "Invalid token") -> Unauthorized:
    """The uniform 401 for a refused token, after one log line saying which check failed
    (never the token): the client learns nothing, the operator learns why."""
    if isinstance(reason, InvalidToken):
        level = logging.INFO if reason.reason == REASON_EXPIRED else logging.WARNING
        log.log(level, "token refused: %s", reason)
    else:
        log.warning("token refused: %s", reason)
    return Unauthorized(detail)


def token_typ(token: str) -> str | None:
    try:
        header = extract_compact(token.encode()).protected
    except (JoseError, ValueError, UnicodeError):
        return None
    typ = header.get("typ")
    return typ if isinstance(typ, str) else None


def _str_list(value: Any) -> frozenset[str]:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return frozenset(value)
    raise Unauthorized("Invalid token")


def identity_from_token(keys: KeyStore, token: str, typ: str = ACCESS_TYP) -> Identity:
    """Verify an access token (or, with `typ`, a monitor session) and read its identity;
    every failure is the same 401."""
    try:
        claims = keys.verify(token, typ=typ)
    except InvalidToken as exc:
        raise refused(exc) from exc
    vo = claims.get("vo")
    if not isinstance(vo, str) or not vo:
        raise Unauthorized("Invalid token")
    stamp = claims.get("pilot_stamp")
    if stamp is not None:
        if not isinstance(stamp, str) or "dirac_properties" in claims:
            raise Unauthorized("Invalid token")
        fam = claims.get("fam")
        return Identity(
            sub=str(claims["sub"]),
            vo=vo,
            jti=str(claims["jti"]),
            pilot_stamp=stamp,
            family_id=fam if isinstance(fam, str) else None,
        )
    group = claims.get("dirac_group")
    return Identity(
        sub=str(claims["sub"]),
        vo=vo,
        jti=str(claims["jti"]),
        properties=_str_list(claims.get("dirac_properties", [])),
        group=group if isinstance(group, str) else None,
        extra_vos=_str_list(claims.get("dirac_vos", [])),
    )


def mint_user_token(
    keys: KeyStore,
    *,
    sub: str,
    vo: str,
    properties: list[str],
    lifetime: int,
    group: str | None = None,
    extra_vos: list[str] | None = None,
) -> str:
    """A user, service or admin access token (the `site-director token` command)."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": sub,
        "vo": vo,
        "iss": keys.issuer,
        "jti": uuid.uuid4().hex,
        "iat": now,
        "exp": now + lifetime,
        "dirac_properties": sorted(properties),
        "dirac_group": group or f"{vo}_{'admin' if ADMIN in properties else 'user'}",
    }
    if extra_vos:
        claims["dirac_vos"] = sorted(extra_vos)
    return keys.sign(claims, typ=ACCESS_TYP)


def mint_pilot_access_token(
    keys: KeyStore, *, vo: str, stamp: str, lifetime: int, family_id: str, now: int | None = None
) -> str:
    now = int(time.time()) if now is None else now
    claims = {
        "sub": f"{vo}:{stamp}",
        "vo": vo,
        "iss": keys.issuer,
        "jti": uuid.uuid4().hex,
        "iat": now,
        "exp": now + lifetime,
        "pilot_stamp": stamp,
        "fam": family_id,
    }
    return keys.sign(claims, typ=ACCESS_TYP)


def mint_refresh_token(
    keys: KeyStore,
    *,
    vo: str,
    stamp: str,
    lifetime: int,
    family_id: str,
    jti: str,
    now: int | None = None,
) -> str:
    now = int(time.time()) if now is None else now
    claims = {
        "sub": f"{vo}:{stamp}",
        "vo": vo,
        "iss": keys.issuer,
        "jti": jti,
        "iat": now,
        "exp": now + lifetime,
        "pilot_stamp": stamp,
        "fam": family_id,
    }
    return keys.sign(claims, typ=REFRESH_TYP)


def refresh_claims(keys: KeyStore, token: str) -> dict[str, Any]:
    """Verify a refresh token (not an access token) and return its claims, or 401."""
    try:
        claims = keys.verify(token, typ=REFRESH_TYP)
    except InvalidToken as exc:
        raise refused(exc, "Invalid refresh token") from exc
    if not isinstance(claims.get("pilot_stamp"), str) or not isinstance(claims.get("fam"), str):
        raise Unauthorized("Invalid refresh token")
    return claims
