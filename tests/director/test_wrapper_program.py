"""The wrapper's program (`director/wrapper_program.py`), imported and tested by parts.

It runs on worker nodes under python3 >= 3.6: the source is checked against the 3.6 grammar and
by vermin here. The whole program, embedded in a rendered wrapper and run as a real process
against the real server, is tested in `test_wrapper_run.py`.
"""

from __future__ import annotations

import ast
import base64
import hashlib
import json
import os
import ssl
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import pytest

from director import wrapper_program as wp
from director.wrapper import HEREDOC_END, wrapper_config, wrapper_program
from tests.director.test_wrapper_render import options

STAMP = "0123456789abcdef0123456789abcdef"
SECRET = "e" * 64
SOURCE = Path(wp.__file__).read_text()
CONTEXT = ssl.create_default_context()  # never used to connect here


def settings(**changes: Any) -> wp.Settings:
    config = wrapper_config(options())
    config.update(changes)
    return wp.Settings(config, STAMP, SECRET)


class Quiet:
    """A stream for the log buffer's echo, kept in memory."""

    def __init__(self) -> None:
        self.text = ""

    def write(self, text: str) -> None:
        self.text += text

    def flush(self) -> None:
        return None


def buffer(max_lines: int = 100, max_bytes: int = 1000, redact: wp.Redactor | None = None) -> Any:
    log = wp.LogBuffer(redact or wp.Redactor(), max_lines, max_bytes)
    out = Quiet()
    log._echo = lambda line, stream: out.write(line["message"] + "\n")  # type: ignore[method-assign]
    log.out = out  # type: ignore[attr-defined]
    return log


class FakeApi(wp.Api):
    """Answers from a script, one per request; records the requests."""

    def __init__(self, *answers: tuple[int, Any] | Exception) -> None:
        wp.Api.__init__(self, "https://unused.invalid", CONTEXT, 1.0)
        self.answers = list(answers)
        self.requests: list[dict[str, Any]] = []

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        form: dict[str, str] | None = None,
        token: str | None = None,
    ) -> tuple[int, Any]:
        self.requests.append(
            {"method": method, "path": path, "body": body, "form": form, "token": token}
        )
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


@pytest.fixture(autouse=True)
def _no_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    """Back-off sleeps return at once: the tests check what is done, not when."""
    monkeypatch.setattr(time, "sleep", lambda _s: None)


# --- the source: Python 3.6, embeddable --------------------------------------------------------


def test_the_source_parses_with_the_python_36_grammar() -> None:
    ast.parse(SOURCE, feature_version=(3, 6))


def test_vermin_finds_nothing_newer_than_python_36() -> None:
    vermin = Path(sys.executable).with_name("vermin")  # the test extra installs it
    found = subprocess.run(
        [str(vermin), "-t=3.6-", "--no-tips", "--violations", wp.__file__],
        capture_output=True,
        text=True,
    )
    assert found.returncode == 0, found.stdout + found.stderr


def test_only_the_standard_library_is_imported() -> None:
    tree = ast.parse(SOURCE)
    names = {
        a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
    }
    names |= {
        (n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
    }
    assert names <= set(sys.stdlib_module_names), names - set(sys.stdlib_module_names)
    assert "__future__" not in names  # `from __future__ import annotations` is 3.7+


def test_the_source_is_embeddable_and_read_once() -> None:
    assert wrapper_program() is wrapper_program()  # cached: one read per process
    assert wrapper_program() == SOURCE
    assert SOURCE.isascii()
    assert HEREDOC_END not in SOURCE.splitlines()
    assert "if __name__" not in SOURCE  # the template's last lines call main()


def test_every_setting_the_director_renders_is_read() -> None:
    """The contract between director/wrapper.py and the program: no key unused, none missing."""
    config = wrapper_config(options())
    got = wp.Settings(config, STAMP, SECRET)
    assert got.server_url == "https://diracx.example.org"
    assert got.pilot_arguments == config["pilot_arguments"]
    assert [f["name"] for f in got.pilot_files] == ["dirac-pilot.py", "pilot.json"]
    read = {
        n.slice.value
        for n in ast.walk(ast.parse(SOURCE))
        if isinstance(n, ast.Subscript)
        and isinstance(n.value, ast.Name)
        and n.value.id == "config"
        and isinstance(n.slice, ast.Constant)
    }
    read |= {
        n.args[0].value
        for n in ast.walk(ast.parse(SOURCE))
        if isinstance(n, ast.Call)
        and isinstance(n.func, ast.Attribute)
        and n.func.attr == "get"
        and isinstance(n.func.value, ast.Name)
        and n.func.value.id == "config"
        and isinstance(n.args[0], ast.Constant)
    }
    assert read == set(config)


def test_a_broken_configuration_exits_100_before_doing_anything(
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = wrapper_config(options())
    del config["log_buffer_lines"]
    assert wp.main(config, STAMP, SECRET) == wp.EXIT_CONFIG
    assert "bad configuration" in capsys.readouterr().err


# --- log lines ----------------------------------------------------------------------------------


def test_the_secret_and_tokens_are_redacted_short_values_are_not() -> None:
    redact = wp.Redactor()
    redact.add(SECRET)
    redact.add("short")
    redact.add(None)
    assert redact(f"--pilotSecret={SECRET} short") == "--pilotSecret=<redacted> short"


def test_a_full_buffer_drops_the_oldest_lines_and_counts_them() -> None:
    log = buffer(max_lines=3)
    for i in range(5):
        log.info(f"line {i}")
    _, lines = log.peek(10)
    assert [line["message"] for line in lines] == ["line 2", "line 3", "line 4"]
    assert log.dropped == 2
    assert "line 0" in log.out.text  # the CE's copy has every line


def test_consumed_lines_are_forgotten_and_later_ones_stay() -> None:
    log = buffer()
    for i in range(4):
        log.info(f"line {i}")
    upto, _ = log.peek(2)
    log.info("line 4")
    log.consume(upto)
    assert [line["message"] for line in log.peek(10)[1]] == ["line 2", "line 3", "line 4"]
    assert log.pending() == 3


def test_local_lines_are_echoed_only_and_long_lines_cut_by_utf8_bytes() -> None:
    redact = wp.Redactor()
    redact.add(SECRET)
    log = buffer(max_bytes=20, redact=redact)
    log.emit("WARNING", "kept here", local=True)
    log.emit("INFO", "\u00e9" * 30)
    log.info(SECRET)
    _, lines = log.peek(10)
    assert [line["message"] for line in lines] == ["\u00e9" * 8 + "...", "<redacted>"]
    assert all(len(line["message"].encode()) <= 20 for line in lines)
    assert lines[0]["scope"] == "Wrapper"
    assert lines[0]["timestamp"].endswith("Z")
    assert "kept here" in log.out.text
    assert SECRET not in log.out.text


def test_backoff_grows_with_jitter_up_to_its_cap_and_resets() -> None:
    backoff = wp.Backoff(1.0, 4.0)
    delays = [backoff.next() for _ in range(5)]
    for delay, ceiling in zip(delays, [1, 2, 4, 4, 4], strict=True):
        assert ceiling / 2 <= delay <= ceiling
    backoff.reset()
    assert backoff.next() <= 1.0


# --- the pilot's start and end -------------------------------------------------------------------


def test_the_pilot_command_line_carries_the_per_pilot_options_before_the_extra_ones() -> None:
    got = settings(token_file_option="--diracxTokenFile", extra_options=["--debug"])
    argv = wp.pilot_command(got, "/w/dirac-pilot.py", "/w/creds.json")
    assert argv[:2] == [sys.executable, "/w/dirac-pilot.py"]
    assert argv[2:] == [
        *got.pilot_arguments,
        f"--pilotUUID={STAMP}",
        "--diracxTokenFile=/w/creds.json",
        "--debug",
    ]
    assert SECRET not in " ".join(argv)


def test_the_secret_goes_on_the_pilot_command_line_only_with_a_secret_option() -> None:
    got = settings(secret_option="--pilotSecret")
    argv = wp.pilot_command(got, "/w/dirac-pilot.py", "/w/creds.json")
    assert argv[-2:] == [f"--pilotUUID={STAMP}", f"--pilotSecret={SECRET}"]


def test_the_pilot_environment_names_the_credentials_and_the_queue_variables() -> None:
    env = wp.pilot_environment(settings(environment={"A": "1"}), "/w", "/w/c.json", None)
    assert env["A"] == "1"
    assert env["DIRACX_URL"] == "https://diracx.example.org"
    assert env["DIRACX_CREDENTIALS_PATH"] == "/w/c.json"
    assert env["SITE_DIRECTOR_PILOT_STAMP"] == STAMP
    assert env["SITE_DIRECTOR_WORK_DIR"] == "/w"
    assert "DIRACX_CA_PATH" not in env
    assert SECRET not in json.dumps(env)


@pytest.mark.parametrize(
    ("pilot_code", "received", "expected"),
    [
        (0, None, (0, "Done", None)),
        (2, None, (2, "Failed", "pilot exited with code 2")),
        (-9, None, (137, "Failed", "pilot killed by signal 9")),
        (0, 15, (143, "Failed", "stopped by signal 15 (forwarded to the pilot)")),
    ],
)
def test_final_status_from_the_pilot_exit_code_and_signals(
    pilot_code: int, received: int | None, expected: tuple[int, str, str | None]
) -> None:
    assert wp.final_status(pilot_code, received) == expected


# --- pilot files ---------------------------------------------------------------------------------


def test_files_come_embedded_or_from_the_first_location_with_the_right_bytes(
    tmp_path: Path,
) -> None:
    good, stale = tmp_path / "good", tmp_path / "stale"
    good.mkdir()
    stale.mkdir()
    (good / "pilot.json").write_bytes(b"{}")
    (stale / "pilot.json").write_bytes(b"{'old'}")
    script = b"print('pilot')\n"
    files = [
        {
            "name": "dirac-pilot.py",
            "sha512": hashlib.sha512(script).hexdigest(),
            "data": base64.b64encode(zlib.compress(script)).decode(),
        },
        {"name": "pilot.json", "sha512": hashlib.sha512(b"{}").hexdigest(), "data": ""},
    ]
    locations = [str(tmp_path / "missing"), stale.as_uri(), str(good)]
    work = tmp_path / "work"
    work.mkdir()
    log = buffer()
    wp.get_pilot_files(
        settings(pilot_files=files, pilot_locations=locations), str(work), CONTEXT, log
    )
    assert (work / "dirac-pilot.py").read_bytes() == script
    assert os.stat(work / "dirac-pilot.py").st_mode & 0o777 == 0o700
    assert (work / "pilot.json").read_bytes() == b"{}"
    assert os.stat(work / "pilot.json").st_mode & 0o777 == 0o600
    text = log.out.text
    assert "not available from" in text
    assert f"from {stale.as_uri()}: SHA-512 mismatch" in text
    assert f"pilot file pilot.json (2 bytes) from {good}, SHA-512 verified" in text


@pytest.mark.parametrize(
    ("entry", "locations", "reason"),
    [
        ({"name": "a.py", "sha512": "0" * 128, "data": ""}, [], "no location configured"),
        ({"name": "../a.py", "sha512": "0" * 128, "data": ""}, ["/x"], "bad pilot file name"),
        (
            {"name": "a.py", "sha512": "0" * 128, "data": base64.b64encode(zlib.compress(b"x"))},
            [],
            "embedded pilot file a.py: SHA-512 mismatch",
        ),
        ({"name": "a.py", "sha512": "0" * 128, "data": ""}, ["ftp://x"], "unsupported location"),
    ],
)
def test_unavailable_files_are_wrapper_errors_with_the_reason(
    tmp_path: Path, entry: dict[str, Any], locations: list[str], reason: str
) -> None:
    if isinstance(entry["data"], bytes):
        entry = {**entry, "data": entry["data"].decode()}
    with pytest.raises(wp.WrapperError, match=reason) as error:
        wp.get_pilot_files(
            settings(pilot_files=[entry], pilot_locations=locations),
            str(tmp_path),
            CONTEXT,
            buffer(),
        )
    assert error.value.code in (wp.EXIT_FILES, wp.EXIT_CONFIG)


def test_a_location_larger_than_the_limit_is_refused(tmp_path: Path) -> None:
    (tmp_path / "big").write_bytes(b"x" * 11)
    with pytest.raises(OSError, match="larger than 10 bytes"):
        wp.read_location(settings(download_max_bytes=10), str(tmp_path), "big", CONTEXT)


# --- the server: exchange, tokens, status -------------------------------------------------------


def test_the_exchange_retries_5xx_and_unreachability_then_gives_up() -> None:
    api = FakeApi((503, None), wp.Unreachable("refused"), (500, None))
    with pytest.raises(wp.WrapperError) as error:
        wp.exchange_secret(settings(exchange_attempts=3), api, buffer())
    assert error.value.code == wp.EXIT_UNREACHABLE
    assert "after 3 attempts: HTTP 500" in error.value.reason
    assert api.requests[0]["body"] == {"pilot_stamp": STAMP, "pilot_secret": SECRET}


def test_a_refused_exchange_is_not_retried() -> None:
    api = FakeApi((401, {"detail": "bad"}))
    with pytest.raises(wp.WrapperError, match=r"refused \(HTTP 401 bad\)") as error:
        wp.exchange_secret(settings(), api, buffer())
    assert error.value.code == wp.EXIT_REFUSED
    assert len(api.requests) == 1


def tokens(api: FakeApi, tmp_path: Path, margin: float = 60.0) -> wp.Tokens:
    got = wp.Tokens(
        api,
        str(tmp_path / "creds.json"),
        wp.Redactor(),
        buffer(),
        margin,
        wp.Backoff(0.01, 0.02),
        STAMP,
    )
    return got


def test_tokens_are_written_0600_and_refreshed_when_due(tmp_path: Path) -> None:
    api = FakeApi(
        (200, {"access_token": "access-2", "refresh_token": "refresh-2", "expires_in": 600})
    )
    held = tokens(api, tmp_path, margin=60.0)
    held.set({"access_token": "access-1", "refresh_token": "refresh-1", "expires_in": 600})
    path = tmp_path / "creds.json"
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert json.loads(path.read_text())["access_token"] == "access-1"
    assert held.ensure_fresh()  # not due: 600 s left, margin min(60, 150)
    assert api.requests == []
    held.expires_at = time.time() + 30
    assert held.ensure_fresh()
    assert api.requests[0]["body"] == {"refresh_token": "refresh-1", "pilot_stamp": STAMP}
    assert json.loads(path.read_text())["refresh_token"] == "refresh-2"


def test_a_pair_the_pilot_refreshed_is_adopted_not_reused(tmp_path: Path) -> None:
    api = FakeApi((200, None))
    held = tokens(api, tmp_path)
    held.set({"access_token": "access-1", "refresh_token": "refresh-1", "expires_in": 600})
    later = int(time.time()) + 900
    (tmp_path / "creds.json").write_text(
        json.dumps({"access_token": "access-p", "refresh_token": "refresh-p", "expires_on": later})
    )
    held.revoke()
    assert held.access == "access-p"
    assert api.requests[0]["form"] == {"token": "refresh-p", "token_type_hint": "refresh_token"}
    assert "adopted the token pair the pilot refreshed" in held.log.out.text  # type: ignore[attr-defined]


def test_a_401_refreshes_once_and_retries_and_a_refused_refresh_kills_the_pair(
    tmp_path: Path,
) -> None:
    api = FakeApi(
        (401, None),
        (200, {"access_token": "access-2", "refresh_token": "refresh-2", "expires_in": 600}),
        (204, None),
        (401, None),
        (401, {"detail": "revoked"}),
    )
    held = tokens(api, tmp_path)
    held.set({"access_token": "access-1", "refresh_token": "refresh-1", "expires_in": 600})
    assert held.call("PATCH", "/x", {}) == (204, None)
    assert [r["token"] for r in api.requests] == ["access-1", None, "access-2"]
    assert held.call("PATCH", "/x", {}) == (401, None)
    assert held.dead
    assert not held.ensure_fresh()


def test_set_status_stops_at_a_4xx_and_reports_it(tmp_path: Path) -> None:
    api = FakeApi((500, None), (404, {"detail": "unknown stamp"}))
    held = tokens(api, tmp_path)
    held.set({"access_token": "access-1", "refresh_token": "refresh-1", "expires_in": 600})
    got = settings(status_attempts=5)
    assert not wp.set_status(got, held, held.log, "Done")
    assert len(api.requests) == 2
    assert api.requests[0]["body"] == {STAMP: {"Status": "Done"}}
    assert "could not set status Done: HTTP 404 unknown stamp" in held.log.out.text  # type: ignore[attr-defined]
