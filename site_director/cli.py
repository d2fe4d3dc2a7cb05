"""The `site-director` console script: one entry point for the server and the director.

It assembles the server's commands (`server.cli`) and the director's (`director.commands`) and
owns what they share: logging set up once, and the exit codes: 0 success, 2 bad usage or
configuration, 1 anything else, with a one-line reason on stderr.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from director import commands as director_commands
from director.commands.common import KEYVALUE_FORMAT
from director.errors import ConfigError
from server import cli as server_cli
from server.cli import SystemExit2
from server.unit import add_unit_option


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="site-director", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    server_cli.add_parsers(sub)
    director_commands.add_parsers(sub)
    add_unit_option(sub.choices["unit"])  # `unit --server`: the server's unit
    return parser


def _one_line(error: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in error.errors()
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(args, "director_log_level", None) or logging.INFO,  # director --log-level
        format=KEYVALUE_FORMAT,  # director.log_format: json swaps it (commands/common.py)
        stream=sys.stderr,
    )
    try:
        return int(args.func(args) or 0)
    except (ConfigError, SystemExit2) as exc:
        print(f"site-director: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        print(f"site-director: invalid settings: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 1
    except Exception as exc:  # the contract: one line on stderr, exit 1
        print(f"site-director: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
