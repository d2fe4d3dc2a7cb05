"""Hand-made JWTs for attack tests: every header and claim under the test's control.

joserfc refuses to build most of these tokens (that is its job), so they are assembled here
from base64url segments and signed with `cryptography` or `hmac` directly.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def segment(obj: dict[str, Any]) -> str:
    return b64url(json.dumps(obj, separators=(",", ":")).encode())


def claims_of(token: str) -> dict[str, Any]:
    """The payload of a compact JWT, unverified (to copy a genuine token's claims)."""
    payload: dict[str, Any] = json.loads(b64url_decode(token.split(".")[1]))
    return payload


def header_of(token: str) -> dict[str, Any]:
    header: dict[str, Any] = json.loads(b64url_decode(token.split(".")[0]))
    return header


def _int(value: str) -> int:
    return int.from_bytes(b64url_decode(value), "big")


class Signer:
    """One private key as JWK (the server's own, or an attacker's)."""

    def __init__(self, jwk: dict[str, Any]) -> None:
        self.jwk = jwk
        self.kid: str = jwk["kid"]
        if jwk["kty"] == "OKP":
            self.alg = "EdDSA"
            self._ed = ed25519.Ed25519PrivateKey.from_private_bytes(b64url_decode(jwk["d"]))
        else:
            self.alg = "RS256"
            public = rsa.RSAPublicNumbers(_int(jwk["e"]), _int(jwk["n"]))
            self._rsa = rsa.RSAPrivateNumbers(
                p=_int(jwk["p"]),
                q=_int(jwk["q"]),
                d=_int(jwk["d"]),
                dmp1=_int(jwk["dp"]),
                dmq1=_int(jwk["dq"]),
                iqmp=_int(jwk["qi"]),
                public_numbers=public,
            ).private_key()

    @classmethod
    def generate(cls, kind: str = "OKP", kid: str = "attacker") -> Signer:
        """A fresh key the server has never seen."""
        if kind == "OKP":
            key = ed25519.Ed25519PrivateKey.generate()
            d = key.private_bytes(
                serialization.Encoding.Raw,
                serialization.PrivateFormat.Raw,
                serialization.NoEncryption(),
            )
            x = key.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
            return cls({"kty": "OKP", "crv": "Ed25519", "d": b64url(d), "x": b64url(x), "kid": kid})
        rkey = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        n = rkey.private_numbers()

        def enc(i: int) -> str:
            return b64url(i.to_bytes((i.bit_length() + 7) // 8, "big"))

        return cls(
            {
                "kty": "RSA",
                "kid": kid,
                "n": enc(n.public_numbers.n),
                "e": enc(n.public_numbers.e),
                "d": enc(n.d),
                "p": enc(n.p),
                "q": enc(n.q),
                "dp": enc(n.dmp1),
                "dq": enc(n.dmq1),
                "qi": enc(n.iqmp),
            }
        )

    @property
    def public_jwk(self) -> dict[str, Any]:
        private = {"d", "p", "q", "dp", "dq", "qi"}
        return {k: v for k, v in self.jwk.items() if k not in private}

    def raw_sign(self, signing_input: bytes) -> bytes:
        if self.alg == "EdDSA":
            return self._ed.sign(signing_input)
        return self._rsa.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())

    def token(self, claims: dict[str, Any], **header: Any) -> str:
        """Signed with this key; `header` overrides the defaults (None removes a field)."""
        full = {"alg": self.alg, "kid": self.kid, "typ": "at+jwt", **header}
        full = {k: v for k, v in full.items() if v is not None}
        signing_input = f"{segment(full)}.{segment(claims)}"
        return f"{signing_input}.{b64url(self.raw_sign(signing_input.encode()))}"


def server_signers(keyset_path: Path) -> dict[str, Signer]:
    """The server's own private keys by algorithm (the newest of each), from its key set file."""
    found: dict[str, Signer] = {}
    for jwk in json.loads(keyset_path.read_text())["keys"]:
        signer = Signer(jwk)
        found.setdefault(signer.alg, signer)
    return found


def hs256(claims: dict[str, Any], secret: bytes, **header: Any) -> str:
    """HMAC-SHA256 with `secret`: the algorithm-confusion attack when `secret` is a public key."""
    full = {"alg": "HS256", "typ": "at+jwt", **header}
    signing_input = f"{segment(full)}.{segment(claims)}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(mac)}"


def unsigned(claims: dict[str, Any], alg: str = "none", **header: Any) -> str:
    full = {"alg": alg, "typ": "at+jwt", **header}
    return f"{segment(full)}.{segment(claims)}."


def public_pem(jwk: dict[str, Any]) -> bytes:
    """The PEM (SubjectPublicKeyInfo) of a public JWK, as an attacker would fetch and encode it."""
    if jwk["kty"] == "OKP":
        pub: Any = ed25519.Ed25519PublicKey.from_public_bytes(b64url_decode(jwk["x"]))
    else:
        pub = rsa.RSAPublicNumbers(_int(jwk["e"]), _int(jwk["n"])).public_key()
    pem: bytes = pub.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem
