"""What an installation records in its data directory, so every command reading it agrees.

- The issuer (`iss` of every token) lives in the key set file (`jwks.json`, see server.keys):
  chosen once, when the key set is made, from `--issuer` / `SITE_DIRECTOR_ISSUER`, or else
  from the address of the first start; never derived again from where the server listens.
- The key set itself is `jwks.json` in the data directory unless `keys_file` names another
  path: several hosts share one key set file (and so one issuer), each keeping its own data
  directory (its `vos.json`, its SQLite file if any).
- The VOs the server serves (`vos.json`, written at every start), so that `site-director token`
  refuses a VO the server would refuse.

`site-director token` reads both and makes nothing: a data directory without a key set is a
mistake (a typo), not a new installation.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import secrets
import socket
from pathlib import Path

from server.keys import KeyStore, settle_issuer
from server.logic.cetokens import MAX_LIFETIME as CE_TOKEN_MAX_LIFETIME
from server.settings import ServerSettings

log = logging.getLogger(__name__)

VOS_FILE = "vos.json"
FALLBACK_ISSUER = "http://127.0.0.1:8000"
_WILDCARDS = {"", "0.0.0.0", "::", "[::]", "*"}  # noqa: S104 (recognised, not bound)


def default_issuer(host: str, port: int, tls: bool) -> str:
    """The issuer recorded on a first start that names none: this host's URL as clients would
    write it (its fully qualified name when the server listens on every address)."""
    scheme = "https" if tls else "http"
    name = socket.getfqdn() if host in _WILDCARDS else host
    try:
        if ipaddress.ip_address(name).version == 6:
            name = f"[{name}]"
    except ValueError:
        pass
    default_port = 443 if tls else 80
    return f"{scheme}://{name}" if port == default_port else f"{scheme}://{name}:{port}"


def open_server_keys(settings: ServerSettings, *, change_issuer: bool = False) -> KeyStore:
    """The server's key store, with the issuer its key set records (recording the settings'
    one, or FALLBACK_ISSUER, if the key set records none). Raises server.keys.IssuerMismatch
    when the settings name another issuer and `change_issuer` is not set."""
    issuer = settle_issuer(
        settings.keyset_path, settings.issuer, default=FALLBACK_ISSUER, change=change_issuer
    )
    return KeyStore(settings.keyset_path, issuer)


def key_grace(settings: ServerSettings) -> int:
    """How long a replaced key keeps verifying once its successor signs: the setting, else
    the longest lifetime of a token the server signs (refresh tokens, by default), so that no
    token the server issued dies with its key. Tokens `site-director token` signs are
    recorded with their key and outlive the grace if they must (server.keys.record_signed)."""
    if settings.key_grace is not None:
        return settings.key_grace
    return max(
        settings.access_token_lifetime,
        settings.pilot_token_lifetime,
        settings.refresh_token_lifetime,
        CE_TOKEN_MAX_LIFETIME,
    )


def record_vos(data_dir: Path, vos: list[str]) -> None:
    """Record the VOs served (atomically, only when they changed). A read-only data directory
    only costs `token` its check, so a failure is logged, not raised."""
    path = data_dir / VOS_FILE
    if recorded_vos(data_dir) == vos:
        return
    tmp = path.with_name(f".{VOS_FILE}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        tmp.write_text(json.dumps({"vos": vos}) + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("cannot record the served VOs in %s: %s", path, exc)
        tmp.unlink(missing_ok=True)


def recorded_vos(data_dir: Path) -> list[str] | None:
    """The VOs the server last served from this data directory; None if it never started."""
    try:
        document = json.loads((data_dir / VOS_FILE).read_text())
    except (OSError, ValueError):
        return None
    vos = document.get("vos") if isinstance(document, dict) else None
    if isinstance(vos, list) and all(isinstance(vo, str) for vo in vos):
        return vos
    return None
