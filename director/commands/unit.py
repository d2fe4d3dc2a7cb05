"""`site-director unit`: the director's systemd unit, rendered from
`templates/site-director.service.j2` (or the operator's own copy in director.template_dir).
`unit --server` prints the server's unit instead: server/unit.py adds that option (the director
never imports server code)."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from director.commands.common import add_config_arguments, settings_from
from director.render import TemplateRenderer

#: WatchdogSec of the director's unit: the daemon pings every half of it from its event loop
#: while its cycles make progress (director/daemon.py); a loop blocked this long is restarted.
WATCHDOG_SECONDS = 120


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "unit", help="print the systemd unit of the director (--server: of the server)"
    )
    add_config_arguments(p)
    p.add_argument("--user", default="dirac", help="account the daemon runs as (default dirac)")
    p.add_argument("--group", default=None, help="its group (default: same as --user)")
    p.set_defaults(func=main)


def render_unit(args: argparse.Namespace) -> str:
    settings = settings_from(args)
    config = args.config.resolve()
    beside = Path(sys.executable).parent / "site-director"
    executable = (
        str(beside) if beside.is_file() else shutil.which("site-director")
    ) or f"{sys.executable} -m site_director"
    read_paths = [config]
    for path in (
        settings.server.token_file,
        settings.server.ca_bundle,
        settings.director.template_dir,
    ):
        if path is not None:
            read_paths.append(path.resolve())
    extra = [settings.director.template_dir] if settings.director.template_dir else []
    return TemplateRenderer(extra).render(
        "site-director.service.j2",
        executable=executable,
        config=config,
        user=args.user,
        group=args.group or args.user,
        work_dir=settings.director.work_dir.resolve(),
        read_paths=" ".join(f"-{p}" for p in read_paths),
        watchdog_seconds=WATCHDOG_SECONDS,
    )


def main(args: argparse.Namespace) -> int:
    sys.stdout.write(render_unit(args))
    return 0
