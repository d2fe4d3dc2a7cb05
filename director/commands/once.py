"""`site-director once`: one submission cycle (then one monitoring cycle), or a dry run.

The dry run mints nothing, registers nothing and submits nothing: it writes the rendered
wrappers (with a placeholder in place of the secret) and the CE's submit descriptions under
--output, and prints the plan per queue. It needs no server: counts come from the CE, or from
the server when the CE cannot tell and a server answers.

Exit code 1, with one line on stderr naming them, when a queue failed: a queue-level error, or
any of its submissions failed (a cycle in which every pilot failed is no success). The leases
the cycle took are released at the end, so a daemon started next takes the queues at once.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

from director.commands.common import (
    add_config_arguments,
    check_token,
    console,
    quiet_http_logs,
    settings_from,
    table,
)
from director.cycle.outcomes import MonitorOutcome, QueueOutcome
from director.daemon import client_for
from director.errors import ConfigError
from director.loop import Director

log = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("once", help="run one cycle (or a dry run) and exit")
    add_config_arguments(p)
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="no server side effects: write wrappers and descriptions to --output",
    )
    p.add_argument("--queue", help="only this queue (site/ce/queue, or the queue name)")
    p.add_argument(
        "--output",
        type=Path,
        default=Path("dry-run"),
        help="dry run: folder for wrappers and submit descriptions (default ./dry-run)",
    )
    p.add_argument("--no-monitor", action="store_true", help="skip the monitoring cycle")
    p.set_defaults(func=main)


def plan_rows(outcomes: list[QueueOutcome]) -> list[list[Any]]:
    return [
        [
            o.queue,
            o.kind,
            o.waiting,
            o.running,
            o.slots,
            o.demand,
            o.n,
            o.submitted,
            o.failed,
            o.why,
        ]
        for o in outcomes
    ]


PLAN_COLUMNS = [
    "queue",
    "kind",
    "waiting",
    "running",
    "slots",
    "demand",
    "n",
    "submitted",
    "failed",
    "why",
]


async def _once(args: argparse.Namespace) -> int:
    dry = bool(args.dry_run)
    settings = settings_from(args, require_token=not dry)
    client = None
    if not dry or settings.server.token_file is not None or settings.server.token is not None:
        client = client_for(settings)
    director = Director(settings, client=client)
    problems = director.check()
    if problems:
        raise ConfigError("\n".join(problems))
    monitored: list[MonitorOutcome] = []
    took_leases = False
    try:
        if client is not None and not dry:
            check_token(client)
        took_leases = not dry
        outcomes = await director.run_cycle(
            dry_run=dry, output=args.output if dry else None, only=args.queue
        )
        if not dry and not args.no_monitor:
            monitored = await director.monitor_cycle(only=args.queue)
    finally:
        if took_leases:
            await director.release_leases()
        await director.close()
        if client is not None:
            await client.aclose()
    out = console()
    title = f"dry run: wrappers in {args.output}" if dry else "submission cycle"
    out.print(table(title, PLAN_COLUMNS, plan_rows(outcomes)))
    if monitored:
        out.print(
            table(
                "monitoring cycle",
                ["queue", "checked", "updated", "aborted", "cleaned", "why"],
                [
                    [m.queue, m.checked, m.updated, m.aborted, m.cleaned, m.why or m.error or ""]
                    for m in monitored
                ],
            )
        )
    return _failures(outcomes, monitored)


def _failures(outcomes: list[QueueOutcome], monitored: list[MonitorOutcome]) -> int:
    """1 and one line on stderr naming the queues that failed, or 0."""
    failed = {o.queue: o.error or o.why for o in outcomes if o.error or o.failed}
    for m in monitored:
        if m.error:
            failed.setdefault(m.queue, f"monitoring: {m.error}")
    if not failed:
        return 0
    named = "; ".join(f"{queue} ({' '.join(why.split())})" for queue, why in failed.items())
    print(f"site-director: {len(failed)} queue(s) failed: {named}", file=sys.stderr)
    return 1


def main(args: argparse.Namespace) -> int:
    quiet_http_logs()
    return asyncio.run(_once(args))
