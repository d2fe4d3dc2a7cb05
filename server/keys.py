"""The server's signing key set: every token it issues is signed here and verified here.

The key set is a JWKS file of private keys (mode 0600), `jwks.json` under the data directory
unless `keys_file` names another path (several hosts share one file, deployed as a secret). It
is made on first start with one Ed25519 key, which signs user, service and pilot tokens
(EdDSA), and one RSA key, which signs what must be RS256 (CE tokens: ARC reads RSA keys only).

Rotation follows the usual JWKS rule: the next key is published before it signs, and an old key
keeps verifying for a grace period, then leaves the JWKS. The file records, per key id, under a
top-level `"key_times"` member (Unix seconds):

- `published`: when it entered the key set (it is in the JWKS from then on);
- `signs_from`: when it starts signing (`keys rotate` sets it `key_publication_delay` ahead);
  the key of an algorithm that signs is the one with the latest `signs_from` already reached;
- `verify_until`: when it stops verifying and leaves the JWKS (set when a successor is made:
  the successor's `signs_from` plus the grace; null while it has none);
- `signed_until`: the latest expiry of a token `site-director token` signed with it (such
  tokens may outlive the server's own lifetimes; the grace never cuts them short).

Everything follows from the file and the clock, so every host reading the file agrees without
talking to the others, and a key starts signing or leaves at its time without anyone writing.
A key set made before these records has no times: its first key of each algorithm signs and the
others verify until the next rotation gives them an end.

The installation's issuer (`iss` of every token) is recorded in the same file, as a top-level
`"issuer"` member beside `"keys"` (RFC 7517 section 5: members a reader does not know are
ignored). It is chosen once, when the key set is made, and changes only when an operator says so
(`site-director server --issuer URL --change-issuer`): a server and the `token` command reading
one key set therefore always agree on it, whatever address the server listens on, and a copy of
the file on another host carries the issuer with the keys.

Running servers read the file again when it changes (a cheap stat at most every
RELOAD_CHECK_SECONDS) and when a recorded time is reached: a rotation made on one host, or a
new copy of the secret, reaches every server without a restart.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
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
RELOAD_CHECK_SECONDS = 5.0
DEFAULT_PUBLICATION_DELAY = 3600
"""Seconds a new key is published before it signs, unless the caller says otherwise."""
DEFAULT_GRACE = 7 * 24 * 3600
"""Seconds a replaced key keeps verifying, unless the caller says otherwise (the server's
settings derive theirs from the token lifetimes: see server.installation.key_grace)."""
KEY_TIMES = "key_times"
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


def _alg_of(kty: str) -> str:
    return "EdDSA" if kty == "OKP" else "RS256"


@dataclass(frozen=True)
class KeyStatus:
    """One key of the set at one moment, for `site-director keys list` and the KeyStore."""

    kid: str
    alg: str
    published: int
    signs_from: int
    verify_until: int | None
    state: str
    """NEXT (published, not signing yet), SIGNING, RETIRING (a successor signs; it still
    verifies) or RETIRED (it verifies no more; the next rotation removes it from the file)."""


NEXT, SIGNING, RETIRING, RETIRED = "next", "signing", "retiring", "retired"


def _optional_int(value: object) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _key_times(document: dict[str, Any]) -> dict[str, dict[str, int | None]]:
    """Every key's times, defaults filled in (a key without a record has always signed)."""
    recorded = document.get(KEY_TIMES)
    recorded = recorded if isinstance(recorded, dict) else {}
    times: dict[str, dict[str, int | None]] = {}
    for key in document["keys"]:
        entry = recorded.get(key["kid"])
        entry = entry if isinstance(entry, dict) else {}
        times[key["kid"]] = {
            "published": _optional_int(entry.get("published")) or 0,
            "signs_from": _optional_int(entry.get("signs_from")) or 0,
            "verify_until": _optional_int(entry.get("verify_until")),
            "signed_until": _optional_int(entry.get("signed_until")),
        }
    return times


def key_statuses(document: dict[str, Any], now: int) -> list[KeyStatus]:
    """The state of every key of a key set document at `now`, in the file's order.

    Per algorithm, the key that signs is the one with the latest `signs_from` not after `now`
    (on a tie, the first in the file: rotation puts new keys in front).
    """
    times = _key_times(document)
    keys = document["keys"]
    signing: dict[str, str] = {}
    started = [k for k in keys if (times[k["kid"]]["signs_from"] or 0) <= now]
    for key in sorted(started, key=lambda k: -(times[k["kid"]]["signs_from"] or 0)):
        signing.setdefault(_alg_of(key["kty"]), key["kid"])
    statuses = []
    for key in keys:
        kid, alg, entry = key["kid"], _alg_of(key["kty"]), times[key["kid"]]
        until = entry["verify_until"]
        if signing.get(alg) == kid:
            state = SIGNING
        elif (entry["signs_from"] or 0) > now:
            state = NEXT
        elif until is not None and until <= now:
            state = RETIRED
        else:
            state = RETIRING
        statuses.append(
            KeyStatus(
                kid=kid,
                alg=alg,
                published=entry["published"] or 0,
                signs_from=entry["signs_from"] or 0,
                verify_until=until,
                state=state,
            )
        )
    return statuses


def rotate_keyset(
    path: Path,
    *,
    delay: int = DEFAULT_PUBLICATION_DELAY,
    grace: int = DEFAULT_GRACE,
    retire_now: bool = False,
    now: int | None = None,
) -> list[str]:
    """Add a new Ed25519 and RSA key, published at once, signing `delay` seconds from now;
    returns the new key ids. The issuer record (and any other member of the file) is kept.

    Every key without an end gets one: the new keys' `signs_from` plus `grace`, or later if a
    token `site-director token` signed with it lives longer. Keys whose end has passed are
    removed from the file. `retire_now` is the rotation after a leak: the new keys sign at
    once and every other key is removed (every token issued so far stops verifying).
    """
    if delay < 0 or grace < 0:
        raise ValueError("the publication delay and the grace are seconds, not negative")
    ensure_keyset(path)
    document = read_keyset(path)
    moment = int(time.time()) if now is None else now
    times = _key_times(document)
    new = _new_keys()
    signs_from = moment if retire_now else moment + delay
    for entry in times.values():
        if retire_now:
            entry["verify_until"] = moment
        elif entry["verify_until"] is None:
            entry["verify_until"] = max(signs_from + grace, entry["signed_until"] or 0)
    for key in new:
        times[key["kid"]] = {
            "published": moment,
            "signs_from": signs_from,
            "verify_until": None,
            "signed_until": None,
        }
    rotated = {**document, "keys": new + document["keys"]}
    gone = {
        s.kid for s in key_statuses({**rotated, KEY_TIMES: times}, moment) if s.state == RETIRED
    }
    kept = [k for k in rotated["keys"] if k["kid"] not in gone]
    _write_private(
        path,
        {**rotated, "keys": kept, KEY_TIMES: {k["kid"]: times[k["kid"]] for k in kept}},
    )
    return [k["kid"] for k in new]


def activate_keyset(path: Path, *, now: int | None = None) -> list[str]:
    """Let the published keys that do not sign yet sign from now; returns their ids.

    For an operator who knows every relying party has the new keys already (or who must not
    wait); the old keys' ends stay as they were set, counted from the planned start.
    """
    document = read_keyset(path)
    moment = int(time.time()) if now is None else now
    times = _key_times(document)
    waiting = [kid for kid, entry in times.items() if (entry["signs_from"] or 0) > moment]
    if waiting:
        for kid in waiting:
            times[kid]["signs_from"] = moment
        _write_private(path, {**document, KEY_TIMES: times})
    return waiting


def record_signed(path: Path, kid: str, exp: int) -> None:
    """Remember that a token signed by `kid` lives until `exp`: the key then keeps verifying at
    least that long, whatever grace a later rotation gives (used by `site-director token`,
    whose tokens may outlive every lifetime the server itself uses)."""
    document = read_keyset(path)
    times = _key_times(document)
    entry = times.get(kid)
    if entry is None:
        raise KeySetError(f"no key {kid!r} in {path}")
    if entry["signed_until"] is not None and entry["signed_until"] >= exp:
        return
    entry["signed_until"] = exp
    if entry["verify_until"] is not None and entry["verify_until"] < exp:
        entry["verify_until"] = exp
    _write_private(path, {**document, KEY_TIMES: times})


def _file_signature(path: Path) -> tuple[int, int, int]:
    """What changes whenever the file is replaced or rewritten (os.replace gives a new inode;
    a secret volume swaps a symlink, which stat follows)."""
    st = path.stat()
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class KeyStore:
    """Signs and verifies tokens with the key set file at `path`, for the issuer `issuer`.

    `clock` (Unix seconds) decides which keys sign and verify and when the file is looked at
    again; tests pass their own.
    """

    def __init__(self, path: Path, issuer: str, *, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.issuer = issuer
        self.clock = clock
        ensure_keyset(path, issuer)
        self._checked = clock()
        self._load()

    @classmethod
    def existing(cls, path: Path, *, clock: Callable[[], float] = time.time) -> KeyStore:
        """The key set an installation already has, with the issuer it records; KeySetError
        when there is none (a mistyped data directory must not get a fresh key set)."""
        issuer = recorded_issuer(path)
        if issuer is None:
            raise KeySetError(
                f"the key set {path} records no issuer yet: start the server on it once"
            )
        return cls(path, issuer, clock=clock)

    def _load(self) -> None:
        signature = _file_signature(self.path)
        document = read_keyset(self.path)
        now = int(self.clock())
        statuses = key_statuses(document, now)
        live = {s.kid for s in statuses if s.state != RETIRED}
        raw = [k for k in document["keys"] if k["kid"] in live]
        keyset = KeySet.import_key_set({"keys": raw})
        self._statuses = statuses
        self._keyset = keyset
        self._signing: dict[str, str] = {s.alg: s.kid for s in statuses if s.state == SIGNING}
        self._public = {
            "keys": [
                {**k.as_dict(private=False), "alg": _alg_of(k.key_type), "use": "sig"}
                for k in keyset.keys
            ]
        }
        # the next recorded time this process must act on: a key starts signing or leaves
        upcoming = [s.signs_from for s in statuses if s.signs_from > now] + [
            s.verify_until
            for s in statuses
            if s.verify_until is not None and s.verify_until > now and s.kid in live
        ]
        self._next_change = min(upcoming, default=None)
        self._signature = signature
        # token -> (header typ, claims); a key change invalidates them all
        self._verified: dict[str, tuple[str | None, dict[str, Any]]] = {}

    def maybe_reload(self) -> None:
        """Pick up a rotation made elsewhere (a stat at most every few seconds), and a
        recorded time reached (a key starts signing or leaves the set)."""
        now = self.clock()
        due = self._next_change is not None and now >= self._next_change
        if not due and 0 <= now - self._checked < RELOAD_CHECK_SECONDS:
            return
        self._checked = now
        try:
            if due or _file_signature(self.path) != self._signature:
                self._load()
        except (OSError, ValueError, KeyError, KeySetError, JoseError):
            pass  # a file being replaced by hand: keep the keys we have, try again later

    def statuses(self) -> list[KeyStatus]:
        """Every key of the set and its state (as of the last look at the file)."""
        self.maybe_reload()
        return list(self._statuses)

    def signing_kid(self, alg: str = "EdDSA") -> str:
        self.maybe_reload()
        return self._signing[alg]

    def public_jwks(self) -> dict[str, Any]:
        """The public keys that verify: those that sign, will sign, or still verify."""
        self.maybe_reload()
        return self._public

    def sign(self, claims: dict[str, Any], alg: str = "EdDSA", typ: str = "JWT") -> str:
        """Sign with the key of `alg` that signs now; `typ` tells access from refresh tokens
        apart."""
        self.maybe_reload()
        kid = self._signing[alg]
        key = self._keyset.get_by_kid(kid)
        if isinstance(key, OKPKey) and alg == "EdDSA":
            private = key.private_key
            if isinstance(private, Ed25519PrivateKey):
                return _sign_ed25519(private, _header_segment(typ, alg, kid), claims)
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


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


@lru_cache(maxsize=64)
def _header_segment(typ: str, alg: str, kid: str) -> bytes:
    """The encoded JWS header, as joserfc writes it (`typ` first); a few per key set."""
    header = {"typ": typ, "alg": alg, "kid": kid}
    return _b64(json.dumps(header, ensure_ascii=True, separators=(",", ":")).encode())


def _sign_ed25519(key: Ed25519PrivateKey, header: bytes, claims: dict[str, Any]) -> str:
    """The JWS that `joserfc.jwt.encode` makes (Ed25519 is deterministic: the same bytes,
    tests/server/test_keys.py compares them), without its registry look-ups and checks,
    which were half the cost of minting a token; every pilot's exchange and refresh mints two.
    The claims are ours (strings, integers, lists), the header fixed."""
    signing_input = (
        header + b"." + _b64(json.dumps(claims, ensure_ascii=False, separators=(",", ":")).encode())
    )
    signature = key.sign(signing_input)
    return (signing_input + b"." + _b64(signature)).decode()


def _kid_of(token: str) -> str:
    """The key id a token names, for a log line (not verified: only shown)."""
    try:
        kid = extract_compact(token.encode()).protected.get("kid")
    except (JoseError, ValueError, UnicodeError):
        return ""
    return f"kid {_shown(kid, 80)}"
