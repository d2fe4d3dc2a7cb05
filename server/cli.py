"""Server commands of the `site-director` script: server, token, db upgrade, keys rotate."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import Any

from server.identity import ADMIN, NORMAL_USER, TRUSTED_HOST, mint_user_token
from server.keys import KeyStore, rotate_keyset
from server.settings import ServerSettings


def _settings_from(args: argparse.Namespace, **extra: Any) -> ServerSettings:
    """Flags given on the command line override the environment and the defaults."""
    given: dict[str, Any] = {}
    if getattr(args, "data_dir", None):
        given["data_dir"] = Path(args.data_dir)
    if getattr(args, "db", None):
        given["db_url"] = args.db
    if isinstance(getattr(args, "vo", None), list):
        given["vos"] = args.vo
    if getattr(args, "issuer", None):
        given["issuer"] = args.issuer
    given.update(extra)
    return ServerSettings(**given)


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("server", help="run the pilot and auth server (uvicorn)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--db", help="database URL (default: SQLite under --data-dir)")
    p.add_argument("--data-dir", help="keys and the SQLite database (default: ./data)")
    p.add_argument("--vo", action="append", help="a VO to serve (repeat); default from settings")
    p.add_argument("--issuer", help="public base URL, the tokens' iss (default: from host/port)")
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    p.add_argument("--tls-cert", help="PEM certificate chain: serve HTTPS")
    p.add_argument("--tls-key", help="PEM private key for --tls-cert")
    p.add_argument("--log-level", default="info")
    p.set_defaults(func=run_server)

    t = sub.add_parser("token", help="print a signed access token from the server's key set")
    t.add_argument("--data-dir", required=True)
    t.add_argument("--sub", required=True)
    t.add_argument("--vo", required=True)
    t.add_argument(
        "--property",
        action="append",
        default=[],
        help=f"e.g. {ADMIN}, {TRUSTED_HOST} (the director), {NORMAL_USER}",
    )
    t.add_argument("--extra-vo", action="append", default=[], help="further VOs a service acts for")
    t.add_argument("--group")
    t.add_argument("--lifetime", type=int, default=3600, help="seconds")
    t.add_argument("--issuer")
    t.set_defaults(func=print_token)

    d = sub.add_parser("db", help="database maintenance")
    d.add_argument("action", choices=["upgrade"])
    d.add_argument("--db")
    d.add_argument("--data-dir")
    d.set_defaults(func=db_command)

    k = sub.add_parser("keys", help="signing key set maintenance")
    k.add_argument("action", choices=["rotate"])
    k.add_argument("--data-dir", required=True)
    k.set_defaults(func=keys_command)

    from server import maintenance  # purge dead secrets and tokens, log retention

    maintenance.add_parsers(sub)


def run_server(args: argparse.Namespace) -> int:
    import uvicorn

    scheme = "https" if args.tls_cert else "http"
    issuer = (
        args.issuer
        or os.environ.get("SITE_DIRECTOR_ISSUER")
        or f"{scheme}://{args.host}:{args.port}"
    )
    settings = _settings_from(args, issuer=issuer)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    ssl: dict[str, Any] = {}
    if args.tls_cert:
        if not args.tls_key:
            raise SystemExit2("--tls-cert needs --tls-key")
        ssl = {"ssl_certfile": args.tls_cert, "ssl_keyfile": args.tls_key}
    common: dict[str, Any] = dict(
        host=args.host, port=args.port, log_level=args.log_level, access_log=False, **ssl
    )
    if args.workers > 1:
        # workers re-create the app from the environment: pass the settings that way
        os.environ.update(_settings_env(settings))
        uvicorn.run("server.cli:app_from_env", factory=True, workers=args.workers, **common)
    else:
        from server.app import create_app

        uvicorn.run(create_app(settings), **common)
    return 0


def _settings_env(settings: ServerSettings) -> dict[str, str]:
    import json

    env = {}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        env[f"SITE_DIRECTOR_{name.upper()}"] = (
            json.dumps(value) if isinstance(value, list) else str(value)
        )
    return env


def app_from_env() -> Any:
    from server.app import create_app

    return create_app(ServerSettings())


def print_token(args: argparse.Namespace) -> int:
    settings = _settings_from(args)
    issuer = args.issuer or settings.issuer
    keys = KeyStore(settings.keyset_path, issuer)
    print(
        mint_user_token(
            keys,
            sub=args.sub,
            vo=args.vo,
            properties=args.property,
            lifetime=args.lifetime,
            group=args.group,
            extra_vos=args.extra_vo,
        )
    )
    return 0


def db_command(args: argparse.Namespace) -> int:
    from server.db.engine import Database
    from server.db.migrate import upgrade

    settings = _settings_from(args)
    settings.data_dir.mkdir(parents=True, exist_ok=True)

    async def _run() -> None:
        db = Database(settings.database_url)
        try:
            await upgrade(db)
        finally:
            await db.close()

    asyncio.run(_run())
    print("database is at the latest schema", file=sys.stderr)
    return 0


def keys_command(args: argparse.Namespace) -> int:
    new = rotate_keyset(Path(args.data_dir) / "jwks.json")
    logging.getLogger(__name__).info("rotated")
    print("new signing keys: " + ", ".join(new))
    return 0


class SystemExit2(Exception):
    """Bad usage: the CLI prints the message and exits with status 2."""
