"""`site-director kill`, `kills` and `pilots output`: ask for pilots to be killed, list the
kill requests, show a pilot's CE output or ask for it to be fetched, through the server's
`/api/pilots/kills`, `/api/pilots/output-requests` and `/api/pilots/output`.

The server and the token come as for `ban` (`--server URL --token-file F [--ca-bundle F]`,
or the director's configuration for what is not given). Killing and asking for an output
need a token with DIRAC's Operator property (or ServiceAdministrator); reading needs any
token of the VO. The director that follows each pilot carries the request out at its next
monitoring step; the pilot then ends Aborted with "killed by <who>: <why>".

Exit codes as every command: 0 done, 2 bad usage, 1 the server refused or did not answer.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ValidationError

from director.commands.bans import _connection_arguments, client_from
from director.commands.common import console, quiet_http_logs, table
from director.errors import ConfigError
from server.models import KillRequest, OutputFetchRequest, PilotOutput, PilotRequest

COLUMNS = ["id", "pilot", "vo", "state", "by", "asked", "reason", "attempts", "last error"]
STATES = ["pending", "open", "requested", "in_progress", "done", "failed", "already_ended"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "kill", help="ask for pilots (by stamp, or every live pilot of a queue) to be killed"
    )
    p.add_argument("stamps", nargs="*", metavar="STAMP", help="the pilots' stamps")
    p.add_argument("--site", help="with --ce and --queue: every live pilot of that queue")
    p.add_argument("--ce", help="the CE (the pilots' DestinationSite)")
    p.add_argument("--queue", help="the CE-side queue")
    p.add_argument("--vo", help="the queue's VO (default: the token's own)")
    p.add_argument("--reason", required=True, help="why (required; in the pilot's status)")
    p.add_argument("--json", action="store_true", help="JSON instead of a table")
    _connection_arguments(p)
    p.set_defaults(func=main_kill)

    p = sub.add_parser("kills", help="list kill requests (of the token's VOs)")
    p.add_argument("--state", choices=STATES, help="only these (pending: due now)")
    p.add_argument("--vo", help="only this VO's")
    p.add_argument("--stamp", help="only this pilot's")
    p.add_argument("--json", action="store_true", help="JSON instead of a table")
    _connection_arguments(p)
    p.set_defaults(func=main_list)

    p = sub.add_parser("pilots", help="one pilot's CE output")
    pilots = p.add_subparsers(dest="pilots_command", required=True)
    o = pilots.add_parser(
        "output", help="print a pilot's stored CE output, or (--fetch) ask for it"
    )
    o.add_argument("stamp", metavar="STAMP")
    o.add_argument(
        "--fetch",
        action="store_true",
        help="ask the pilot's director to fetch it from the CE (Operator property)",
    )
    o.add_argument("--reason", help="why, with --fetch")
    o.add_argument("--json", action="store_true", help="JSON instead of text")
    _connection_arguments(o)
    o.set_defaults(func=main_output)


def _model(cls: type[BaseModel], values: dict[str, Any]) -> Any:
    try:
        return cls.model_validate({k: v for k, v in values.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(
            f"--{'.'.join(str(p) for p in e['loc']) or 'selection'}: {e['msg']}"
            for e in exc.errors()
        )
        raise ConfigError(problems) from exc


def kill_body(args: argparse.Namespace) -> KillRequest:
    """The request the flags name: the stamps, or the queue (all three of its flags)."""
    queue = {"vo": args.vo, "site": args.site, "ce": args.ce, "queue": args.queue}
    named = [k for k in ("site", "ce", "queue") if queue[k]]
    if args.stamps and named:
        raise ConfigError("give STAMPs or --site/--ce/--queue, not both")
    if not args.stamps and len(named) != 3:
        raise ConfigError("give STAMPs, or --site, --ce and --queue for a whole queue")
    if args.stamps:
        return _model(KillRequest, {"pilot_stamps": args.stamps, "reason": args.reason})  # type: ignore[no-any-return]
    return _model(KillRequest, {"queue": queue, "reason": args.reason})  # type: ignore[no-any-return]


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _state(r: PilotRequest) -> str:
    state = r.state.value.replace("_", " ")
    if r.next_attempt_at is not None and r.state.value in ("requested", "in_progress"):
        state += f", next try {_when(r.next_attempt_at)}"
    return state


def _rows(requests: list[PilotRequest]) -> list[list[Any]]:
    return [
        [
            r.request_id,
            r.pilot_stamp,
            r.vo,
            _state(r),
            r.requested_by,
            _when(r.requested_at),
            r.reason or "",
            r.attempts,
            r.last_error or "",
        ]
        for r in requests
    ]


def _print(requests: list[PilotRequest], title: str, as_json: bool, empty: str) -> None:
    if as_json:
        print(json.dumps([r.model_dump(mode="json") for r in requests], indent=1))
    elif not requests:
        print(empty)
    else:
        console().print(table(title, COLUMNS, _rows(requests)))


async def _kill(args: argparse.Namespace) -> int:
    body = kill_body(args)
    async with client_from(args) as client:
        made = await client.request_kills(body)
    _print(made, "kill requested", args.json, "no live pilot to kill")
    return 0


async def _list(args: argparse.Namespace) -> int:
    async with client_from(args) as client:
        found = await client.list_requests(
            "kill", state=args.state, vo=args.vo, pilot_stamp=args.stamp
        )
    _print(found, "kill requests", args.json, "no kill request")
    return 0


def render_output(output: PilotOutput) -> str:
    """A pilot's output as text: a heading line, then each stream under its name."""
    head = f"pilot {output.pilot_stamp} ({output.vo}): uploaded {_when(output.uploaded_at)}"
    head += f" by {output.uploaded_by}"
    if output.not_available is not None:
        return f"{head}\nnot available: {output.not_available}\n"
    if output.truncated:
        head += " (cut to its last part)"
    parts = [head]
    for title, text in (
        ("stdout", output.std_output),
        ("stderr", output.std_error),
        ("CE log", output.ce_log),
    ):
        if text is not None:
            parts.append(f"--- {title} ---\n{text.rstrip()}")
    return "\n".join(parts) + "\n"


async def _output(args: argparse.Namespace) -> int:
    if args.reason and not args.fetch:
        raise ConfigError("--reason goes with --fetch")
    async with client_from(args) as client:
        if args.fetch:
            body = _model(OutputFetchRequest, {"pilot_stamps": [args.stamp], "reason": args.reason})
            made = await client.request_outputs(body)
            _print(made, "output fetch requested", args.json, "nothing requested")
            return 0
        output = await client.pilot_output(args.stamp)
    if output is None:
        print(
            f"no output stored for pilot {args.stamp} (or no such pilot of your VOs); "
            "ask for it with --fetch",
        )
        return 1
    if args.json:
        print(json.dumps(output.model_dump(mode="json"), indent=1))
    else:
        print(render_output(output), end="")
    return 0


def main_kill(args: argparse.Namespace) -> int:
    quiet_http_logs()
    return asyncio.run(_kill(args))


def main_list(args: argparse.Namespace) -> int:
    quiet_http_logs()
    return asyncio.run(_list(args))


def main_output(args: argparse.Namespace) -> int:
    quiet_http_logs()
    return asyncio.run(_output(args))
