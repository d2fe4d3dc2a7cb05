"""The pilot files as DIRAC publishes them: a folder with `checksums.sha512` (`pilot.manifest`).

DIRAC's PilotSyncAgent writes the pilot files, `pilot.json` and `checksums.sha512` (one line
`<sha512>  <name>` per file, as `sha512sum` writes them) to a web server or a CVMFS folder. A
queue whose `pilot.manifest` names that folder (an `https://` or `file:` URL, or an absolute
path) takes its pilot files' SHA-512 sums from there, so none has to be copied into the YAML;
the worker nodes download the files from that folder too (after `cvmfs_locations`, before
`locations`).

`ManifestCache` reads each folder's manifest once and re-reads it when it is older than
`max_age_s` (whole: it is a few lines, and a conditional request would miss a change made within
the second of the last read, as `Last-Modified` and most `ETag`s go by the second). A manifest
that cannot be read or parsed fails only the queues that use it, with the reason
(`ManifestError`, a `ConfigError`); the next read that works puts them back. `Manifest.digest`
changes with its content, which is how the director knows to prepare those queues' wrappers
again.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from director.errors import ConfigError

MANIFEST_NAME = "checksums.sha512"
MAX_MANIFEST_BYTES = 1024 * 1024
MAX_AGE_S = 60.0
TIMEOUT_S = 30.0
#: Archives the PilotSyncAgent publishes beside the files; the wrapper downloads files, not these.
ARCHIVES = (".tar", ".tar.gz", ".tgz")

_LINE = re.compile(r"([0-9a-fA-F]{128}) [ *]([^/\\\0]+)")


class ManifestError(ConfigError):
    """The manifest of a location cannot be read or makes no sense; the message says why."""


@dataclass(frozen=True)
class Manifest:
    location: str
    checksums: Mapping[str, str]
    """File name -> lowercase SHA-512, in the manifest's order."""
    digest: str
    """SHA-256 of the manifest's bytes: changes when the published files do."""

    def default_files(self) -> list[str]:
        """The files a queue downloads when it names none: all but the archives."""
        return [name for name in self.checksums if not name.endswith(ARCHIVES)]


def parse_manifest(location: str, data: bytes) -> Manifest:
    """`sha512sum` lines -> a Manifest; ManifestError naming the first bad line."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{_where(location)}: not UTF-8 text ({exc.reason})") from None
    checksums: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        match = _LINE.fullmatch(line.rstrip("\r"))
        if match is None or match.group(2) in (".", ".."):
            raise ManifestError(
                f"{_where(location)}: line {number}: '<sha512>  <file name>' expected"
            )
        sha512, name = match.group(1).lower(), match.group(2)
        if checksums.get(name, sha512) != sha512:
            raise ManifestError(f"{_where(location)}: {name} listed twice with different sums")
        checksums[name] = sha512
    if not checksums:
        raise ManifestError(f"{_where(location)}: lists no file")
    return Manifest(location, checksums, hashlib.sha256(data).hexdigest())


def manifest_url(location: str) -> str:
    """Where the manifest of a location is: `<location>/checksums.sha512`."""
    return location.rstrip("/") + "/" + MANIFEST_NAME


def local_path(location: str) -> Path | None:
    """The folder of a `file:` URL or absolute path; None for an `https://` location."""
    if location.startswith("file:"):
        return Path(urllib.parse.unquote(urllib.parse.urlsplit(location).path))
    if location.startswith("/"):
        return Path(location)
    return None


def check_location(location: str) -> None:
    if not (location.startswith(("https://", "file:", "/"))):
        raise ManifestError(
            f"pilot.manifest {location!r}: an https:// or file: URL or an absolute path expected"
        )


def _where(location: str) -> str:
    return f"pilot.manifest {manifest_url(location)}"


@dataclass
class _Entry:
    manifest: Manifest | None = None
    error: str = ""
    read_at: float | None = None


class ManifestCache:
    """The manifests of the queues' locations, read on first use and re-read when stale."""

    def __init__(
        self,
        *,
        timeout_s: float = TIMEOUT_S,
        max_age_s: float = MAX_AGE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._timeout_s = timeout_s
        self._max_age_s = max_age_s
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._sync_lock = threading.Lock()

    def get(self, location: str, ca_file: Path | None = None) -> Manifest:
        """The location's manifest, read now if it never was; ManifestError with the reason of
        the last read when that failed. `ca_file`: the CAs an `https://` location is verified
        with (default: the system's)."""
        entry = self._entries.get(location)
        if entry is None or entry.read_at is None:
            with self._sync_lock:
                self._read(location, ca_file)
            entry = self._entries[location]
        if entry.manifest is None:
            raise ManifestError(entry.error)
        return entry.manifest

    async def refresh(self, location: str, ca_file: Path | None = None) -> None:
        """Re-read the manifest if it is older than `max_age_s` (one read at a time per
        location, in a worker thread); the outcome is what `get` answers next."""
        lock = self._locks.setdefault(location, asyncio.Lock())
        async with lock:
            entry = self._entries.get(location)
            read_at = entry.read_at if entry is not None else None
            if read_at is not None and self._clock() - read_at < self._max_age_s:
                return
            await asyncio.to_thread(self._locked_read, location, ca_file)

    def _locked_read(self, location: str, ca_file: Path | None) -> None:
        with self._sync_lock:
            self._read(location, ca_file)

    def _read(self, location: str, ca_file: Path | None) -> None:
        entry = self._entries.setdefault(location, _Entry())
        entry.read_at = self._clock()
        try:
            check_location(location)
            entry.manifest = parse_manifest(location, self._fetch(location, ca_file))
            entry.error = ""
        except ManifestError as exc:
            entry.manifest, entry.error = None, str(exc)

    def _fetch(self, location: str, ca_file: Path | None) -> bytes:
        folder = local_path(location)
        if folder is not None:
            try:
                with (folder / MANIFEST_NAME).open("rb") as handle:
                    data = handle.read(MAX_MANIFEST_BYTES + 1)
            except OSError as exc:
                raise ManifestError(f"{_where(location)}: {exc.strerror or exc}") from None
            return self._bounded(location, data)
        try:
            verify = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
            with (
                httpx.Client(verify=verify, timeout=self._timeout_s) as client,
                client.stream("GET", manifest_url(location)) as response,
            ):
                if response.status_code != 200:
                    raise ManifestError(f"{_where(location)}: HTTP {response.status_code}")
                data = b""
                for chunk in response.iter_bytes():
                    data += chunk
                    if len(data) > MAX_MANIFEST_BYTES:
                        break
        except (httpx.HTTPError, ssl.SSLError, OSError) as exc:
            reason = str(exc) or type(exc).__name__
            raise ManifestError(f"{_where(location)}: unreachable ({reason})") from None
        return self._bounded(location, data)

    @staticmethod
    def _bounded(location: str, data: bytes) -> bytes:
        if len(data) > MAX_MANIFEST_BYTES:
            raise ManifestError(f"{_where(location)}: larger than {MAX_MANIFEST_BYTES} bytes")
        return data


def resolve_files(
    manifest: Manifest, configured: list[tuple[str, str, bytes | None]] | None
) -> list[tuple[str, str, bytes | None]]:
    """The queue's pilot files `(name, sha512, content)` with the manifest's sums.

    `configured` are the queue's `pilot.files` (content set when embedded); None: every file of
    the manifest but the archives. A downloaded file takes its sum from the manifest; one the
    manifest does not list, or lists with another sum than the configured one, is an error.
    Embedded files are left as they are.
    """
    if configured is None:
        return [(name, manifest.checksums[name], None) for name in manifest.default_files()]
    files = []
    for name, sha512, content in configured:
        if content is None:
            published = manifest.checksums.get(name)
            if published is None:
                raise ManifestError(f"{_where(manifest.location)}: does not list {name}")
            if sha512 and sha512.lower() != published:
                raise ManifestError(
                    f"{_where(manifest.location)}: lists {name} with another sha512 than "
                    "pilot.files (remove the one in the configuration)"
                )
            sha512 = published
        files.append((name, sha512, content))
    return files


def download_locations(
    manifest_location: str | None, cvmfs: list[str], others: list[str]
) -> list[str]:
    """Where the wrapper looks for the files, in order: CVMFS, the manifest's folder, the rest."""
    locations = list(cvmfs)
    if manifest_location:
        locations.append(manifest_location.rstrip("/"))
    locations += others
    return list(dict.fromkeys(locations))
