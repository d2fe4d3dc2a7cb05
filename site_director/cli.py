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

from director.errors import ConfigError
from server import cli as server_cli
from server.cli import SystemExit2
from server.unit import add_unit_option

#: the log line's format, director.commands.common.KEYVALUE_FORMAT (which the director's
#: log_format: json compares with; tests/test_architecture.py keeps the two equal), written
#: out so that the server's commands do not import the director's
KEYVALUE_FORMAT = "%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Every command; only the server's when `command` is one of them, as the director's
    would cost the long-running server ~8 MB of resident memory (httpx, rich, the cycle)."""
    parser = argparse.ArgumentParser(prog="site-director", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    server_cli.add_parsers(sub)
    if command not in sub.choices:
        from director import commands as director_commands

        director_commands.add_parsers(sub)
        add_unit_option(sub.choices["unit"])  # `unit --server`: the server's unit
    return parser


def _one_line(error: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in error.errors()
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv[0] if argv else None)
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
