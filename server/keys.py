"""The server's signing key set: every token it issues is signed here and verified here.

The key set is a JWKS file of private keys (mode 0600) under the data directory, made on first
start. The first Ed25519 key signs user, service and pilot tokens (EdDSA); the first RSA key signs
what must be RS256 (CE tokens: ARC was seen accepting RS256 only). Rotation puts new keys in
front; old keys stay and keep verifying tokens they signed until an operator retires them.
Several workers or hosts share the file (or copies of it); each re-reads it when it changes.

The installation's issuer (`iss` of every token) is recorded in the same file, as a top-level
`"issuer"` member beside `"keys"` (RFC 7517 section 5: members a reader does not know are
ignored). It is chosen once, when the key set is made, and changes only when an operator says so
(`site-director server --issuer URL --change-issuer`): a server and the `token` command reading
one key set therefore always agree on it, whatever address the server listens on, and a copy of
the file on another host carries the issuer with the keys.
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
from joserfc.errors import (
    BadSignatureError,
    ExpiredTokenError,
    InvalidClaimError,
    InvalidKeyIdError,
    JoseError,
    MissingClaimError,
)
from joserfc.jwk import KeySet, OKPKey, RSAKey
from joserfc.jws import extract_compact

# RFC 9864 deprecates the "EdDSA" name in favour of "Ed25519"; DiracX and the DIRAC clients still
# use "EdDSA", so we keep it and silence joserfc's warning about it.
warnings.filterwarnings("ignore", message="EdDSA is deprecated")

ACCEPTED_ALGORITHMS = ["EdDSA", "RS256"]
_RELOAD_CHECK_SECONDS = 5.0
_VERIFIED_CACHE_SIZE = 10_000


class InvalidToken(Exception):
    """The token is malformed, badly signed, expired, not yet valid or not ours.

    `reason` names the check that failed (one of the REASON_* constants), for the server's log;
    the message adds what helps an operator (the token's issuer, its key id), never the token.
    Clients see none of it: every refusal is the same 401.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


REASON_MALFORMED = "malformed"
REASON_WRONG_TYPE = "wrong token type"
REASON_UNKNOWN_KID = "unknown key id"
REASON_BAD_SIGNATURE = "bad signature"
REASON_WRONG_ISSUER = "wrong issuer"
REASON_EXPIRED = "expired"
REASON_NOT_YET_VALID = "not yet valid"
REASON_MISSING_CLAIM = "missing claim"
REASON_REVOKED = "revoked family"


class KeySetError(Exception):
    """The key set file is missing, unreadable, or records no issuer (or another one)."""


class IssuerMismatch(KeySetError):
    """An issuer was asked for that contradicts the one the key set records."""


def _shown(value: object, limit: int = 200) -> str:
    """A claim value for a log line: quoted, control characters escaped, bounded."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "...'"


def _new_keys() -> list[dict[str, Any]]:
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime())
    ed = OKPKey.generate_key("Ed25519", parameters={"kid": f"ed-{stamp}-{secrets.token_hex(4)}"})
    rsa = RSAKey.generate_key(2048, parameters={"kid": f"rsa-{stamp}-{secrets.token_hex(4)}"})
    return [ed.as_dict(private=True), rsa.as_dict(private=True)]


def _write_temp(path: Path, document: dict[str, Any]) -> Path:
    """A temporary file of mode 0600 from the start (never readable by others), beside `path`
    and named for this process, so two writers never share one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(document, fh)
    return tmp


def _write_private(path: Path, document: dict[str, Any]) -> None:
    """Replace the key set file atomically."""
    os.replace(_write_temp(path, document), path)


def read_keyset(path: Path) -> dict[str, Any]:
    """The key set file's document (`keys`, and `issuer` when recorded); KeySetError if none."""
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise KeySetError(f"no key set at {path}") from exc
    except (OSError, ValueError) as exc:
        raise KeySetError(f"cannot read the key set {path}: {exc}") from exc
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise KeySetError(f"{path} is not a key set")
    return document


def recorded_issuer(path: Path) -> str | None:
    """The issuer the key set at `path` records (None for a key set made before the record)."""
    issuer = read_keyset(path).get("issuer")
    return issuer if isinstance(issuer, str) and issuer else None


def ensure_keyset(path: Path, issuer: str | None = None) -> None:
    """Create the key set on first start, recording `issuer`; an existing one is left alone.

    Two processes starting at once (workers, hosts sharing the folder) make one key set: the
    file is linked into place only if it does not exist yet, so the first one wins.
    """
    if path.exists():
        return
    document: dict[str, Any] = {"keys": _new_keys()}
    if issuer:
        document["issuer"] = issuer
    tmp = _write_temp(path, document)
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()


def record_issuer(path: Path, issuer: str) -> None:
    """Record (or change) the installation's issuer in the key set file, keys untouched."""
    document = read_keyset(path)
    _write_private(path, {**document, "issuer": issuer})


def settle_issuer(path: Path, wanted: str | None, *, default: str, change: bool = False) -> str:
    """The installation's issuer, recorded in the key set at `path` (made if missing).

    `wanted` is the issuer asked for by flag or setting, `default` the one to record when
    neither the key set nor `wanted` names one. A `wanted` that contradicts the record raises
    IssuerMismatch unless `change` is set: an issuer is never changed by accident, since every
    token issued under the old one stops working.
    """
    ensure_keyset(path, wanted or default)
    recorded = recorded_issuer(path)
    if recorded is None:
        chosen = wanted or default
        record_issuer(path, chosen)
        return chosen
    if wanted and wanted != recorded:
        if not change:
            raise IssuerMismatch(
                f"the key set {path} records the issuer {recorded!r}, not {wanted!r}: "
                "tokens issued for it would all be refused (add --change-issuer to change it)"
            )
        record_issuer(path, wanted)
        return wanted
    return recorded


def rotate_keyset(path: Path) -> list[str]:
    """Put a new Ed25519 and RSA key in front; returns the new key ids. The issuer record (and
    any other member of the file) is kept."""
    ensure_keyset(path)
    document = read_keyset(path)
    new = _new_keys()
    _write_private(path, {**document, "keys": new + document["keys"]})
    return [k["kid"] for k in new]


class KeyStore:
    """Signs and verifies tokens with the key set file at `path`, for the issuer `issuer`."""

    def __init__(self, path: Path, issuer: str) -> None:
        self.path = path
        self.issuer = issuer
        ensure_keyset(path, issuer)
        self._mtime = 0.0
        self._checked = 0.0
        self._load()

    @classmethod
    def existing(cls, path: Path) -> KeyStore:
        """The key set an installation already has, with the issuer it records; KeySetError
        when there is none (a mistyped data directory must not get a fresh key set)."""
        issuer = recorded_issuer(path)
        if issuer is None:
            raise KeySetError(
                f"the key set {path} records no issuer yet: start the server on it once"
            )
        return cls(path, issuer)

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
            raise InvalidToken(REASON_WRONG_TYPE, f"{_shown(header_typ)}, not {typ!r}")
        if claims["exp"] <= moment:
            raise InvalidToken(REASON_EXPIRED, f"{moment - claims['exp']} s ago")
        if "nbf" in claims and claims["nbf"] > moment:
            raise InvalidToken(REASON_NOT_YET_VALID)
        return dict(claims)

    def _verify_signature_and_claims(
        self, token: str, now: int
    ) -> tuple[str | None, dict[str, Any]]:
        try:
            decoded = jwt.decode(token, self._keyset, algorithms=ACCEPTED_ALGORITHMS)
        except InvalidKeyIdError as exc:
            raise InvalidToken(REASON_UNKNOWN_KID, _kid_of(token)) from exc
        except BadSignatureError as exc:
            raise InvalidToken(REASON_BAD_SIGNATURE, _kid_of(token)) from exc
        except JoseError as exc:
            raise InvalidToken(REASON_MALFORMED, type(exc).__name__) from exc
        except (ValueError, TypeError, KeyError) as exc:
            raise InvalidToken(REASON_MALFORMED) from exc
        if "kid" not in decoded.header:
            raise InvalidToken(REASON_UNKNOWN_KID, "no key id")
        try:
            registry = jwt.JWTClaimsRegistry(
                now=now,
                leeway=0,
                iss={"essential": True, "value": self.issuer},
                exp={"essential": True},
                sub={"essential": True},
                jti={"essential": True},
            )
            registry.validate(decoded.claims)
        except ExpiredTokenError as exc:
            raise InvalidToken(REASON_EXPIRED) from exc
        except InvalidClaimError as exc:
            if exc.claim == "iss":
                raise InvalidToken(
                    REASON_WRONG_ISSUER,
                    f"the token's is {_shown(decoded.claims.get('iss'))}, "
                    f"this server's {self.issuer!r}",
                ) from exc
            raise InvalidToken(REASON_MALFORMED, f"claim {exc.claim!r}") from exc
        except MissingClaimError as exc:
            raise InvalidToken(REASON_MISSING_CLAIM, str(exc.claim)) from exc
        except (JoseError, ValueError, TypeError, KeyError) as exc:
            raise InvalidToken(REASON_MALFORMED, type(exc).__name__) from exc
        exp = decoded.claims["exp"]
        if not isinstance(exp, int):
            raise InvalidToken(REASON_MALFORMED, "claim 'exp'")
        if exp <= now:
            raise InvalidToken(REASON_EXPIRED)  # RFC 7519: valid only *before* exp
        header_typ = decoded.header.get("typ")
        return (header_typ if isinstance(header_typ, str) else None), dict(decoded.claims)


def _kid_of(token: str) -> str:
    """The key id a token names, for a log line (not verified: only shown)."""
    try:
        kid = extract_compact(token.encode()).protected.get("kid")
    except (JoseError, ValueError, UnicodeError):
        return ""
    return f"kid {_shown(kid, 80)}"
