"""`site-director unit --server`: the server's systemd unit, rendered from
`templates/site-director-server.service.j2` for the server's settings file.

The `unit` command is the director's (director/commands/unit.py); the entry point
(site_director/cli.py) gives it this option, so that neither package imports the other. The
unit starts `site-director server --config F`: every setting lives in that file, none on the
unit's command line.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import jinja2

from server.settings import CONFIG_VARIABLE, ServerConfigError, load_server_settings

DEFAULT_CONFIG = "/etc/site-director/server.yaml"
DIRECTOR_DEFAULT_CONFIG = Path("/etc/site-director/config.yaml")
#: WatchdogSec of the server's unit: the event loop pings every half of it; a loop blocked this
#: long (every request waits meanwhile) is restarted.
WATCHDOG_SECONDS = 30
_ROOT = Path(__file__).resolve().parent.parent


def add_unit_option(unit: argparse.ArgumentParser) -> None:
    """Give the director's `unit` command its --server option."""
    unit.add_argument(
        "--server",
        action="store_true",
        help=f"print the server's unit; --config is then the server's settings file "
        f"(default: ${CONFIG_VARIABLE}, else {DEFAULT_CONFIG})",
    )
    director_unit: Callable[[argparse.Namespace], int] = unit.get_default("func")

    def main(args: argparse.Namespace) -> int:
        if not args.server:
            return director_unit(args)
        sys.stdout.write(render_server_unit(server_config(args), args.user, args.group))
        return 0

    unit.set_defaults(func=main)


def server_config(args: argparse.Namespace) -> Path:
    """--config when the operator gave one; else the server's own default, not the director's
    (--config then holds the director's default: /etc/site-director/config.yaml)."""
    given: Path = args.config
    if not os.environ.get("SITE_DIRECTOR_CONFIG") and given == DIRECTOR_DEFAULT_CONFIG:
        return Path(os.environ.get(CONFIG_VARIABLE) or DEFAULT_CONFIG)
    return given


def render_server_unit(config: Path, user: str, group: str | None) -> str:
    """The unit for the settings in `config` (read as the server reads them, so a bad file is
    the same one-line error, exit 2)."""
    from server.cli import SystemExit2

    config = config.resolve()
    if not config.is_file():
        raise SystemExit2(f"{config}: no such file (the server's settings)")
    try:
        settings = load_server_settings(config)
    except ServerConfigError as exc:
        raise SystemExit2(str(exc)) from exc
    data_dir = settings.data_dir.resolve()
    read_paths = [config]
    for path in (settings.keys_file, settings.tls_cert, settings.tls_key):
        if path is not None and not path.resolve().is_relative_to(data_dir):
            read_paths.append(path.resolve())
    state_dir = str(data_dir.relative_to("/var/lib")) if data_dir.is_relative_to("/var/lib") else ""
    return (
        _environment()
        .get_template("site-director-server.service.j2")
        .render(
            executable=_executable(),
            config=config,
            user=user,
            group=group or user,
            data_dir=data_dir,
            state_dir=state_dir,
            read_paths=" ".join(f"-{p}" for p in read_paths),
            low_port=0 < settings.port < 1024,
            watchdog_seconds=WATCHDOG_SECONDS,
        )
    )


def _executable() -> str:
    beside = Path(sys.executable).parent / "site-director"
    if beside.is_file():
        return str(beside)
    return shutil.which("site-director") or f"{sys.executable} -m site_director"


def _environment() -> jinja2.Environment:
    """`templates/` of a source checkout, or the copy a wheel installs in director/_templates
    (a data folder, not code)."""
    folders = [str(_ROOT / "templates"), str(_ROOT / "director" / "_templates")]
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader([f for f in folders if Path(f).is_dir()]),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # noqa: S701 - a systemd unit, not HTML
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
