"""The director's subcommands of `site-director`: run, once, status, demo, unit, and ban,
allow and bans (a module may add several).

Each module has `add_parser(subparsers)` and `main(args) -> exit code`; `add_parsers` registers
them all (called by `director/cli.py`).
"""

from __future__ import annotations

import argparse

from director.commands import bans, demo, once, run, status, unit


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for module in (run, once, status, demo, unit, bans):
        module.add_parser(sub)
