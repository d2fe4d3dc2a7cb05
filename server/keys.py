"""The server's signing key set: every token it issues is signed here and verified here.

The key set is a JWKS file of private keys (mode 0600) under the data directory, made on first
start. The first Ed25519 key signs user, service and pilot tokens (EdDSA); the first RSA key signs
what must be RS256 (CE tokens: ARC was seen accepting RS256 only). Rotation puts new keys in
front; old keys stay and keep verifying tokens they signed until an operator retires them.
Several workers or hosts share the file (or copies of it); each re-reads it when it changes.
"""

from __future__ import annotations

import json
import os
import secrets
import time
import warnings
from pathlib import Path
from typing import Any

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet, OKPKey, RSAKey

# RFC 9864 deprecates the "EdDSA" name in favour of "Ed25519"; DiracX and the DIRAC clients still
# use "EdDSA", so we keep it and silence joserfc's warning about it.
warnings.filterwarnings("ignore", message="EdDSA is deprecated")

ACCEPTED_ALGORITHMS = ["EdDSA", "RS256"]
_RELOAD_CHECK_SECONDS = 5.0
_VERIFIED_CACHE_SIZE = 10_000


class InvalidToken(Exception):
    """The token is malformed, badly signed, expired, not yet valid or not ours."""


def _new_keys() -> list[dict[str, Any]]:
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime())
    ed = OKPKey.generate_key("Ed25519", parameters={"kid": f"ed-{stamp}-{secrets.token_hex(4)}"})
    rsa = RSAKey.generate_key(2048, parameters={"kid": f"rsa-{stamp}-{secrets.token_hex(4)}"})
    return [ed.as_dict(private=True), rsa.as_dict(private=True)]


def _write_private(path: Path, keys: list[dict[str, Any]]) -> None:
    """Write atomically with mode 0600 from the start: the file never exists readable by others."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"keys": keys}, fh)
    os.replace(tmp, path)


def ensure_keyset(path: Path) -> None:
    """Create the key set on first start; an existing one is left alone."""
    if not path.exists():
        _write_private(path, _new_keys())


def rotate_keyset(path: Path) -> list[str]:
    """Put a new Ed25519 and RSA key in front; returns the new key ids."""
    ensure_keyset(path)
    old = json.loads(path.read_text())["keys"]
    new = _new_keys()
    _write_private(path, new + old)
    return [k["kid"] for k in new]


class KeyStore:
    """Signs and verifies tokens with the key set file at `path`."""

    def __init__(self, path: Path, issuer: str) -> None:
        self.path = path
        self.issuer = issuer
        ensure_keyset(path)
        self._mtime = 0.0
        self._checked = 0.0
        self._load()

    def _load(self) -> None:
        raw = json.loads(self.path.read_text())["keys"]
        self._keyset = KeySet.import_key_set({"keys": raw})
        self._signing: dict[str, str] = {}
        for key in raw:
            alg = "EdDSA" if key["kty"] == "OKP" else "RS256"
            self._signing.setdefault(alg, key["kid"])
        self._public = {
            "keys": [
                {**k.as_dict(private=False), "alg": self._alg_of(k.key_type), "use": "sig"}
                for k in self._keyset.keys
            ]
        }
        self._mtime = self.path.stat().st_mtime
        # token -> (header typ, claims); a key change invalidates them all
        self._verified: dict[str, tuple[str | None, dict[str, Any]]] = {}

    @staticmethod
    def _alg_of(kty: str) -> str:
        return "EdDSA" if kty == "OKP" else "RS256"

    def maybe_reload(self) -> None:
        """Pick up a rotation made by the CLI, at most every few seconds."""
        now = time.monotonic()
        if now - self._checked < _RELOAD_CHECK_SECONDS:
            return
        self._checked = now
        try:
            if self.path.stat().st_mtime != self._mtime:
                self._load()
        except (OSError, ValueError, KeyError):
            pass  # a half-written file: keep the keys we have, try again later

    def public_jwks(self) -> dict[str, Any]:
        self.maybe_reload()
        return self._public

    def sign(self, claims: dict[str, Any], alg: str = "EdDSA", typ: str = "JWT") -> str:
        """Sign with the newest key of `alg`; `typ` tells access from refresh tokens apart."""
        self.maybe_reload()
        kid = self._signing[alg]
        key = self._keyset.get_by_kid(kid)
        return jwt.encode({"alg": alg, "kid": kid, "typ": typ}, claims, key, algorithms=[alg])

    def verify(
        self, token: str, *, typ: str | None = None, now: int | None = None
    ) -> dict[str, Any]:
        """The token's claims, or InvalidToken. No leeway: we both issue and verify.

        A token that verified once is remembered (by its exact bytes) until it expires, so a
        pilot or a director sending the same token many times pays for the signature once;
        expiry is still checked on every call.
        """
        self.maybe_reload()
        moment = now if now is not None else int(time.time())
        entry = self._verified.get(token)
        if entry is None:
            entry = self._verify_signature_and_claims(token, moment)
            if len(self._verified) >= _VERIFIED_CACHE_SIZE:
                self._verified.clear()  # bounded memory; refilled by the next calls
            self._verified[token] = entry
        header_typ, claims = entry
        if typ is not None and header_typ != typ:
            raise InvalidToken(f"not a {typ} token")
        if claims["exp"] <= moment or ("nbf" in claims and claims["nbf"] > moment):
            raise InvalidToken("token expired or not yet valid")
        return dict(claims)

    def _verify_signature_and_claims(
        self, token: str, now: int
    ) -> tuple[str | None, dict[str, Any]]:
        try:
            decoded = jwt.decode(token, self._keyset, algorithms=ACCEPTED_ALGORITHMS)
            if "kid" not in decoded.header:
                raise InvalidToken("token has no key id")
            registry = jwt.JWTClaimsRegistry(
                now=now,
                leeway=0,
                iss={"essential": True, "value": self.issuer},
                exp={"essential": True},
                sub={"essential": True},
                jti={"essential": True},
            )
            registry.validate(decoded.claims)
            if not isinstance(decoded.claims["exp"], int) or decoded.claims["exp"] <= now:
                raise InvalidToken("token expired")  # RFC 7519: valid only *before* exp
        except JoseError as exc:
            raise InvalidToken(str(exc)) from exc
        except (ValueError, TypeError, KeyError) as exc:
            raise InvalidToken("malformed token") from exc
        header_typ = decoded.header.get("typ")
        return (header_typ if isinstance(header_typ, str) else None), dict(decoded.claims)
