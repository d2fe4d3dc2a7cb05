"""What the director's commands share: the --config flag, flag overrides, output tables."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

from pythonjsonlogger.json import JsonFormatter
from rich.console import Console
from rich.table import Table

from director.client import ServerClient
from director.config import Settings, load_config, merge, nested_override
from director.errors import ConfigError, TokenUnavailable

DEFAULT_CONFIG = "/etc/site-director/config.yaml"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
KEYVALUE_FORMAT = "%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"

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
    parser.add_argument(
        "--log-level",
        dest="director_log_level",  # `server --log-level` is uvicorn's, in its own words
        type=str.upper,
        choices=LOG_LEVELS,
        default=None,
        help="least severe level logged (default INFO)",
    )


def overrides_from(args: argparse.Namespace) -> dict[str, Any]:
    parts = [
        nested_override(key, getattr(args, flag))
        for flag, (key, _) in _OVERRIDES.items()
        if getattr(args, flag, None) is not None
    ]
    return merge(*parts)


def settings_from(args: argparse.Namespace, *, require_token: bool = True) -> Settings:
    """The settings of a command (and of each reload of `run`), with the log format they ask
    for put on the root logger's handlers."""
    settings = load_config(args.config, overrides_from(args), require_token=require_token)
    use_log_format(settings.director.log_format)
    return settings


def check_token(client: ServerClient) -> None:
    """Read the director's token before the first call: a file that cannot be read is a
    configuration problem (exit 2, naming the file), not a failed call."""
    if client.token is not None:
        try:
            client.token.get()
        except TokenUnavailable as exc:
            raise ConfigError(str(exc)) from exc


def use_log_format(log_format: str) -> None:
    """`keyvalue`: one `key=value` line per record; `json`: one JSON object per line, the
    record's extra fields (a queue's cycle values) as keys of their own (python-json-logger)."""
    formatter: logging.Formatter
    if log_format == "json":
        formatter = JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        )
    else:
        formatter = logging.Formatter(KEYVALUE_FORMAT)
    for handler in logging.getLogger().handlers:
        current = handler.formatter
        # only the handler `site-director` set up (in site_director/cli.py), never a test harness's
        if isinstance(current, JsonFormatter) or getattr(current, "_fmt", "") == KEYVALUE_FORMAT:
            handler.setFormatter(formatter)


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
