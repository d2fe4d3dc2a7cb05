"""The director's subcommands of `site-director`: run, once, status, demo, unit, ban,
allow and bans, and kill, kills and pilots (a module may add several).

Each module has `add_parser(subparsers)` and `main(args) -> exit code`; `add_parsers` registers
them all (called by `site_director/cli.py`).
"""

from __future__ import annotations

import argparse

from director.commands import bans, demo, kills, once, run, status, unit


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for module in (run, once, status, demo, unit, bans, kills):
        module.add_parser(sub)
