"""systemd's notify protocol for the server: READY=1 once uvicorn listens with the application
started, WATCHDOG=1 from the event loop, STOPPING=1 at shutdown (`Type=notify`,
`NotifyAccess=main`, `WatchdogSec=` in the unit `site-director unit --server` prints).

The protocol is one datagram on the unix socket named by NOTIFY_SOCKET (a leading `@` is the
abstract namespace), so no dependency is needed. `director/notify.py` holds the same few lines
for the director: the two packages never import each other (the director only reads
server/models.py). Without NOTIFY_SOCKET nothing is sent, so the server runs the same outside
systemd.

With `--workers N` the parent process (uvicorn's supervisor, the unit's main process) speaks:
READY=1 when every worker has started, WATCHDOG=1 while every worker answers its health
check; the workers themselves never see NOTIFY_SOCKET.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import logging
import os
import socket
import sys
import time
from collections.abc import Mapping, MutableMapping

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors.multiprocess import Multiprocess

log = logging.getLogger(__name__)

NOTIFY_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


class Notifier:
    """Sends to systemd when it asked for it (NOTIFY_SOCKET); a send that fails is logged once
    and never stops the service."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog_interval = _watchdog_interval(env)
        self._warned = False

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, *assignments: str) -> bool:
        if not self.address:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(self.address)
                sock.sendall("\n".join(assignments).encode())
        except OSError as exc:
            if not self._warned:
                log.warning("cannot notify systemd at %s: %s", self.address.lstrip("\0"), exc)
                self._warned = True
            return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        """A line for `systemctl status`."""
        return self.send(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def stopping(self) -> bool:
        return self.send("STOPPING=1")


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    """Seconds between two pings (half of WatchdogSec, as sd_watchdog_enabled advises), or None
    when systemd set no watchdog, or set it for another process (WATCHDOG_PID)."""
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = env.get("WATCHDOG_PID")
    if usec <= 0 or (pid and pid != str(os.getpid())):
        return None
    return usec / 2 / 1_000_000


def hide_from_children(environ: MutableMapping[str, str]) -> None:
    """Worker processes inherit the environment: only the main process notifies."""
    for name in NOTIFY_VARIABLES:
        environ.pop(name, None)


class NotifyingServer(uvicorn.Server):
    """uvicorn's server, telling systemd: ready once the application has started (migrations,
    key set) and the sockets listen; alive as long as its event loop runs."""

    def __init__(self, config: uvicorn.Config, notifier: Notifier) -> None:
        super().__init__(config)
        self.notifier = notifier
        self._pings: asyncio.Task[None] | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and not self.should_exit:
            self.notifier.ready("serving")
            if self.notifier.watchdog_interval is not None:
                self._pings = asyncio.create_task(self._ping(self.notifier.watchdog_interval))

    async def _ping(self, interval: float) -> None:
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.notifier.stopping()
        if self._pings is not None:
            self._pings.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pings
        await super().shutdown(sockets)


class NotifyingSupervisor(Multiprocess):
    """uvicorn's worker supervisor, telling systemd: ready when every worker has started,
    alive while every worker answers the supervisor's health check (uvicorn replaces one that
    does not)."""

    def __init__(
        self, config: uvicorn.Config, sockets: list[socket.socket], notifier: Notifier
    ) -> None:
        super().__init__(config, sockets)
        self.notifier = notifier

    def run(self) -> None:
        log.info("started parent process [%d]", os.getpid())
        self.init_processes()
        ready = False
        last_ping = 0.0
        tick = min(0.5, self.notifier.watchdog_interval or 0.5)
        while not self.should_exit.wait(tick):
            self.handle_signals()
            self.keep_subprocess_alive()
            if self.should_exit.is_set():
                break
            if not ready:
                ready = all(p.is_ready(timeout=1) for p in self.processes)
                if ready:
                    self.notifier.ready(f"serving with {len(self.processes)} workers")
            interval = self.notifier.watchdog_interval
            if ready and interval is not None and time.monotonic() - last_ping >= interval:
                self.notifier.watchdog()
                last_ping = time.monotonic()
        self.notifier.stopping()
        self.terminate_all()
        self.join_all()
        log.info("stopping parent process [%d]", os.getpid())


def serve(config: uvicorn.Config, notifier: Notifier) -> None:
    """What uvicorn.run does for one process or for workers (an import string then), with the
    notifications. Under a watchdog, SIGABRT (systemd's watchdog signal) prints every
    thread's stack first: the journal then shows where the server hung."""
    if notifier.watchdog_interval is not None:
        faulthandler.enable()
    if config.workers > 1:
        hide_from_children(os.environ)
        sock = config.bind_socket()
        NotifyingSupervisor(config, [sock], notifier).run()
        return
    config.load_app()
    server = NotifyingServer(config, notifier)
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    if not server.started:
        sys.exit(STARTUP_FAILURE)
