"""Server commands of the `site-director` script: server, token, db upgrade, keys."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import Any

from server.context import ServerContext
from server.db.engine import Database, check_database
from server.db.migrate import upgrade, upgrade_in_child
from server.identity import ADMIN, KNOWN_PROPERTIES, NORMAL_USER, TRUSTED_HOST, mint_user_token
from server.installation import default_issuer, key_grace, open_server_keys, recorded_vos
from server.keys import (
    KeySetError,
    KeyStatus,
    KeyStore,
    activate_keyset,
    key_statuses,
    read_keyset,
    record_signed,
    rotate_keyset,
    settle_issuer,
)
from server.maintenance import MaintenanceReport, run_maintenance
from server.settings import (
    CONFIG_VARIABLE,
    ServerConfigError,
    ServerSettings,
    load_server_settings,
)

KEYS_FILE_HELP = "the signing key set file (default: jwks.json in --data-dir); hosts may share one"


def _settings_from(args: argparse.Namespace, **extra: Any) -> ServerSettings:
    """Flags given on the command line override the environment, which overrides the
    configuration file (--config, or SITE_DIRECTOR_SERVER_CONFIG) and the defaults."""
    given: dict[str, Any] = {}
    if getattr(args, "data_dir", None):
        given["data_dir"] = Path(args.data_dir)
    if getattr(args, "db", None):
        given["db_url"] = args.db
    if isinstance(getattr(args, "vo", None), list):
        given["vos"] = args.vo
    if getattr(args, "issuer", None):
        given["issuer"] = args.issuer
    if getattr(args, "keys_file", None):
        given["keys_file"] = Path(args.keys_file)
    for name in ("host", "port", "workers", "tls_cert", "tls_key", "log_level"):
        if getattr(args, name, None) is not None:  # the server's own flags
            given[name] = getattr(args, name)
    given.update(extra)
    config = getattr(args, "config", None)
    try:
        return load_server_settings(Path(config) if config else None, **given)
    except ServerConfigError as exc:
        raise SystemExit2(str(exc)) from exc


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        help=f"the server's YAML settings, e.g. /etc/site-director/server.yaml "
        f"(default: ${CONFIG_VARIABLE}, else none); the environment and flags override it",
    )


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("server", help="run the pilot and auth server (uvicorn)")
    add_config_argument(p)
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to listen on (default 8000)")
    p.add_argument("--db", help="database URL (default: SQLite under --data-dir)")
    p.add_argument("--data-dir", help="keys and the SQLite database (default: ./data)")
    p.add_argument("--keys-file", help=KEYS_FILE_HELP)
    p.add_argument("--vo", action="append", help="a VO to serve (repeat); default from settings")
    p.add_argument(
        "--issuer",
        help="public base URL, the tokens' iss: recorded in the key set on the first start "
        "(default then: this host's URL); later it must match the record",
    )
    p.add_argument(
        "--change-issuer",
        action="store_true",
        help="record --issuer in place of the key set's issuer (every token issued so far dies)",
    )
    p.add_argument("--workers", type=int, help="uvicorn worker processes (default 1)")
    p.add_argument("--tls-cert", help="PEM certificate chain: serve HTTPS")
    p.add_argument("--tls-key", help="PEM private key for --tls-cert")
    p.add_argument("--log-level", type=str.lower, help="uvicorn's (default info)")
    p.set_defaults(func=run_server)

    t = sub.add_parser("token", help="print a signed access token from the server's key set")
    add_config_argument(t)
    t.add_argument("--data-dir", required=True)
    t.add_argument("--keys-file", help=KEYS_FILE_HELP)
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
    t.add_argument("--issuer", help="check that the data directory records this issuer")
    t.set_defaults(func=print_token)

    d = sub.add_parser("db", help="database maintenance")
    d.add_argument("action", choices=["upgrade"])
    add_config_argument(d)
    d.add_argument("--db")
    d.add_argument("--data-dir")
    d.set_defaults(func=db_command)

    k = sub.add_parser(
        "keys",
        help="signing key set: rotate (publish a next key), activate (let it sign now), list",
    )
    k.add_argument("action", choices=["rotate", "activate", "list"])
    add_config_argument(k)
    k.add_argument("--data-dir", help="the server's data directory (its jwks.json)")
    k.add_argument("--keys-file", help=KEYS_FILE_HELP)
    k.add_argument(
        "--delay",
        type=int,
        help="rotate: seconds the new keys are published before they sign "
        "(default: key_publication_delay, 3600)",
    )
    k.add_argument(
        "--grace",
        type=int,
        help="rotate: seconds the replaced keys keep verifying once the new ones sign "
        "(default: key_grace, else the longest token lifetime; never shorter than a token "
        "`token` printed with them)",
    )
    k.add_argument(
        "--retire-now",
        action="store_true",
        help="rotate after a leak: the new keys sign at once and every older key is removed "
        "(every token issued so far stops working, the director's too)",
    )
    k.set_defaults(func=keys_command)

    _add_maintenance_parser(sub)  # purge dead secrets and tokens, log retention


def run_server(args: argparse.Namespace) -> int:
    import uvicorn

    settings = _settings_from(args)
    ssl: dict[str, Any] = {}
    if settings.tls_cert:
        if not settings.tls_key:
            raise SystemExit2("--tls-cert (tls_cert) needs --tls-key (tls_key)")
        ssl = {"ssl_certfile": str(settings.tls_cert), "ssl_keyfile": str(settings.tls_key)}
    if args.change_issuer and not settings.issuer:
        raise SystemExit2("--change-issuer needs --issuer (or SITE_DIRECTOR_ISSUER)")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    asyncio.run(check_database(settings.database_url))  # down: one line, not a traceback
    if settings.auto_migrate:  # here rather than in the app: Alembic's memory leaves with the child
        upgrade_in_child(settings.database_url)
        settings = settings.model_copy(update={"auto_migrate": False})  # the workers' too
    # The issuer is the installation's, recorded with the key set: a token printed from this
    # data directory is accepted whatever host, port or TLS the server runs with.
    try:
        issuer = settle_issuer(
            settings.keyset_path,
            settings.issuer,
            default=default_issuer(settings.host, settings.port, bool(settings.tls_cert)),
            change=args.change_issuer,
        )
    except KeySetError as exc:
        raise SystemExit2(str(exc)) from exc
    if issuer != settings.issuer:
        logging.getLogger("server").info(
            "issuer %s (recorded in %s; --issuer sets it on a first start)",
            issuer,
            settings.keyset_path,
        )
    settings = settings.model_copy(update={"issuer": issuer})
    common: dict[str, Any] = dict(
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,
        **ssl,
    )
    from server.notify import Notifier, serve

    # systemd (Type=notify) hears READY=1 once uvicorn listens with the app started
    notifier = Notifier()
    if settings.workers > 1:
        # workers re-create the app from the environment: pass the settings that way
        os.environ.update(_settings_env(settings))
        config = uvicorn.Config(
            "server.cli:app_from_env",
            factory=True,
            workers=settings.workers,
            log_config=_worker_log_config(),
            **common,
        )
    else:
        from server.app import create_app

        config = uvicorn.Config(create_app(settings), **common)
    serve(config, notifier)
    return 0


def _worker_log_config() -> dict[str, Any]:
    """uvicorn's logging configuration plus the root logger as this process has it (level,
    line format, stderr). Each worker is a spawned interpreter that only applies uvicorn's
    configuration: without the root logger, a worker's INFO lines (the access log, the
    maintenance's) would be dropped, and several workers would log less than one."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    root = logging.getLogger()
    formats = [h.formatter._fmt for h in root.handlers if h.formatter and h.formatter._fmt]
    config: dict[str, Any] = copy.deepcopy(LOGGING_CONFIG)
    config["formatters"]["server"] = {"format": formats[0] if formats else logging.BASIC_FORMAT}
    config["handlers"]["server"] = {
        "class": "logging.StreamHandler",
        "formatter": "server",
        "stream": "ext://sys.stderr",
    }
    config["root"] = {"handlers": ["server"], "level": logging.getLevelName(root.level)}
    return config


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
    """A token for the server serving this data directory: its key set and recorded issuer,
    one of its VOs, known properties. Anything else is refused here, not by the server later."""
    settings = _settings_from(args)
    if not settings.keyset_path.exists():
        raise SystemExit2(
            f"no key set in {settings.data_dir} (is --data-dir the server's? "
            "the server makes its key set on its first start)"
        )
    try:
        keys = KeyStore.existing(settings.keyset_path)
    except KeySetError as exc:
        raise SystemExit2(str(exc)) from exc
    if settings.issuer and settings.issuer != keys.issuer:
        raise SystemExit2(
            f"{settings.data_dir} records the issuer {keys.issuer!r}, not {settings.issuer!r}"
        )
    served = recorded_vos(settings.data_dir) or settings.vos
    for vo in [args.vo, *args.extra_vo]:
        if vo not in served:
            raise SystemExit2(f"unknown VO {vo!r}: the server serves {', '.join(served)}")
    unknown = sorted(set(args.property) - KNOWN_PROPERTIES)
    if unknown:
        raise SystemExit2(
            f"unknown property {unknown[0]!r}: known are {', '.join(sorted(KNOWN_PROPERTIES))}"
        )
    if args.lifetime < 1:
        raise SystemExit2("--lifetime must be at least 1 second")
    kid = keys.signing_kid()
    token = mint_user_token(
        keys,
        sub=args.sub,
        vo=args.vo,
        properties=args.property,
        lifetime=args.lifetime,
        group=args.group,
        extra_vos=args.extra_vo,
    )
    # the key must verify this token as long as it lives, whatever grace a rotation gives
    try:
        record_signed(keys.path, kid, keys.verify(token)["exp"])
    except (OSError, KeySetError) as exc:
        logging.getLogger(__name__).warning(
            "cannot record the token's expiry in %s (%s): a key rotation may end it early",
            keys.path,
            exc,
        )
    print(token)
    return 0


def db_command(args: argparse.Namespace) -> int:
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
    """Key rotation an operator runs from cron: `keys rotate` publishes new keys that sign
    after the publication delay, and the replaced ones leave after the grace, by themselves;
    every server reading the file follows without a restart."""
    import time

    if not (args.data_dir or args.keys_file or args.config or os.environ.get(CONFIG_VARIABLE)):
        raise SystemExit2("give --data-dir (the server's), --keys-file or --config")
    settings = _settings_from(args)
    path = settings.keyset_path
    if not path.exists():
        raise SystemExit2(f"no key set at {path} (the server makes it on its first start)")
    if args.action != "rotate" and (
        args.delay is not None or args.grace is not None or args.retire_now
    ):
        raise SystemExit2("--delay, --grace and --retire-now go with rotate")
    for name in ("delay", "grace"):
        if (getattr(args, name) or 0) < 0:
            raise SystemExit2(f"--{name} is seconds, not negative")
    try:
        if args.action == "rotate":
            delay = settings.key_publication_delay if args.delay is None else args.delay
            grace = key_grace(settings) if args.grace is None else args.grace
            new = rotate_keyset(path, delay=delay, grace=grace, retire_now=args.retire_now)
            start = "now" if args.retire_now else f"in {delay} s"
            print(f"published {', '.join(new)}: they sign {start}")
        elif args.action == "activate":
            activated = activate_keyset(path)
            print(f"signing now: {', '.join(activated)}" if activated else "no key was waiting")
        document = read_keyset(path)
    except KeySetError as exc:
        raise SystemExit2(str(exc)) from exc
    now = int(time.time())
    for status in key_statuses(document, now):
        print(_status_line(status, now))
    return 0


def _status_line(status: KeyStatus, now: int) -> str:
    def when(moment: int | None) -> str:
        if moment is None:
            return "-"
        return time_text(moment) + (f" (in {moment - now} s)" if moment > now else "")

    return (
        f"{status.kid:36} {status.alg:6} {status.state:9} "
        f"signs from {when(status.signs_from)}, verifies until {when(status.verify_until)}"
    )


def time_text(moment: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class SystemExit2(Exception):
    """Bad usage: the CLI prints the message and exits with status 2."""


def _add_maintenance_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    m = sub.add_parser(
        "maintenance",
        help="purge old pilots, dead secrets and tokens; apply log retention (what the server"
        " runs on its own schedule)",
    )
    m.add_argument("--db", help="database URL (default: SQLite under --data-dir)")
    m.add_argument("--data-dir", help="keys and the SQLite database (default: ./data)")
    m.add_argument(
        "--log-retention-days",
        type=int,
        default=None,
        help="delete log lines received more than N days ago (default: the server's setting,"
        " unset: keep them as long as their pilot)",
    )
    m.add_argument(
        "--pilot-retention-days",
        type=int,
        default=None,
        help="delete pilots submitted more than N days ago, any status (default 30; 0 keeps)",
    )
    m.add_argument(
        "--aborted-retention-days",
        type=int,
        default=None,
        help="delete Aborted pilots submitted more than N days ago (default 7; 0 keeps)",
    )
    m.set_defaults(func=maintenance_command)


def maintenance_command(args: argparse.Namespace) -> int:
    flags = {
        "--log-retention-days": args.log_retention_days,
        "--pilot-retention-days": args.pilot_retention_days,
        "--aborted-retention-days": args.aborted_retention_days,
    }
    for flag, value in flags.items():
        if value is not None and value < 0:
            print(f"{flag} must be 0 or more", file=sys.stderr)
            return 2
    settings: ServerSettings = _settings_from(args)

    async def _run() -> MaintenanceReport:
        db = Database(settings.database_url)
        try:
            ctx = ServerContext(settings=settings, db=db, keys=open_server_keys(settings))
            return await run_maintenance(
                ctx,
                args.log_retention_days,
                pilot_retention_days=args.pilot_retention_days,
                aborted_pilot_retention_days=args.aborted_retention_days,
            )
        finally:
            await db.close()

    print(asyncio.run(_run()))
    return 0
