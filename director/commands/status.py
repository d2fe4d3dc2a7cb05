"""`site-director status`: the configured queues and their pilots by status, from the server.

A server that cannot be asked, or refuses the director's token, is exit code 1 with one line on
stderr naming the URL and the reason (`site_director/cli.py` prints it)."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from director.commands.common import (
    add_config_arguments,
    check_token,
    console,
    quiet_http_logs,
    settings_from,
    table,
)
from director.config import Settings
from director.daemon import client_for
from server.models import PilotStatus, SummaryParams

STATUSES = [s.value for s in PilotStatus]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("status", help="queues and pilots by status, from the server")
    add_config_arguments(p)
    p.set_defaults(func=main)


async def status_rows(settings: Settings) -> list[list[Any]]:
    """One row per configured queue: its state and pilot counts by status."""
    async with client_for(settings) as client:
        check_token(client)
        rows = await client.summary(
            SummaryParams(grouping=["GridSite", "DestinationSite", "Queue", "Status"])
        )
    counts: dict[tuple[str, str, str], dict[str, int]] = {}
    for row in rows:
        key = (str(row.get("GridSite")), str(row.get("DestinationSite")), str(row.get("Queue")))
        counts.setdefault(key, {})[str(row.get("Status"))] = int(row.get("count", 0))
    result = []
    for ref in settings.queues():
        by_status = counts.get((ref.site, ref.ce, ref.ce_queue), {})
        state = "enabled" if ref.enabled else "disabled"
        result.append(
            [
                ref.key,
                str(getattr(ref.entry.ce, "kind", "?")),
                state,
                *(by_status.get(s, 0) for s in STATUSES),
                sum(by_status.values()),
            ]
        )
    return result


async def _status(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    rows = await status_rows(settings)
    console().print(
        table("queues and pilots by status", ["queue", "kind", "state", *STATUSES, "total"], rows)
    )
    return 0


def main(args: argparse.Namespace) -> int:
    quiet_http_logs()
    return asyncio.run(_status(args))
