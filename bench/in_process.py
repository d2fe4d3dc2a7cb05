"""The server's ASGI app driven in process, for profiles and CPU per request without a socket
(bench/request_path.py, bench/profile_bulk.py, bench/profile_logs.py).

This process is the server: the CPU time it spends per call (`time.process_time`) is the app's
own (middleware, routing, validation, logic, database driver, serialisation), without uvicorn's
HTTP parsing, the socket or a client library in the way.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import tempfile
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from server.app import create_app
from server.settings import ServerSettings


def sqlite_app(prefix: str) -> FastAPI:
    """The app on SQLite in a new temporary directory (its keys and database), VO lhcb; enter
    `app.router.lifespan_context(app)` before calling it."""
    data = Path(tempfile.mkdtemp(prefix=prefix))
    return create_app(
        ServerSettings(data_dir=data, vos=["lhcb"], maintenance=False, issuer="https://bench.test")
    )


class Driver:
    """Calls the app with one HTTP request per call, as uvicorn would, minus the socket."""

    def __init__(self, app: Any, token: str | None) -> None:
        self.app = app
        self.token = token

    async def call(self, method: str, path: str, query: bytes, body: bytes | None) -> int:
        return (await self.call_for_body(method, path, query, body))[0]

    async def call_for_body(
        self, method: str, path: str, query: bytes, body: bytes | None
    ) -> tuple[int, bytes]:
        headers = [(b"host", b"bench"), (b"content-type", b"application/json")]
        if self.token:
            headers.append((b"authorization", f"Bearer {self.token}".encode()))
        if body is not None:
            headers.append((b"content-length", str(len(body)).encode()))
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": query,
            "root_path": "",
            "headers": headers,
            "client": ("127.0.0.1", 5000),
            "server": ("127.0.0.1", 8000),
            "state": {},
        }
        sent = False
        status = 0
        answer: list[bytes] = []

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body or b"", "more_body": False}
            await asyncio.sleep(3600)
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                answer.append(message.get("body", b""))

        await self.app(scope, receive, send)
        return status, b"".join(answer)


def add_gc_option(parser: argparse.ArgumentParser) -> None:
    """`--gc on|freeze|off`, for `set_gc` after the warm-up."""
    parser.add_argument(
        "--gc",
        choices=("on", "freeze", "off"),
        default="on",
        help="the cyclic collector as is, with the start-up heap frozen, or off (to see its cost)",
    )


def set_gc(mode: str) -> None:
    """The cyclic collector as `--gc` asks: left on, the heap so far frozen, or disabled."""
    if mode == "freeze":
        gc.freeze()
    elif mode == "off":
        gc.disable()
