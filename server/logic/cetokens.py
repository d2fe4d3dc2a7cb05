"""CE tokens: the server as the token issuer that computing elements trust.

A director holding a service token (TrustedHost, or an administrator) asks for a short-lived
bearer token to submit to one CE. The token follows the WLCG token profile as far as a CE checks
it: `aud` names the CE, `scope` holds the `compute.*` scopes, `wlcg.ver` is "1.0". It is signed
RS256 with a key id, because RS256 is what ARC's A-REX was seen to accept and one of the two
algorithms the SciTokens library (HTCondor-CE) verifies; the CE verifies it through our
`/.well-known/openid-configuration` and JWKS, which it fetches over HTTPS.

The audience is the form each CE expects: an ARC CE's URL (`https://host:443/arex`); for an
HTCondor-CE, whatever its SCITOKENS_SERVER_AUDIENCE holds: `host:port` (`ce.example.org:9619`,
HTCondor-CE's usual form) or the WLCG profile's `condor://host:port`.

Its JWT header type is plain `JWT`, so it is never accepted by this server's own endpoints
(they take `at+jwt` access tokens only): a CE token leaked from a CE opens nothing here.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from server.identity import Identity
from server.keys import KeyStore
from server.models import TokenResponse

log = logging.getLogger(__name__)

CE_TOKEN_ALG = "RS256"  # noqa: S105 - an algorithm name
CE_TOKEN_TYP = "JWT"  # noqa: S105 - a JOSE header type
COMPUTE_SCOPES = "compute.create compute.read compute.modify compute.cancel"
DEFAULT_LIFETIME = 1200
MAX_LIFETIME = 6 * 3600
MIN_LIFETIME = 60
_HOST_PORT_RE = re.compile(
    r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?"
    r":(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
)
"""An HTCondor-CE's audience: a host name or IPv4 address and the collector's port."""


class CETokenRequest(BaseModel):
    """`POST /api/auth/ce-token`: for which CE, and for how long (seconds; capped)."""

    model_config = ConfigDict(extra="forbid")

    audience: str = Field(
        min_length=1,
        max_length=512,
        description="the CE: an ARC CE's URL; an HTCondor-CE's host:port or condor://host:port",
    )
    lifetime: int | None = Field(default=None, ge=MIN_LIFETIME, le=MAX_LIFETIME)

    @field_validator("audience")
    @classmethod
    def _a_ce(cls, value: str) -> str:
        if _HOST_PORT_RE.fullmatch(value):
            return value
        parts = urlsplit(value)
        if parts.scheme in ("https", "http") and parts.hostname:
            return value
        if parts.scheme == "condor" and _HOST_PORT_RE.fullmatch(parts.netloc):
            return value
        raise ValueError(
            "audience must be the CE's URL (https://host[:port]/...), host:port "
            "or condor://host:port"
        )


def ce_token_claims(
    identity: Identity, audience: str, *, issuer: str, lifetime: int, now: int
) -> dict[str, Any]:
    """The claims of one CE token (pure: time is passed in)."""
    return {
        "iss": issuer,
        "sub": identity.sub,
        "aud": audience,
        "scope": COMPUTE_SCOPES,
        "wlcg.ver": "1.0",
        "wlcg.groups": [f"/{identity.vo}"],
        "vo": identity.vo,
        "iat": now,
        "nbf": now,
        "exp": now + lifetime,
        "jti": uuid.uuid4().hex,
    }


def issue_ce_token(
    keys: KeyStore,
    identity: Identity,
    request: CETokenRequest,
    *,
    default_lifetime: int = DEFAULT_LIFETIME,
    now: int | None = None,
) -> TokenResponse:
    """Sign a CE token for the caller; the lifetime is the asked one, else the default."""
    lifetime = request.lifetime or min(default_lifetime, MAX_LIFETIME)
    moment = int(time.time()) if now is None else now
    claims = ce_token_claims(
        identity, request.audience, issuer=keys.issuer, lifetime=lifetime, now=moment
    )
    token = keys.sign(claims, alg=CE_TOKEN_ALG, typ=CE_TOKEN_TYP)
    log.info(
        "CE token issued sub=%s vo=%s aud=%s lifetime=%d",
        identity.sub,
        identity.vo,
        request.audience,
        lifetime,
    )
    return TokenResponse(access_token=token, expires_in=lifetime)
