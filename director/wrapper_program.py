"""Site Director pilot wrapper: secret exchange, log shipping, pilot files, the pilot run.

This module is the Python program of the pilot wrapper. It runs on worker nodes, under any
python3 >= 3.6 with the standard library only: no third-party import, no syntax or library call
newer than 3.6 (tests/director/test_wrapper_program.py parses it with the 3.6 grammar and runs
`vermin -t=3.6-` on it), type hints as plain 3.6 annotations (no `from __future__ import
annotations`: builtin generics such as `list[str]` are spelled with `typing`).

`director/wrapper.py` reads this file once per process and the template
(`templates/pilot-wrapper.sh.j2`) embeds it in every wrapper, in a quoted here-document handed
to python3 on stdin, followed by the per-pilot lines:

    CONFIG = json.loads(r'...')        # the queue's settings, built by director/wrapper.py
    PILOT_STAMP = '...'
    PILOT_SECRET = '...'
    sys.exit(main(CONFIG, PILOT_STAMP, PILOT_SECRET))

So the secret is never on a command line nor in the environment (unless `secret_option` hands
it to the stock DIRAC pilot, see docs/wrapper.md), and this module has no `__main__` block of
its own. Importing it has no side effect, so the tests import its parts directly.
"""

import base64
import collections
import contextlib
import datetime
import hashlib
import http.client
import json
import os
import platform
import random
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple

if TYPE_CHECKING:  # typing.Deque is 3.6.1+; only the type checker needs it
    from typing import Deque

WRAPPER_VERSION = "1"
EXIT_CONFIG = 100
EXIT_REFUSED = 101
EXIT_UNREACHABLE = 102
EXIT_FILES = 103
EXIT_START = 104
EXIT_INTERNAL = 105
SCOPE = "Wrapper"
PILOT_SCOPE = "Pilot"
REASON_MAX = 255

Line = Dict[str, str]


class WrapperError(Exception):
    """A failure with the exit code and the reason reported as StatusReason."""

    def __init__(self, code: int, reason: str) -> None:
        Exception.__init__(self, reason)
        self.code = code
        self.reason = reason


class Interrupted(Exception):
    def __init__(self, signum: int) -> None:
        Exception.__init__(self, "received signal %d" % signum)
        self.signum = signum


class Unreachable(Exception):
    """No HTTP answer: connection, TLS or timeout error."""


class Settings(object):
    """The queue's settings (the `config` dict of director/wrapper.py) and the pilot's stamp
    and secret, read once with their types. Keys are those of `wrapper_config()`."""

    def __init__(self, config: Dict[str, Any], stamp: str, secret: str) -> None:
        self.stamp = stamp
        self.secret = secret
        self.server_url = str(config["server_url"])
        self.vo = str(config["vo"])
        self.site = str(config["site"])
        self.ce = str(config["ce"])
        self.queue = str(config["queue"])
        self.ca_pem = str(config.get("ca_pem") or "")
        self.ca_path = str(config.get("ca_path") or "")
        self.pilot_script = str(config["pilot_script"])
        self.pilot_arguments = [str(a) for a in config["pilot_arguments"]]
        self.stamp_option = str(config.get("stamp_option") or "")
        self.token_file_option = str(config.get("token_file_option") or "")
        self.secret_option = str(config.get("secret_option") or "")
        self.extra_options = [str(a) for a in config["extra_options"]]
        self.pilot_files = [
            {"name": str(f["name"]), "sha512": str(f["sha512"]), "data": str(f.get("data") or "")}
            for f in config["pilot_files"]
        ]
        self.pilot_locations = [str(loc) for loc in config["pilot_locations"]]
        environment = config.get("environment") or {}
        self.environment = {str(k): str(v) for k, v in environment.items()}
        self.work_dir_base = str(config.get("work_dir_base") or "")
        self.exchange_attempts = max(1, int(config["exchange_attempts"]))
        self.backoff_initial_s = float(config["backoff_initial_s"])
        self.backoff_max_s = float(config["backoff_max_s"])
        self.http_timeout_s = float(config["http_timeout_s"])
        self.download_max_bytes = int(config["download_max_bytes"])
        self.log_batch_lines = int(config["log_batch_lines"])
        self.log_flush_interval_s = float(config["log_flush_interval_s"])
        self.log_buffer_lines = int(config["log_buffer_lines"])
        self.log_max_line_bytes = int(config["log_max_line_bytes"])
        self.refresh_margin_s = float(config["refresh_margin_s"])
        self.final_flush_timeout_s = float(config["final_flush_timeout_s"])
        self.status_attempts = max(1, int(config["status_attempts"]))

    def backoff(self) -> "Backoff":
        return Backoff(self.backoff_initial_s, self.backoff_max_s)


def utc_timestamp() -> str:
    now = datetime.datetime.now(datetime.timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Redactor(object):
    """Replaces the secret and every token we hold by a placeholder, in every line we emit."""

    def __init__(self) -> None:
        self._values = ()  # type: Tuple[str, ...]

    def add(self, value: Optional[str]) -> None:
        if value and len(value) >= 8 and value not in self._values:
            self._values = (*self._values, value)

    def __call__(self, text: str) -> str:
        for value in self._values:
            if value in text:
                text = text.replace(value, "<redacted>")
        return text


class LogBuffer(object):
    """Lines waiting to be shipped: bounded; the oldest are dropped (and counted) when full."""

    def __init__(self, redact: Redactor, max_lines: int, max_bytes: int) -> None:
        self.cond = threading.Condition()
        self._lines: Deque[Tuple[int, Line]] = collections.deque()
        self._redact = redact
        self._max_lines = max(1, int(max_lines))
        self._max_bytes = max(16, int(max_bytes))
        self.dropped = 0
        self._seq = 0
        self._echo_lock = threading.Lock()

    def emit(
        self,
        severity: str,
        message: str,
        scope: str = SCOPE,
        stream: Any = None,
        local: bool = False,
    ) -> None:
        """Echo the line on our output (the CE's copy) and, unless local, queue it to ship."""
        message = self._redact(message)
        encoded = message.encode("utf-8", "replace")
        if len(encoded) > self._max_bytes:  # the server refuses longer lines (by UTF-8 bytes)
            message = encoded[: self._max_bytes - 3].decode("utf-8", "ignore") + "..."
        line = {
            "timestamp": utc_timestamp(),
            "severity": severity,
            "message": message,
            "scope": scope,
        }
        self._echo(line, stream)
        if local:
            return
        with self.cond:
            if len(self._lines) >= self._max_lines:
                self._lines.popleft()
                self.dropped += 1
            self._seq += 1
            self._lines.append((self._seq, line))
            self.cond.notify_all()

    def _echo(self, line: Line, stream: Any) -> None:
        out = stream if stream is not None else sys.stdout
        text = "%s %s [%s] %s\n" % (
            line["timestamp"],
            line["severity"],
            line["scope"],
            line["message"],
        )
        with self._echo_lock:
            try:
                out.write(text)
                out.flush()
            except (OSError, ValueError):
                pass

    def info(self, message: str) -> None:
        self.emit("INFO", message)

    def warning(self, message: str) -> None:
        self.emit("WARNING", message)

    def error(self, message: str) -> None:
        self.emit("ERROR", message)

    def pending(self) -> int:
        with self.cond:
            return len(self._lines)

    def peek(self, n: int) -> Tuple[int, List[Line]]:
        """(sequence number of the last line, the first n lines); the lines stay queued."""
        with self.cond:
            entries = [self._lines[i] for i in range(min(n, len(self._lines)))]
        return (entries[-1][0] if entries else 0), [line for _, line in entries]

    def consume(self, upto: int) -> None:
        """Forget the lines up to this sequence number, once the server has them. Lines
        dropped meanwhile (buffer full) are already gone; newer ones stay."""
        with self.cond:
            while self._lines and self._lines[0][0] <= upto:
                self._lines.popleft()


class Api(object):
    """The server over HTTPS: one connection per request, JSON in and out."""

    def __init__(self, base_url: str, context: ssl.SSLContext, timeout: float) -> None:
        self.base_url = base_url.rstrip("/")
        self.context = context
        self.timeout = timeout

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        form: Optional[Dict[str, str]] = None,
        token: Optional[str] = None,
    ) -> Tuple[int, Any]:
        """(status, decoded body or None); raises Unreachable when no HTTP answer came."""
        headers = {
            "Accept": "application/json",
            "User-Agent": "site-director-pilot-wrapper/" + WRAPPER_VERSION,
        }
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        elif form is not None:
            data = urllib.parse.urlencode(form).encode("ascii")
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        if token:
            headers["Authorization"] = "Bearer " + token
        # an https:// URL: the director refuses any other server_url
        req = urllib.request.Request(  # noqa: S310
            self.base_url + path, data=data, headers=headers, method=method
        )
        try:
            with urllib.request.urlopen(  # noqa: S310
                req, timeout=self.timeout, context=self.context
            ) as resp:
                return resp.status, _decode(resp.read())
        except urllib.error.HTTPError as exc:
            try:
                payload = _decode(exc.read())
            except (OSError, ValueError):
                payload = None
            return exc.code, payload
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
            raise Unreachable(_describe(exc)) from None


def _decode(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw.decode("utf-8"))
    except ValueError:
        return None


def _describe(exc: BaseException) -> str:
    """The error's class and text; a URLError is described by its reason."""
    what = exc  # type: object
    if isinstance(exc, urllib.error.URLError) and exc.reason is not None:
        what = exc.reason
    text = str(what) or what.__class__.__name__
    return "%s: %s" % (what.__class__.__name__, text)


def _detail(payload: Any) -> str:
    if isinstance(payload, dict) and "detail" in payload:
        detail = payload["detail"]
        return detail if isinstance(detail, str) else json.dumps(detail)[:200]
    return ""


class Backoff(object):
    """Exponential back-off with jitter, capped."""

    def __init__(self, initial: float, maximum: float) -> None:
        self.initial = max(0.01, float(initial))
        self.maximum = max(self.initial, float(maximum))
        self.current = self.initial

    def next(self) -> float:
        delay = self.current * random.uniform(0.5, 1.0)
        self.current = min(self.current * 2, self.maximum)
        return delay

    def reset(self) -> None:
        self.current = self.initial


class Tokens(object):
    """The pilot's token pair, shared with the pilot through the DiracX credentials file.

    The wrapper refreshes before expiry (and after a 401). Refresh tokens rotate: if the pilot
    refreshed through the file, the wrapper adopts the newer pair instead of reusing its old
    refresh token (a reuse would revoke the whole family).
    """

    def __init__(
        self,
        api: Api,
        path: str,
        redact: Redactor,
        log: LogBuffer,
        margin: float,
        backoff: Backoff,
        stamp: str,
    ) -> None:
        self.api = api
        self.backoff = backoff
        self.stamp = stamp
        self.not_before = 0.0  # after a failed refresh, the next try waits for the back-off
        self.path = path
        self.redact = redact
        self.log = log
        self.margin = float(margin)
        self.lock = threading.RLock()
        self.access = None  # type: Optional[str]
        self.refresh = None  # type: Optional[str]
        self.expires_at = 0.0
        self.lifetime = 0.0
        self.dead = False
        self.refreshes = 0

    def set(self, payload: Any) -> None:
        access = payload.get("access_token") if isinstance(payload, dict) else None
        if not isinstance(access, str) or not access:
            raise WrapperError(EXIT_INTERNAL, "token response without an access token")
        refresh = payload.get("refresh_token")
        lifetime = float(payload.get("expires_in") or 0)
        with self.lock:
            self.redact.add(access)
            self.redact.add(refresh)
            self.access = access
            self.refresh = refresh if isinstance(refresh, str) and refresh else None
            self.lifetime = max(lifetime, 1.0)
            self.expires_at = time.time() + self.lifetime
            self._write()

    def _write(self) -> None:
        data = json.dumps(
            {
                "access_token": self.access,
                "refresh_token": self.refresh,
                "expires_on": int(self.expires_at),
            }
        )
        tmp = self.path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, stat.S_IRUSR | stat.S_IWUSR)
        with os.fdopen(fd, "w") as handle:
            handle.write(data)
        os.replace(tmp, self.path)

    def _adopt_file(self) -> None:
        try:
            with open(self.path) as handle:
                data = json.load(handle)
        except (OSError, ValueError):
            return
        refresh = data.get("refresh_token") if isinstance(data, dict) else None
        if refresh and refresh != self.refresh and isinstance(data.get("access_token"), str):
            self.redact.add(data["access_token"])
            self.redact.add(refresh)
            self.access = data["access_token"]
            self.refresh = refresh
            self.expires_at = float(data.get("expires_on") or 0)
            self.log.info("adopted the token pair the pilot refreshed")

    def due_in(self) -> float:
        """Seconds until the proactive refresh is due (lock-free: the shipper asks while
        holding the log buffer's lock, and the token lock is taken before that one)."""
        margin = min(self.margin, self.lifetime / 4.0)
        return max(self.expires_at - margin, self.not_before) - time.time()

    def bearer(self) -> Optional[str]:
        with self.lock:
            return self.access

    def ensure_fresh(self, force: bool = False) -> bool:
        """Refresh when due (or forced); False if there is no usable token now."""
        with self.lock:
            if self.dead:
                return False
            self._adopt_file()
            if not force and self.due_in() > 0:
                return True
            if not self.refresh:
                return time.time() < self.expires_at
            body = {"refresh_token": self.refresh, "pilot_stamp": self.stamp}
            try:
                status, payload = self.api.request("POST", "/api/auth/pilot-token", body=body)
            except Unreachable as exc:
                self.not_before = time.time() + self.backoff.next()
                self.log.warning("token refresh failed, server unreachable (%s)" % exc)
                return time.time() < self.expires_at
            if status == 200:
                self.set(payload)
                self.not_before = 0.0
                self.backoff.reset()
                self.refreshes += 1
                self.log.info(
                    "token refreshed (%d%s); valid for %d s"
                    % (self.refreshes, ", after a 401" if force else "", int(self.lifetime))
                )
                return True
            if status in (400, 401, 403):
                self.dead = True
                self.log.error(
                    "token refresh refused (HTTP %d %s); logs stay local"
                    % (status, _detail(payload))
                )
                return False
            self.not_before = time.time() + self.backoff.next()
            self.log.warning("token refresh failed (HTTP %d)" % status)
            return time.time() < self.expires_at

    def call(self, method: str, path: str, body: Any) -> Tuple[int, Any]:
        """An authenticated request; a 401 triggers one refresh and one retry."""
        if not self.ensure_fresh():
            raise Unreachable("no valid token")
        status, payload = self.api.request(method, path, body=body, token=self.bearer())
        if status == 401 and self.ensure_fresh(force=True):
            status, payload = self.api.request(method, path, body=body, token=self.bearer())
        return status, payload

    def revoke(self) -> None:
        with self.lock:
            self._adopt_file()
            token = self.refresh
        if not token:
            return
        form = {"token": token, "token_type_hint": "refresh_token"}
        try:
            status, _ = self.api.request("POST", "/api/auth/revoke", form=form)
        except Unreachable as exc:
            self.log.warning("token revocation failed: %s" % exc)
            return
        if status == 200:
            self.log.info("token revoked")
        else:
            self.log.warning("token revocation answered HTTP %d" % status)


class Shipper(threading.Thread):
    """Sends the buffered lines in batches, in the background; refreshes the token when due."""

    def __init__(
        self,
        log: LogBuffer,
        tokens: Tokens,
        batch_lines: int,
        interval: float,
        backoff: Backoff,
    ) -> None:
        threading.Thread.__init__(self, name="log-shipper")
        self.daemon = True
        self.log = log
        self.tokens = tokens
        self.batch_lines = max(1, int(batch_lines))
        self.interval = max(0.05, float(interval))
        self.backoff = backoff
        self.stopping = False
        self.deadline = 0.0
        self.retry_at = 0.0
        self.last = time.time()
        self.sent = 0
        self.failures = 0

    def stop(self, timeout: float) -> None:
        with self.log.cond:
            self.stopping = True
            self.deadline = time.time() + max(0.0, float(timeout))
            self.retry_at = 0.0
            self.log.cond.notify_all()
        self.join(max(0.0, float(timeout)) + 1.0)

    def _wait(self) -> bool:
        with self.log.cond:
            while True:
                now = time.time()
                if self.stopping:
                    if now >= self.deadline or not self.log.pending():
                        return False
                    if now >= self.retry_at:
                        return True
                    self.log.cond.wait(min(self.retry_at, self.deadline) - now)
                    continue
                if now >= self.retry_at and self.log.pending() >= self.batch_lines:
                    return True
                wake = max(self.retry_at, self.last + self.interval)
                wake = min(wake, now + max(0.05, self.tokens.due_in()))
                if now >= wake:
                    return True
                self.log.cond.wait(wake - now)

    def run(self) -> None:
        self.last = time.time()
        while self._wait():
            self.last = time.time()
            try:
                self._ship()
            except Exception as exc:  # the shipper must outlive any surprise
                self._failed()
                self.log.emit("ERROR", "log shipping error: %s" % _describe(exc), local=True)

    def _ship(self) -> None:
        """One batch: sent and forgotten, or kept for the next try after the back-off."""
        if not self.tokens.ensure_fresh():
            self._failed()
            return
        upto, batch = self.log.peek(self.batch_lines)
        if not batch:
            return
        try:
            status, payload = self.tokens.call(
                "POST",
                "/api/pilots/internal/message",
                {"lines": batch, "pilot_stamp": self.tokens.stamp},
            )
        except Unreachable:
            self._failed()
            return
        if 200 <= status < 300:
            self.log.consume(upto)
            self.sent += len(batch)
            self.backoff.reset()
            self.retry_at = 0.0
            if self.failures:
                self.log.info("log server reachable again after %d failed attempts" % self.failures)
                self.failures = 0
            if self.log.dropped:
                dropped, self.log.dropped = self.log.dropped, 0
                self.log.warning(
                    "%d log lines were dropped while the server was "
                    "unreachable (buffer full)" % dropped
                )
        elif status in (400, 413, 422):
            # The server will never take these lines: skip them and say so here only
            # (a shipped warning could be refused in turn, for ever).
            self.log.consume(upto)
            self.log.emit(
                "WARNING",
                "the server refused %d log lines (HTTP %d %s)"
                % (len(batch), status, _detail(payload)),
                local=True,
            )
        else:
            self._failed()

    def _failed(self) -> None:
        self.failures += 1
        self.retry_at = time.time() + self.backoff.next()


def ssl_context(settings: Settings) -> ssl.SSLContext:
    cafile = capath = None
    ca_path = os.path.expandvars(settings.ca_path)
    if ca_path:
        if os.path.isdir(ca_path):
            capath = ca_path
        else:
            cafile = ca_path
    cadata = settings.ca_pem or None
    return ssl.create_default_context(cafile=cafile, capath=capath, cadata=cadata)


def exchange_secret(settings: Settings, api: Api, log: LogBuffer) -> Any:
    """The secret for a token pair, with bounded retries on unreachability and 5xx."""
    attempts = settings.exchange_attempts
    backoff = settings.backoff()
    body = {"pilot_stamp": settings.stamp, "pilot_secret": settings.secret}
    reason = ""
    for attempt in range(1, attempts + 1):
        try:
            status, payload = api.request("POST", "/api/auth/secret-exchange", body=body)
        except Unreachable as exc:
            reason = "server unreachable (%s)" % exc
        else:
            if status == 200:
                return payload
            if status == 429 or status >= 500:
                reason = "HTTP %d" % status
            else:
                raise WrapperError(
                    EXIT_REFUSED,
                    "secret exchange refused (HTTP %d %s)" % (status, _detail(payload)),
                )
        if attempt < attempts:
            delay = backoff.next()
            log.warning(
                "secret exchange attempt %d/%d failed: %s; retrying in %.1f s"
                % (attempt, attempts, reason, delay)
            )
            time.sleep(delay)
    raise WrapperError(
        EXIT_UNREACHABLE, "secret exchange failed after %d attempts: %s" % (attempts, reason)
    )


def set_status(
    settings: Settings,
    tokens: Tokens,
    log: LogBuffer,
    status: str,
    reason: Optional[str] = None,
) -> bool:
    fields = {"Status": status}
    if reason:
        fields["StatusReason"] = reason[:REASON_MAX]
    backoff = settings.backoff()
    attempts = settings.status_attempts
    problem = ""
    for attempt in range(1, attempts + 1):
        try:
            code, payload = tokens.call("PATCH", "/api/pilots/metadata", {settings.stamp: fields})
        except Unreachable as exc:
            problem = str(exc)
        else:
            if 200 <= code < 300:
                log.info("status set to %s" % status + (" (%s)" % reason if reason else ""))
                return True
            problem = "HTTP %d %s" % (code, _detail(payload))
            if code < 500 and code != 429:
                break
        if attempt < attempts:
            time.sleep(min(backoff.next(), 5.0))
    log.error("could not set status %s: %s" % (status, problem))
    return False


def _safe_name(name: str) -> str:
    if not name or "/" in name or "\\" in name or name in (".", "..") or "\0" in name:
        raise WrapperError(EXIT_CONFIG, "bad pilot file name %r" % name)
    return name


def read_location(settings: Settings, location: str, name: str, context: ssl.SSLContext) -> bytes:
    """The bytes of one pilot file from one location; OSError with the reason otherwise."""
    limit = settings.download_max_bytes
    if location.startswith("https://"):
        url = location.rstrip("/") + "/" + urllib.parse.quote(name)
        req = urllib.request.Request(  # noqa: S310 - https only, checked above
            url, headers={"User-Agent": "site-director-pilot-wrapper/" + WRAPPER_VERSION}
        )
        try:
            with urllib.request.urlopen(  # noqa: S310
                req, timeout=settings.http_timeout_s, context=context
            ) as resp:
                data = resp.read(limit + 1)  # type: bytes
        except urllib.error.HTTPError as exc:
            raise OSError("HTTP %d" % exc.code) from None
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
            raise OSError("unreachable (%s)" % _describe(exc)) from None
    elif location.startswith("file:") or location.startswith("/"):
        folder = location
        if location.startswith("file:"):
            folder = urllib.request.url2pathname(urllib.parse.urlparse(location).path)
        with open(os.path.join(folder, name), "rb") as handle:
            data = handle.read(limit + 1)
    else:
        raise OSError("unsupported location (https://, file: or an absolute path)")
    if len(data) > limit:
        raise OSError("larger than %d bytes" % limit)
    return data


def get_pilot_files(
    settings: Settings, work_dir: str, context: ssl.SSLContext, log: LogBuffer
) -> None:
    """Every pilot file, embedded or from the first location that serves the right bytes."""
    locations = list(settings.pilot_locations)
    for entry in settings.pilot_files:
        name = _safe_name(entry["name"])
        expected = entry["sha512"].lower()
        data = None  # type: Optional[bytes]
        if entry.get("data"):
            data = zlib.decompress(base64.b64decode(entry["data"]))
            if hashlib.sha512(data).hexdigest() != expected:
                raise WrapperError(EXIT_FILES, "embedded pilot file %s: SHA-512 mismatch" % name)
            source = "embedded"
        else:
            problems = []  # type: List[str]
            for location in locations:
                try:
                    candidate = read_location(settings, location, name, context)
                except OSError as exc:
                    problem = exc.strerror or str(exc)
                    problems.append("%s: %s" % (location, problem))
                    log.warning(
                        "pilot file %s not available from %s: %s" % (name, location, problem)
                    )
                    continue
                digest = hashlib.sha512(candidate).hexdigest()
                if digest != expected:
                    problems.append("%s: SHA-512 mismatch" % location)
                    log.error(
                        "pilot file %s from %s: SHA-512 mismatch (got %s..., expected %s...)"
                        % (name, location, digest[:16], expected[:16])
                    )
                    continue
                data, source = candidate, location
                break
            if data is None:
                if not locations:
                    problems.append("no location configured")
                raise WrapperError(
                    EXIT_FILES, "pilot file %s unavailable: %s" % (name, "; ".join(problems))
                )
        path = os.path.join(work_dir, name)
        with open(path, "wb") as handle:
            handle.write(data)
        os.chmod(path, 0o700 if name.endswith((".py", ".sh")) else 0o600)
        log.info("pilot file %s (%d bytes) from %s, SHA-512 verified" % (name, len(data), source))


class SignalState(object):
    """Signals from the batch system: forwarded to the pilot, or abort the set-up."""

    NAMES = ("SIGTERM", "SIGINT", "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGXCPU")

    def __init__(self) -> None:
        self.received = None  # type: Optional[int]
        self.pilot = None  # type: Optional[subprocess.Popen[bytes]]

    def handle(self, signum: int, frame: Any) -> None:
        self.received = signum
        if self.pilot is not None:
            with contextlib.suppress(OSError):
                os.killpg(self.pilot.pid, signum)
            return
        raise Interrupted(signum)

    def install(self, handler: Any = None) -> None:
        for name in self.NAMES:
            signum = getattr(signal, name, None)
            if signum is not None:
                signal.signal(signum, handler or self.handle)


def _pump(stream: Any, log: LogBuffer, severity: str, echo: Any, max_line_bytes: int) -> None:
    # A longer line comes out in pieces that each fit in one log line: nothing is lost.
    limit = max(64, int(max_line_bytes) - 16)
    while True:
        raw = stream.readline(limit)
        if not raw:
            break
        text = raw.decode("utf-8", "replace").rstrip("\r\n")
        log.emit(severity, text, scope=PILOT_SCOPE, stream=echo)
    stream.close()


def _kill_group(pid: int) -> None:
    for signum in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, signum)
        except OSError:
            return
        time.sleep(0.5)


def pilot_command(settings: Settings, script: str, credentials: str) -> List[str]:
    """The pilot's command line: python, the script, the DIRAC options, the per-pilot ones."""
    argv = [sys.executable, script, *settings.pilot_arguments]
    if settings.stamp_option:
        argv.append("%s=%s" % (settings.stamp_option, settings.stamp))
    if settings.secret_option:  # the stock DIRAC pilot exchanges it itself (docs/wrapper.md)
        argv.append("%s=%s" % (settings.secret_option, settings.secret))
    if settings.token_file_option:
        argv.append("%s=%s" % (settings.token_file_option, credentials))
    return argv + list(settings.extra_options)


def pilot_environment(
    settings: Settings, work_dir: str, credentials: str, ca_file: Optional[str]
) -> Dict[str, str]:
    """Ours, the queue's `environment`, then the DiracX and site-director variables."""
    env = dict(os.environ)
    env.update(settings.environment)
    env["DIRACX_URL"] = settings.server_url
    env["DIRACX_CREDENTIALS_PATH"] = credentials
    if ca_file:
        env["DIRACX_CA_PATH"] = ca_file
    env["SITE_DIRECTOR_PILOT_STAMP"] = settings.stamp
    env["SITE_DIRECTOR_WORK_DIR"] = work_dir
    return env


def run_pilot(
    settings: Settings,
    work_dir: str,
    credentials: str,
    ca_file: Optional[str],
    signals: SignalState,
    log: LogBuffer,
) -> int:
    """Runs the pilot with its output going to the log stream; returns its exit code."""
    script = os.path.join(work_dir, _safe_name(settings.pilot_script))
    if not os.path.isfile(script):
        raise WrapperError(
            EXIT_FILES, "pilot script %s is not among the pilot files" % settings.pilot_script
        )
    argv = pilot_command(settings, script, credentials)
    env = pilot_environment(settings, work_dir, credentials, ca_file)
    log.info("starting the pilot: %s" % " ".join(argv[1:]))
    try:
        proc = subprocess.Popen(
            argv,
            cwd=work_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            close_fds=True,
        )
    except OSError as exc:
        raise WrapperError(EXIT_START, "the pilot could not be started: %s" % exc) from None
    signals.pilot = proc
    readers = [
        threading.Thread(
            target=_pump,
            args=(proc.stdout, log, "INFO", sys.stdout, settings.log_max_line_bytes),
        ),
        threading.Thread(
            target=_pump,
            args=(proc.stderr, log, "WARNING", sys.stderr, settings.log_max_line_bytes),
        ),
    ]
    for reader in readers:
        reader.daemon = True
        reader.start()
    code = proc.wait()
    signals.pilot = None
    _kill_group(proc.pid)  # whatever the pilot left running in its session
    for reader in readers:
        reader.join(10)
    return code


def remove_tree(path: str) -> None:
    """Removes the work directory, making read-only parts (DIRAC installs some) writable."""

    def retry(func: Callable[[str], Any], target: str, _info: Any) -> None:
        try:
            os.chmod(os.path.dirname(target), 0o700)
            os.chmod(target, 0o700)
            func(target)
        except OSError:
            pass

    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=retry)  # novm (3.12+ only, by the test above)
    else:
        shutil.rmtree(path, onerror=retry)


def make_work_dir(settings: Settings) -> str:
    """Under work_dir_base, else the job's directory, else (not writable) TMPDIR."""
    base = os.path.expandvars(settings.work_dir_base)
    if base:
        return tempfile.mkdtemp(prefix="sd-pilot-", dir=base)
    try:
        return tempfile.mkdtemp(prefix="sd-pilot-", dir=os.getcwd())
    except OSError:
        return tempfile.mkdtemp(prefix="sd-pilot-")


def final_status(pilot_code: int, received: Optional[int]) -> Tuple[int, str, Optional[str]]:
    """(wrapper exit code, pilot status, StatusReason) from the pilot's exit code and the
    signal the wrapper received meanwhile, if any."""
    if received is not None:
        return (
            128 + received,
            "Failed",
            "stopped by signal %d (forwarded to the pilot)" % received,
        )
    if pilot_code == 0:
        return 0, "Done", None
    if pilot_code < 0:
        return 128 - pilot_code, "Failed", "pilot killed by signal %d" % -pilot_code
    return pilot_code, "Failed", "pilot exited with code %d" % pilot_code


def main(config: Dict[str, Any], stamp: str, secret: str) -> int:
    """The whole run; returns the wrapper's exit code (see docs/wrapper.md, "Exit codes")."""
    try:
        settings = Settings(config, stamp, secret)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        sys.stderr.write("site-director wrapper: bad configuration: %s\n" % _describe(exc))
        return EXIT_CONFIG
    redact = Redactor()
    redact.add(secret)
    log = LogBuffer(redact, settings.log_buffer_lines, settings.log_max_line_bytes)
    signals = SignalState()
    signals.install()
    code = EXIT_INTERNAL
    status = "Failed"
    reason = "wrapper internal error"  # type: Optional[str]
    tokens = None  # type: Optional[Tokens]
    shipper = None  # type: Optional[Shipper]
    work_dir = None  # type: Optional[str]
    try:
        work_dir = make_work_dir(settings)
        log.info(
            "site-director wrapper %s: pilot %s, VO %s, site %s, CE %s, queue %s, host %s, "
            "python %s"
            % (
                WRAPPER_VERSION,
                stamp,
                settings.vo,
                settings.site,
                settings.ce,
                settings.queue,
                socket.getfqdn(),
                platform.python_version(),
            )
        )
        context = ssl_context(settings)
        ca_file = None
        if settings.ca_pem:
            ca_file = os.path.join(work_dir, "ca-bundle.pem")
            with open(ca_file, "w") as handle:
                handle.write(settings.ca_pem)
        elif settings.ca_path:
            ca_file = os.path.expandvars(settings.ca_path)
        api = Api(settings.server_url, context, settings.http_timeout_s)
        credentials = os.path.join(work_dir, "diracx-credentials.json")
        tokens = Tokens(
            api,
            credentials,
            redact,
            log,
            settings.refresh_margin_s,
            settings.backoff(),
            stamp,
        )
        tokens.set(exchange_secret(settings, api, log))
        log.info("secret exchanged for a pilot token (valid for %d s)" % int(tokens.lifetime))
        shipper = Shipper(
            log,
            tokens,
            settings.log_batch_lines,
            settings.log_flush_interval_s,
            settings.backoff(),
        )
        shipper.start()
        set_status(settings, tokens, log, "Running")
        get_pilot_files(settings, work_dir, context, log)
        pilot_code = run_pilot(settings, work_dir, credentials, ca_file, signals, log)
        code, status, reason = final_status(pilot_code, signals.received)
        log.info("the pilot ended with exit code %d" % pilot_code)
    except WrapperError as exc:
        code, status, reason = exc.code, "Failed", exc.reason
        log.error(exc.reason)
    except Interrupted as exc:
        code, status, reason = 128 + exc.signum, "Failed", "stopped by signal %d" % exc.signum
        log.error(reason)
    except Exception as exc:  # the record must still end Failed, with a reason
        code, status = EXIT_INTERNAL, "Failed"
        reason = "wrapper internal error: %s" % _describe(exc)
        log.error(reason)
    finally:
        signals.install(signal.SIG_IGN)  # the final report and clean-up are short: finish them
    if tokens is not None and tokens.access is not None:
        set_status(settings, tokens, log, status, reason)
        log.info("wrapper exit code %d" % code)
        if shipper is None:
            shipper = Shipper(
                log,
                tokens,
                settings.log_batch_lines,
                settings.log_flush_interval_s,
                settings.backoff(),
            )
            shipper.start()
        shipper.stop(settings.final_flush_timeout_s)
        if log.pending():
            log.warning("%d log lines could not be shipped" % log.pending())
        tokens.revoke()
    else:
        log.info("wrapper exit code %d" % code)
    if work_dir is not None:
        with contextlib.suppress(OSError):
            os.chdir(os.path.dirname(work_dir))
        remove_tree(work_dir)
    return code
