"""`site-director ban`, `allow` and `bans`: ban a site, CE or queue for a VO, allow it again,
list the bans, through the server's `/api/bans`.

The server and the token come from `--server URL --token-file F [--ca-bundle F]`, or, for
whichever is not given, from the director's configuration (`--config`, as the other
commands): so on a director host `site-director bans` needs no flag. Banning and allowing
need a token with DIRAC's SiteManager property (or ServiceAdministrator), usually not the
director's own TrustedHost token: pass the operator's with `--token-file`.

Exit codes as every command: 0 done, 2 bad usage, 1 the server refused or did not answer
(one line on stderr naming the URL and its reason).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from director.client import ServerClient, TokenSource
from director.commands.common import DEFAULT_CONFIG, console, quiet_http_logs, table
from director.config import load_config
from director.errors import ConfigError, TokenUnavailable
from server.models import Ban, BanRequest, BanTarget

_RELATIVE = re.compile(r"^\+?(\d{1,6})([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def _connection_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("server (default: the director's configuration)")
    group.add_argument("--server", help="the server's base URL (default: server.url)")
    group.add_argument(
        "--token-file",
        type=Path,
        help="a file holding the bearer token (default: server.token_file of the config)",
    )
    group.add_argument("--ca-bundle", type=Path, help="PEM CA bundle (default: server.ca_bundle)")
    group.add_argument(
        "--config",
        "-c",
        type=Path,
        default=None,
        help=f"director configuration read for what is not given ($SITE_DIRECTOR_CONFIG or "
        f"{DEFAULT_CONFIG})",
    )
    group.add_argument("--timeout", type=float, default=30.0, help="seconds per request")


def _target_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--vo", help="the VO (default: the token's own)")
    parser.add_argument("--site", required=True, help="the site, e.g. LCG.CERN.cern")
    parser.add_argument("--ce", help="one CE of the site (default: the whole site)")
    parser.add_argument("--queue", help="one CE-side queue of that CE (needs --ce)")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("ban", help="ban a site, CE or queue for a VO: no new pilots there")
    _target_arguments(p)
    p.add_argument("--reason", required=True, help="why (required; shown to everyone)")
    p.add_argument(
        "--until",
        help="when the ban ends by itself: an ISO 8601 time (UTC unless it says otherwise) "
        "or a duration from now such as 2h, 3d, 1w (default: until allowed)",
    )
    _connection_arguments(p)
    p.set_defaults(func=main_ban)

    p = sub.add_parser("allow", help="lift the ban in force on a site, CE or queue")
    _target_arguments(p)
    _connection_arguments(p)
    p.set_defaults(func=main_allow)

    p = sub.add_parser("bans", help="list the bans in force (of the token's VOs)")
    p.add_argument("--vo", help="only this VO's")
    p.add_argument("--history", action="store_true", help="also the allowed and ended ones")
    p.add_argument("--json", action="store_true", help="JSON instead of a table")
    _connection_arguments(p)
    p.set_defaults(func=main_list)


def parse_until(value: str | None, now: datetime | None = None) -> datetime | None:
    """`--until`: an ISO 8601 time (naive = UTC) or a duration from now (`2h`, `3d`)."""
    if value is None:
        return None
    relative = _RELATIVE.match(value.strip())
    if relative:
        amount, unit = int(relative.group(1)), _UNITS[relative.group(2)]
        return (now or datetime.now(UTC)) + timedelta(**{unit: amount})
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise ConfigError(f"--until {value!r}: neither an ISO 8601 time nor 2h/3d/1w") from exc
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def client_from(args: argparse.Namespace) -> ServerClient:
    """A client for the server named by the flags, the rest from the director's config."""
    url, token_file, ca_bundle = args.server, args.token_file, args.ca_bundle
    token = None
    if url is None or token_file is None:
        path = args.config or Path(os.environ.get("SITE_DIRECTOR_CONFIG", DEFAULT_CONFIG))
        settings = load_config(path, require_token=token_file is None)
        url = url or str(settings.server.url)
        ca_bundle = ca_bundle or settings.server.ca_bundle
        if token_file is None:
            token_file, token = settings.server.token_file, settings.server.token
    source = TokenSource(token_file, token)
    try:
        source.get()
    except TokenUnavailable as exc:
        raise ConfigError(str(exc).replace("server.token_file", "--token-file")) from exc
    return ServerClient(url, source, ca_bundle=ca_bundle, timeout=args.timeout)


def _model(cls: type[BanTarget], values: dict[str, Any]) -> Any:
    try:
        return cls.model_validate({k: v for k, v in values.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(
            f"--{'.'.join(str(p) for p in e['loc']) or 'target'}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(problems) from exc


def _target(args: argparse.Namespace) -> dict[str, Any]:
    return {"vo": args.vo, "site": args.site, "ce": args.ce, "queue": args.queue}


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _rows(bans: list[Ban]) -> list[list[Any]]:
    return [
        [
            b.ban_id,
            b.vo,
            b.kind,
            b.target,
            b.reason,
            b.banned_by,
            _when(b.banned_at),
            _when(b.until),
            "in force" if b.active else f"allowed by {b.allowed_by}" if b.allowed_by else "ended",
        ]
        for b in bans
    ]


COLUMNS = ["id", "vo", "kind", "target", "reason", "by", "since", "until", "state"]


async def _ban(args: argparse.Namespace) -> int:
    body = _model(
        BanRequest, {**_target(args), "reason": args.reason, "until": parse_until(args.until)}
    )
    async with client_from(args) as client:
        made = await client.ban(body)
    console().print(table("banned", COLUMNS, _rows([made])))
    return 0


async def _allow(args: argparse.Namespace) -> int:
    body = _model(BanTarget, _target(args))
    async with client_from(args) as client:
        lifted = await client.allow(body)
    console().print(table("allowed again", COLUMNS, _rows(lifted)))
    return 0


async def _list(args: argparse.Namespace) -> int:
    async with client_from(args) as client:
        bans = await client.list_bans(args.vo, history=args.history)
    if args.json:
        print(json.dumps([b.model_dump(mode="json") for b in bans], indent=1))
    elif not bans:
        print("no ban in force" if not args.history else "no ban")
    else:
        console().print(table("bans", COLUMNS, _rows(bans)))
    return 0


def main_ban(args: argparse.Namespace) -> int:
    quiet_http_logs()
    return asyncio.run(_ban(args))


def main_allow(args: argparse.Namespace) -> int:
    quiet_http_logs()
    return asyncio.run(_allow(args))


def main_list(args: argparse.Namespace) -> int:
    quiet_http_logs()
    return asyncio.run(_list(args))
