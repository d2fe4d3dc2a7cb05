"""systemd's notify protocol for the director: READY=1 once its configuration, token and
first contact with the server are good, WATCHDOG=1 while its cycles make progress, STOPPING=1 at
shutdown (`Type=notify`, `NotifyAccess=main`, `WatchdogSec=` in the unit `site-director unit`
prints). The pings are the daemon's business (director/daemon.py), which sends them only while
no cycle has outlasted the timeouts that bound it: a hung cycle, or a blocked event loop, stops
them and systemd restarts the service.

The protocol is one datagram on the unix socket named by NOTIFY_SOCKET (a leading `@` is the
abstract namespace), so no dependency is needed. `server/notify.py` holds the same few lines
for the server: the two packages never import each other (the director only reads
server/models.py). Without NOTIFY_SOCKET nothing is sent.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


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
