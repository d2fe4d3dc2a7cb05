"""Oversized and malformed bodies against a real server process: clear 4xx, bounded memory.

The server runs as its own process (`site-director server`), so its resident memory can be
read from /proc before and after a burst of hostile requests; the raw-socket tests speak HTTP
by hand so that nothing on the client side trims, fixes or buffers what is sent.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path

import httpx
import pytest

from server.identity import ADMIN, TRUSTED_HOST, mint_user_token
from server.keys import KeyStore
from tests.conftest import TEST_VOS, free_port, wait_until

LIMIT = 16 * 1024 * 1024
MiB = 1024 * 1024


@dataclass
class ServerProcess:
    proc: subprocess.Popen[bytes]
    port: int
    url: str
    admin_token: str
    director_token: str

    def rss_kib(self) -> int:
        return _status_field(self.proc.pid, "VmRSS")

    def peak_kib(self) -> int:
        return _status_field(self.proc.pid, "VmHWM")


def _status_field(pid: int, name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{name} not in /proc/{pid}/status")


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/api/health", timeout=2).status_code == HTTPStatus.OK
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def server_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data_dir = tmp_path_factory.mktemp("bodies-server")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    vos = [arg for vo in TEST_VOS for arg in ("--vo", vo)]
    log = (data_dir / "server.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "site_director",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
            "--log-level",
            "warning",
            *vos,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert wait_until(lambda: proc.poll() is None and _healthy(url), timeout=60), (
            data_dir / "server.log"
        ).read_text()[-2000:]
        keys = KeyStore(data_dir / "jwks.json", url)
        admin = mint_user_token(keys, sub="admin", vo="lhcb", properties=[ADMIN], lifetime=3600)
        director = mint_user_token(
            keys, sub="director", vo="lhcb", properties=[TRUSTED_HOST], lifetime=3600
        )
        yield ServerProcess(proc, port, url, admin, director)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _raw(
    server: ServerProcess,
    head: str,
    chunks: Iterator[bytes] | list[bytes] = (),  # type: ignore[assignment]
) -> tuple[int, bytes]:
    """Send a request by hand; returns (status, body) of whatever the server answers, even if
    it answers (and closes) before the whole body was sent."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        sock.sendall(head.encode())
        try:
            for chunk in chunks:
                sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server refused early and closed: read its answer below
        received = b""
        try:
            while b"\r\n\r\n" not in received or not _complete(received):
                data = sock.recv(65536)
                if not data:
                    break
                received += data
        except ConnectionResetError:
            pass
    assert received, "the server closed the connection without an answer"
    status = int(received.split(b" ", 2)[1])
    return status, received.split(b"\r\n\r\n", 1)[1]


def _complete(received: bytes) -> bool:
    head, _, body = received.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


def _head(server: ServerProcess, path: str, extra: str) -> str:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
        f"Authorization: Bearer {server.admin_token}\r\n"
        f"Content-Type: application/json\r\n{extra}\r\n"
    )


# --- size limits ----------------------------------------------------------------------------


def test_anonymous_body_is_refused_before_it_is_parsed(server_process: ServerProcess) -> None:
    """First in this module, while the server's peak memory is still its baseline: 14 MiB of
    tiny JSON objects cost ~350 MB to parse; without a token they must cost nothing."""
    peak_before = server_process.peak_kib()
    body = b"[" + b"{}," * 5_000_000 + b"{}]"
    for path in ("/api/pilots/search", "/api/pilots/internal/message", "/api/nowhere"):
        r = httpx.post(
            f"{server_process.url}{path}",
            content=body,
            headers={"Content-Type": "application/json", "Authorization": "Bearer x.y.z"},
            timeout=60,
        )
        assert r.status_code == HTTPStatus.UNAUTHORIZED, (path, r.text[:200])
    grown = (server_process.peak_kib() - peak_before) / 1024
    print(f"\nserver peak memory grew by {grown:.0f} MiB for 3 anonymous 14 MiB bodies")
    assert grown < 50


def test_public_routes_take_small_bodies_only(server_process: ServerProcess) -> None:
    """The routes that need no token (exchange, refresh, revoke) have small bodies."""
    big = json.dumps({"pilot_stamp": "a", "pilot_secret": "b", "vo": "x" * (256 * 1024)})
    for path in ("/api/auth/secret-exchange", "/api/auth/pilot-token", "/api/auth/revoke"):
        r = httpx.post(
            f"{server_process.url}{path}",
            content=big,
            headers={"Content-Type": "application/json"},
            timeout=60,
        )
        assert r.status_code == HTTPStatus.REQUEST_ENTITY_TOO_LARGE, (path, r.text[:200])


def test_declared_oversized_body_is_413_before_it_is_sent(server_process: ServerProcess) -> None:
    head = _head(server_process, "/api/pilots/search", f"Content-Length: {LIMIT + 1}\r\n")
    status, body = _raw(server_process, head)
    assert status == HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    assert json.loads(body)["detail"]


def test_streamed_oversized_body_is_413(server_process: ServerProcess) -> None:
    """Chunked, no length announced: the server counts as it reads and stops at the limit."""

    def chunks() -> Iterator[bytes]:
        piece = b"[" + b"0," * (MiB // 2 - 1)
        for _ in range(LIMIT // len(piece) + 2):
            yield f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
        yield b"0\r\n\r\n"

    head = _head(server_process, "/api/pilots/search", "Transfer-Encoding: chunked\r\n")
    status, body = _raw(server_process, head, chunks())
    assert status == HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    assert json.loads(body)["detail"]


# --- malformed bodies -----------------------------------------------------------------------


def _deep(depth: int, open_: str, close: str) -> bytes:
    return (open_ * depth + close * depth).encode()


MALFORMED: dict[str, tuple[str, bytes, str]] = {
    # name: (path, body, content type)
    "deep-lists": ("/api/pilots/search", _deep(100_000, "[", "]"), "application/json"),
    "deep-objects": (
        "/api/pilots/search",
        ('{"a":' * 100_000 + "1" + "}" * 100_000).encode(),
        "application/json",
    ),
    "deep-inside-a-field": (
        "/api/pilots/search",
        b'{"search":' + _deep(100_000, "[", "]") + b"}",
        "application/json",
    ),
    "deep-metadata": (
        "/api/pilots/metadata",
        b'{"x":' + _deep(50_000, "[", "]") + b"}",
        "application/json",
    ),
    "invalid-utf8": (
        "/api/pilots/",
        b'{"pilot_stamp": "\xff\xfe\xfd", "vo": "lhcb"}',
        "application/json",
    ),
    "invalid-utf8-in-key": ("/api/pilots/search", b'{"\xc3\x28": 1}', "application/json"),
    "truncated": ("/api/pilots/", b'{"pilot_stamp": "ab', "application/json"),
    "truncated-after-key": ("/api/pilots/bulk", b'{"vo": "lhcb", "pilots": [', "application/json"),
    "trailing-garbage": ("/api/pilots/search", b'{"search": []} xyz', "application/json"),
    "not-json": ("/api/pilots/search", b"<xml/>", "application/json"),
    "empty-body-required": ("/api/pilots/bulk", b"", "application/json"),
    "nan-literal": ("/api/pilots/search", b'{"search": NaN}', "application/json"),
    "huge-number": (
        "/api/pilots/search",
        b'{"distinct": 1' + b"0" * 100_000 + b"}",
        "application/json",
    ),
    "text-plain": ("/api/pilots/search", b'{"search": []}', "text/plain"),
    "form-encoded": (
        "/api/pilots/",
        b"pilot_stamp=abc&vo=lhcb",
        "application/x-www-form-urlencoded",
    ),
    "multipart": (
        "/api/pilots/",
        b'--b\r\nContent-Disposition: form-data; name="pilot_stamp"\r\n\r\nabc\r\n--b--\r\n',
        "multipart/form-data; boundary=b",
    ),
    "xml": ("/api/pilots/", b"<pilot><pilot_stamp>abc</pilot_stamp></pilot>", "application/xml"),
    "huge-stamp": (
        "/api/pilots/",
        json.dumps({"pilot_stamp": "a" * MiB, "vo": "lhcb"}).encode(),
        "application/json",
    ),
    "huge-search-value": (
        "/api/pilots/search",
        json.dumps(
            {"search": [{"parameter": "GridSite", "operator": "eq", "value": "x" * (8 * MiB)}]}
        ).encode(),
        "application/json",
    ),
    "huge-key": (
        "/api/pilots/search",
        json.dumps({"k" * (4 * MiB): 1}).encode(),
        "application/json",
    ),
    "many-specs": (
        "/api/pilots/search",
        json.dumps(
            {"search": [{"parameter": "VO", "operator": "eq", "value": "lhcb"}] * 100_000}
        ).encode(),
        "application/json",
    ),
    "many-stamps": (
        "/api/pilots/bulk",
        json.dumps(
            {"vo": "lhcb", "pilots": [{"pilot_stamp": str(i)} for i in range(200_000)]}
        ).encode(),
        "application/json",
    ),
    "million-tiny-objects": (
        "/api/pilots/search",
        b"[" + b"{}," * 3_000_000 + b"{}]",
        "application/json",
    ),
    "huge-lease-queue-list": (
        "/api/director/leases",
        json.dumps({"holder": "h", "queues": ["q"] * 1_000_000, "ttl_seconds": 60}).encode(),
        "application/json",
    ),
}


def _post(server: ServerProcess, path: str, body: bytes, content_type: str) -> httpx.Response:
    return httpx.post(
        f"{server.url}{path}",
        content=body,
        headers={"Authorization": f"Bearer {server.admin_token}", "Content-Type": content_type},
        timeout=120,
    )


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_body_is_a_clear_4xx(server_process: ServerProcess, name: str) -> None:
    path, body, content_type = MALFORMED[name]
    assert len(body) <= LIMIT, "keep these under the size limit: they test parsing"
    r = _post(server_process, path, body, content_type)
    assert HTTPStatus.BAD_REQUEST <= r.status_code < HTTPStatus.INTERNAL_SERVER_ERROR, (
        name,
        r.status_code,
        r.text[:300],
    )
    detail = r.json()["detail"]
    assert detail
    assert len(r.content) < 64 * 1024, f"{name}: the error echoes the hostile input back"
    assert server_process.proc.poll() is None, "the server died"


def test_huge_log_lines_are_refused(server_process: ServerProcess) -> None:
    """The log endpoints have no max_length on `message`: the server's limits must hold."""
    with httpx.Client(base_url=server_process.url, timeout=60) as client:
        stamp = uuid.uuid4().hex
        r = client.post(
            "/api/pilots/bulk",
            json={"vo": "lhcb", "pilots": [{"pilot_stamp": stamp}], "mint_secrets": True},
            headers={"Authorization": f"Bearer {server_process.admin_token}"},
        )
        assert r.status_code == HTTPStatus.CREATED, r.text
        secret = r.json()["secrets"][0]["pilot_secret"]
        r = client.post(
            "/api/auth/secret-exchange", json={"pilot_stamp": stamp, "pilot_secret": secret}
        )
        if r.status_code == HTTPStatus.NOT_FOUND:
            pytest.skip("no secret exchange yet")
        assert r.status_code == HTTPStatus.OK, r.text
        pilot = {"Authorization": f"Bearer {r.json()['access_token']}"}
        line = {"timestamp": "2026-01-01T00:00:00Z", "severity": "INFO", "scope": "Pilot"}
        for lines in (
            [{**line, "message": "x" * (8 * MiB)}],
            [{**line, "message": "y"}] * 200_000,
        ):
            r = client.post("/api/pilots/internal/message", json={"lines": lines}, headers=pilot)
            assert HTTPStatus.BAD_REQUEST <= r.status_code < HTTPStatus.INTERNAL_SERVER_ERROR, (
                r.status_code,
                r.text[:300],
            )


# --- memory ---------------------------------------------------------------------------------


def test_memory_stays_bounded_after_a_burst(server_process: ServerProcess) -> None:
    """A burst of hostile bodies (every malformed one, several times, and oversized ones)
    leaves the server's resident memory within 100 MB of where it started."""
    warm = MALFORMED["deep-lists"]
    _post(server_process, *warm)  # first-use allocations (imports, caches) are not a leak
    _post(server_process, "/api/pilots/search", b"{}", "application/json")
    before = server_process.rss_kib()
    for _ in range(3):
        for path, body, content_type in MALFORMED.values():
            r = _post(server_process, path, body, content_type)
            assert r.status_code < HTTPStatus.INTERNAL_SERVER_ERROR
        head = _head(server_process, "/api/pilots/search", f"Content-Length: {LIMIT * 4}\r\n")
        assert _raw(server_process, head)[0] == HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    after = server_process.rss_kib()
    peak = server_process.peak_kib()
    print(
        f"\nserver RSS before={before / 1024:.0f} MiB after={after / 1024:.0f} MiB "
        f"peak={peak / 1024:.0f} MiB"
    )
    assert after - before < 100 * 1024, f"RSS grew by {(after - before) / 1024:.0f} MiB"
    assert _healthy(server_process.url)


def test_utf16_json_is_read_or_refused_cleanly(server_process: ServerProcess) -> None:
    """RFC 8259 wants UTF-8, but Python's JSON reader detects UTF-16/32: either is fine."""
    for encoding in ("utf-16", "utf-32", "utf-8-sig"):
        body = '{"search": []}'.encode(encoding)
        r = _post(server_process, "/api/pilots/search", body, "application/json")
        assert r.status_code < HTTPStatus.INTERNAL_SERVER_ERROR, (encoding, r.text[:200])
