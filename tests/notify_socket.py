"""What systemd does for a Type=notify service, for the tests: bind a unix datagram socket (in
the abstract namespace, `@name`, as NOTIFY_SOCKET names it) and read what the service sends,
with the sender's pid (SO_PASSCRED), so a test can tell the main process from its children."""

from __future__ import annotations

import os
import socket
import struct
import time
import uuid
from dataclasses import dataclass, field


@dataclass
class Message:
    pid: int
    fields: dict[str, str]


@dataclass
class NotifySocket:
    name: str = field(default_factory=lambda: f"@site-director-test-{uuid.uuid4().hex}")
    received: list[Message] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind("\0" + self.name[1:])

    def environ(self, watchdog_usec: int | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SITE_DIRECTOR_")}
        env["NOTIFY_SOCKET"] = self.name
        if watchdog_usec is not None:
            env["WATCHDOG_USEC"] = str(watchdog_usec)
        return env

    def _receive(self, timeout: float) -> Message | None:
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
        except TimeoutError:
            return None
        pid = 0
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = struct.unpack("iII", payload[:12])[0]
        fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
        message = Message(pid, fields)
        self.received.append(message)
        return message

    def wait_for(self, name: str, value: str = "1", timeout: float = 60) -> Message | None:
        """The next message that sets `name` to `value`, within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            message = self._receive(left)
            if message is not None and message.fields.get(name) == value:
                return message
        return None

    def collect(self, seconds: float) -> list[Message]:
        """Everything that arrives within `seconds`."""
        got = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            message = self._receive(left)
            if message is not None:
                got.append(message)
        return got

    def close(self) -> None:
        self.sock.close()


def pings(messages: list[Message]) -> int:
    return sum(1 for m in messages if m.fields.get("WATCHDOG") == "1")
