"""`pilot.manifest`: the pilot files' sums read from where DIRAC's PilotSyncAgent publishes them.

A folder as the agent writes it (the pilot files, `pilot.json`, `checksums.sha512`) is served
by a local HTTPS server on a free port (its certificate from the test CA) or read as a path.
The last test runs the stock DIRAC pilot (`/work/shared/reference/dirac-pilot/`, or
SITE_DIRECTOR_DIRAC_PILOT_DIR) through a director cycle on the local CE, its files downloaded
from the HTTPS folder and checked against the published sums.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import ssl
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from director.errors import ConfigError
from director.pilot_files import (
    MANIFEST_NAME,
    ManifestCache,
    ManifestError,
    download_locations,
    parse_manifest,
    resolve_files,
)
from tests import conftest
from tests.conftest import LiveServer, async_wait_until, missing
from tests.director.conftest import queue_block, settings_for, write_config
from tests.director.test_wrapper_dirac_pilot import (
    FETCHED,
    PILOT_FILES,
    PILOT_JSON,
    grid_security,
)
from tests.director.test_wrapper_run import log_lines, pilot_record

DEFAULT_PILOT_DIR = Path("/work/shared/reference/dirac-pilot")


def publish(folder: Path, files: dict[str, bytes]) -> dict[str, str]:
    """What the PilotSyncAgent leaves: the files and `checksums.sha512` (sorted, two spaces)."""
    folder.mkdir(parents=True, exist_ok=True)
    sums = {}
    for name, data in files.items():
        (folder / name).write_bytes(data)
        sums[name] = hashlib.sha512(data).hexdigest()
    lines = "".join(f"{sums[n]}  {n}\n" for n in sorted(sums))
    (folder / MANIFEST_NAME).write_text(lines)
    return sums


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def https_folder(tmp_path: Path, test_ca: conftest.TestCA) -> Iterator[tuple[str, Path]]:
    """(URL, folder): an HTTPS server on a free loopback port serving the folder."""
    folder = tmp_path / "www" / "pilot"
    folder.mkdir(parents=True)
    handler = functools.partial(_Quiet, directory=str(folder.parent))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(test_ca.cert_file), str(test_ca.key_file))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://localhost:{server.server_address[1]}/pilot", folder
    server.shutdown()
    server.server_close()


def test_a_manifest_is_read_as_sha512sum_writes_it() -> None:
    data = f"{'A' * 128}  pilot.json\n{'b' * 128} *dirac-pilot.py\n\n{'c' * 128}  pilot.tar\n"
    manifest = parse_manifest("/cvmfs/x", data.encode())
    assert manifest.checksums == {
        "pilot.json": "a" * 128,
        "dirac-pilot.py": "b" * 128,
        "pilot.tar": "c" * 128,
    }
    assert manifest.default_files() == ["pilot.json", "dirac-pilot.py"]  # not the archive
    assert manifest.digest == hashlib.sha256(data.encode()).hexdigest()


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "lists no file"),
        ("deadbeef  pilot.json\n", "line 1: '<sha512>  <file name>' expected"),
        (f"{'a' * 128}  ../pilot.json\n", "line 1"),
        (f"{'a' * 128}  x\n{'b' * 128}  x\n", "x listed twice"),
    ],
)
def test_a_bad_manifest_says_what_is_wrong(text: str, reason: str) -> None:
    with pytest.raises(ManifestError, match=reason) as caught:
        parse_manifest("https://web.example.org/pilot", text.encode())
    assert "pilot.manifest https://web.example.org/pilot/checksums.sha512" in str(caught.value)


def test_files_take_the_published_sums() -> None:
    manifest = parse_manifest("/p", f"{'a' * 128}  a.py\n{'b' * 128}  pilot.json\n".encode())
    assert resolve_files(manifest, None) == [
        ("a.py", "a" * 128, None),
        ("pilot.json", "b" * 128, None),
    ]
    # named files: downloaded ones take the sum, embedded ones stay as they are
    assert resolve_files(manifest, [("a.py", "", None), ("x.cfg", "", b"x")]) == [
        ("a.py", "a" * 128, None),
        ("x.cfg", "", b"x"),
    ]
    with pytest.raises(ManifestError, match=r"does not list b\.py"):
        resolve_files(manifest, [("b.py", "", None)])
    with pytest.raises(ManifestError, match="another sha512"):
        resolve_files(manifest, [("a.py", "c" * 128, None)])
    assert download_locations("/p/", ["/cvmfs/a"], ["https://b", "/p"]) == [
        "/cvmfs/a",
        "/p",
        "https://b",
    ]


async def test_the_cache_reads_https_and_paths_and_sees_changes(
    https_folder: tuple[str, Path], test_ca: conftest.TestCA
) -> None:
    url, folder = https_folder
    now = [0.0]
    cache = ManifestCache(max_age_s=60, clock=lambda: now[0])
    sums = publish(folder, {"dirac-pilot.py": b"one", "pilot.json": b"{}"})
    for location, ca in ((url, test_ca.ca_file), (str(folder), None), (folder.as_uri(), None)):
        manifest = cache.get(location, ca)
        assert dict(manifest.checksums) == sums
    first = cache.get(url, test_ca.ca_file).digest

    new = publish(folder, {"dirac-pilot.py": b"two", "pilot.json": b"{}"})
    await cache.refresh(url, test_ca.ca_file)  # not stale yet: the cached one
    assert cache.get(url).digest == first
    now[0] = 61.0
    for location in (url, str(folder)):
        await cache.refresh(location, test_ca.ca_file)
        assert dict(cache.get(location).checksums) == new
    assert cache.get(url).digest != first

    # gone: the reason, for the queues that use it only; back: fine again
    (folder / MANIFEST_NAME).unlink()
    now[0] = 200.0
    await cache.refresh(url, test_ca.ca_file)
    await cache.refresh(str(folder))
    with pytest.raises(ManifestError, match=r"checksums.sha512: HTTP 404"):
        cache.get(url)
    with pytest.raises(ManifestError, match="No such file"):
        cache.get(str(folder))
    publish(folder, {"dirac-pilot.py": b"two"})
    now[0] = 300.0
    await cache.refresh(url, test_ca.ca_file)
    assert list(cache.get(url).checksums) == ["dirac-pilot.py"]
    # an https location is verified: without the test CA, no manifest
    with pytest.raises(ManifestError, match="unreachable"):
        ManifestCache().get(url)
    with pytest.raises(ManifestError, match="https:// or file: URL or an absolute path"):
        ManifestCache().get("pilot/files")


def _config(tmp_path: Path, server: LiveServer, pilot: dict[str, Any], **queues: Any) -> Path:
    path, _ = write_config(
        tmp_path,
        server_url=server.url,
        ca_file=server.ca_file,
        token=server.director_token,
        test_wrapper=False,
        queues=queues or {"default": queue_block()},
    )
    import yaml

    data = yaml.safe_load(path.read_text())
    data["pilot"] = pilot
    path.write_text(yaml.safe_dump(data))
    return path


async def test_a_bad_manifest_fails_only_its_queues(
    live_server_tls: LiveServer, tmp_path: Path, make_director: Any
) -> None:
    folder = tmp_path / "cvmfs" / "pilot"
    publish(folder, {"dirac-pilot.py": b"print('pilot')\n", "pilot.json": b"{}"})
    missing_folder = tmp_path / "nowhere"
    path = _config(
        tmp_path,
        live_server_tls,
        {"manifest": str(folder)},
        good=queue_block(),
        bad=queue_block(pilot={"manifest": str(missing_folder)}),
    )
    director = make_director(settings_for(path))
    problems = director.check()
    assert len(problems) == 1
    assert ".queues.bad.pilot: pilot.manifest" in problems[0]
    assert f"{missing_folder}/checksums.sha512" in problems[0]
    good = next(r for r in director.queues if r.queue == "good")
    options = director.wrapper_options(good)
    assert [f.name for f in options.pilot_files] == ["dirac-pilot.py", "pilot.json"]
    assert options.pilot_locations == (str(folder),)
    prepared = director.prepared(good)
    assert director.prepared(good) is prepared  # unchanged: prepared once

    # the published files change: the queue's wrappers are prepared again with the new sums
    publish(folder, {"dirac-pilot.py": b"print('pilot 2')\n", "pilot.json": b"{}"})
    director.manifests._max_age_s = 0
    await director.manifests.refresh(str(folder), None)
    renewed = director.prepared(good)
    assert renewed is not prepared
    assert director.wrapper_options(good).pilot_files[0].sha512 == (
        hashlib.sha512(b"print('pilot 2')\n").hexdigest()
    )


def test_installation_is_refused_with_the_reason(
    tmp_path: Path, live_server_tls: LiveServer
) -> None:
    path = _config(tmp_path, live_server_tls, {"installation": "LHCb", "files": []})
    with pytest.raises(ConfigError, match=r"pilot\.installation: .*no -V"):
        settings_for(path)


@pytest.fixture(scope="module")
def pilot_dir() -> Path:
    folder = Path(os.environ.get("SITE_DIRECTOR_DIRAC_PILOT_DIR") or DEFAULT_PILOT_DIR)
    if not all((folder / name).is_file() for name in PILOT_FILES):
        missing(f"the DIRAC pilot's files are not in {folder} (SITE_DIRECTOR_DIRAC_PILOT_DIR)")
    return folder


async def test_the_stock_pilot_from_a_published_folder_through_the_local_ce(
    live_server_tls: LiveServer,
    https_folder: tuple[str, Path],
    pilot_dir: Path,
    tmp_path: Path,
    make_director: Any,
) -> None:
    """A director cycle, the local CE, the real pilot files from the HTTPS folder (sums from
    its manifest), `secret_option`: the pilot fetches its own token, its own lines reach the
    server with the secret redacted, and it ends Done."""
    server = live_server_tls
    url, folder = https_folder
    files = {name: (pilot_dir / name).read_bytes() for name in PILOT_FILES}
    files["pilot.json"] = json.dumps(PILOT_JSON).encode()
    publish(folder, {**files, "pilot.tar": b"an archive the wrapper does not fetch"})
    security = grid_security(tmp_path / "grid-security", Path(str(server.ca_file)))
    cvmfs = tmp_path / "empty-cvmfs"
    cvmfs.mkdir()
    path = _config(
        tmp_path,
        server,
        {
            "manifest": url,
            "secret_option": "--pilotSecret",
            "extra_options": ["-z", "-d", "-X", "CheckWorkerNode", f"--CVMFS_locations={cvmfs}"],
            "environment": security,
        },
        default=queue_block(
            pilots_per_cycle=1,
            processors=2,
            tags=["MultiProcessor"],
            required_tags=["Test"],
        ),
    )
    director = make_director(settings_for(path))
    assert director.check() == []
    [outcome] = await director.run_cycle()
    assert (outcome.submitted, outcome.failed, outcome.error) == (1, 0, None), outcome.why
    (stamp,) = outcome.stamps

    async def ended() -> bool:
        await director.monitor_cycle()
        return pilot_record(server, stamp)["Status"] in ("Done", "Failed", "Aborted")

    assert await async_wait_until(ended, timeout=120, interval=1.0)
    record = pilot_record(server, stamp)
    lines = log_lines(server, stamp)
    messages = [line["Message"] for line in lines]
    assert record["Status"] == "Done", (record["StatusReason"], messages[-20:])
    assert any(m.endswith(f"INFO [PilotParams] {FETCHED}") for m in messages)
    # its own lines, with its own token; the queue's resources on its command line
    assert any(line["Scope"] == "CheckWorkerNode" for line in lines)
    options = [line["Message"] for line in lines if "Options list" in line["Message"]]
    assert options, messages
    for expected in (
        "'--pilotProcessors', '2'",
        "'--tag', 'MultiProcessor'",
        "'--requiredTag', 'Test'",
    ):
        assert expected in options[0]
    assert "('--pilotSecret', '<redacted>')" in options[0]
    # the files came from the folder, checked against its manifest
    assert any("dirac-pilot.py" in m and url in m for m in messages), messages
    # the secret in no line the server keeps
    secret_lines = [line for line in lines if "--pilotSecret" in line["Message"]]
    assert secret_lines
    assert all(
        "'<redacted>'" in line["Message"] or "=<redacted>" in line["Message"]
        for line in secret_lines
    )
