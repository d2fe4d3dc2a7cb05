"""What the director's commands share: the --config flag, flag overrides, output tables."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from director.config import Settings, load_config, merge, nested_override

DEFAULT_CONFIG = "/etc/site-director/config.yaml"

#: flag -> (dotted config key, type)
_OVERRIDES: dict[str, tuple[str, Any]] = {
    "server_url": ("server.url", str),
    "token_file": ("server.token_file", str),
    "ca_bundle": ("server.ca_bundle", str),
    "work_dir": ("director.work_dir", str),
    "template_dir": ("director.template_dir", str),
    "concurrency": ("director.concurrency", int),
    "name": ("director.name", str),
    "log_format": ("director.log_format", str),
}


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        "-c",
        type=Path,
        default=Path(os.environ.get("SITE_DIRECTOR_CONFIG", DEFAULT_CONFIG)),
        help=f"YAML configuration (default: $SITE_DIRECTOR_CONFIG or {DEFAULT_CONFIG})",
    )
    group = parser.add_argument_group("overrides (beat the file and the environment)")
    group.add_argument("--server-url", help="server.url")
    group.add_argument("--token-file", help="server.token_file")
    group.add_argument("--ca-bundle", help="server.ca_bundle")
    group.add_argument("--work-dir", help="director.work_dir")
    group.add_argument("--template-dir", help="director.template_dir")
    group.add_argument("--concurrency", type=int, help="director.concurrency")
    group.add_argument("--name", help="director.name (lease holder)")
    group.add_argument("--log-format", choices=["keyvalue", "json"], help="director.log_format")


def overrides_from(args: argparse.Namespace) -> dict[str, Any]:
    parts = [
        nested_override(key, getattr(args, flag))
        for flag, (key, _) in _OVERRIDES.items()
        if getattr(args, flag, None) is not None
    ]
    return merge(*parts)


def settings_from(args: argparse.Namespace, *, require_token: bool = True) -> Settings:
    return load_config(args.config, overrides_from(args), require_token=require_token)


def table(title: str, columns: list[str], rows: list[list[Any]]) -> Table:
    result = Table(title=title, title_justify="left")
    for column in columns:
        result.add_column(column, overflow="fold")
    for row in rows:
        result.add_row(*(str(c) for c in row))
    return result


def quiet_http_logs() -> None:
    """httpx logs every request at INFO: too much for a daemon's log; keep warnings."""
    logging.getLogger("httpx").setLevel(logging.WARNING)


def console() -> Console:
    """A console that keeps table rows on one line when the output is not a terminal."""
    out = Console(soft_wrap=False)
    if not out.is_terminal:
        out = Console(soft_wrap=False, width=200)
    return out
