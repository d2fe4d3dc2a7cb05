"""`site-director run`: the director daemon in the foreground (systemd runs it so)."""

from __future__ import annotations

import argparse
import asyncio
import logging

from director.commands.common import add_config_arguments, quiet_http_logs, settings_from
from director.daemon import Daemon


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("run", help="run the director daemon (foreground)")
    add_config_arguments(p)
    p.set_defaults(func=main)


async def _run(args: argparse.Namespace) -> int:
    daemon = Daemon(lambda: settings_from(args))
    return await daemon.run()


def main(args: argparse.Namespace) -> int:
    quiet_http_logs()
    # APScheduler logs each job run at INFO; the cycles log their own line per queue.
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    return asyncio.run(_run(args))
