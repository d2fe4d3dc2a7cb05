"""Pilot wrappers: a queue's pilot options -> the wrapper template's variables, rendered fast.

The director renders one wrapper per pilot, thousands per cycle. Everything that depends only
on the queue (the pilot's options, the embedded pilot files, the CA bundle) is serialised once
by `WrapperRenderer.prepare()`; `PreparedWrapper.render()` then only adds the stamp and the
secret, so a render is one pass of the compiled Jinja template over mostly static text.

The variables the template receives are listed in the header of
`templates/pilot-wrapper.sh.j2`; an operator's own template (found first in the folders given to
`TemplateRenderer`) receives the same ones. The Python program the wrapper runs is the module
`director/wrapper_program.py`: its source is read once per process (`wrapper_program()`) and
embedded in every wrapper as the `wrapper_program` variable.

A rendered wrapper holds the pilot's secret: never log it (`PilotSubmission` hides it).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import importlib.resources
import json
import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import jinja2

from director.errors import ConfigError
from director.render import TemplateRenderer

WRAPPER_TEMPLATE = "pilot-wrapper.sh.j2"
#: The line that ends the wrapper's here-document; the program must not contain it.
HEREDOC_END = "SITE_DIRECTOR_PILOT_PY"

#: Stamps and secrets go into the wrapper unescaped, so their alphabet is checked instead.
_STAMP = re.compile(r"[A-Za-z0-9_-]{1,32}")
_SECRET = re.compile(r"[A-Za-z0-9._~+/=-]{1,128}")
_COMMAND = re.compile(r"[A-Za-z0-9_./+-]+")
_SHA512 = re.compile(r"[0-9a-f]{128}")
_OPTION = re.compile(r"(-[A-Za-z0-9]|--[A-Za-z0-9][A-Za-z0-9_-]*)?")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TAG = re.compile(r"[A-Za-z0-9_.+-]{1,64}")


@dataclass(frozen=True)
class WrapperFile:
    """One file the pilot needs, as the wrapper gets it: embedded when `content` is set, else
    downloaded (the configuration's entry is `director.config.PilotFile`).

    `sha512` (lowercase hex) is required for downloaded files; for embedded ones it is computed
    from `content` when empty.
    """

    name: str
    sha512: str = ""
    content: bytes | None = None


@dataclass(frozen=True)
class WrapperTuning:
    """Timings and bounds of the wrapper; the defaults suit a production worker node."""

    exchange_attempts: int = 8
    backoff_initial_s: float = 2.0
    backoff_max_s: float = 60.0
    http_timeout_s: float = 30.0
    download_max_bytes: int = 64 * 1024 * 1024
    log_batch_lines: int = 500
    log_flush_interval_s: float = 5.0
    log_buffer_lines: int = 50_000
    log_max_line_bytes: int = 8192
    """Longer lines are cut (the server refuses lines over its `log_max_line_bytes`, 16 KiB)."""
    refresh_margin_s: float = 120.0
    """Refresh min(this, lifetime/4) before expiry; after a 401 in any case. Negative: only
    after a 401 (as the DIRAC pilot's own client does)."""
    final_flush_timeout_s: float = 30.0
    status_attempts: int = 3


@dataclass(frozen=True)
class WrapperOptions:
    """What a queue says about its pilots, in the wrapper's terms: `director.cycle.queues`
    maps the configuration's `pilot` block (`director.config.PilotOptions`) onto this."""

    server_url: str
    vo: str
    site: str
    ce: str
    queue: str
    pilot_files: tuple[WrapperFile, ...]
    pilot_locations: tuple[str, ...] = ()
    setup: str = ""
    release: str = ""
    """`-r`: the DIRAC release to install (pilot.json's `Version` otherwise)."""
    project: str = ""
    extensions: tuple[str, ...] = ()
    wn_vo: str = ""
    """The VO given to `--wnVO`; empty = `vo`."""
    processors: int = 1
    """`--pilotProcessors` when more than one: the cores the CE gives each pilot."""
    tags: tuple[str, ...] = ()
    """`--tag=` each: the queue's DIRAC tags, which the pilot adds to its resource description."""
    required_tags: tuple[str, ...] = ()
    """`--requiredTag=` each: only jobs with all of these tags match."""
    pilot_script: str = "dirac-pilot.py"
    extra_options: tuple[str, ...] = ()
    diracx_url_option: str = "--diracx_URL"
    stamp_option: str = "--pilotUUID"
    token_file_option: str = ""
    """Option that passes the token file's path to the pilot; empty = environment only."""
    secret_option: str = ""
    """Option that hands the secret to the pilot (the stock DIRAC pilot's `--pilotSecret`), which
    then exchanges it itself; empty = the secret never leaves the wrapper. See docs/wrapper.md."""
    ca_pem: str = ""
    ca_path: str = ""
    python_commands: tuple[str, ...] = ("python3",)
    environment: Mapping[str, str] = field(default_factory=dict)
    work_dir_base: str = ""
    tuning: WrapperTuning = field(default_factory=WrapperTuning)
    template: str = WRAPPER_TEMPLATE


def pilot_arguments(options: WrapperOptions) -> list[str]:
    """The pilot's DIRAC options, in DIRAC's SiteDirector order; empty values left out.

    Only options the stock pilot's parser knows (`pilotTools.py`, `cmdOpts`): it stops at an
    unknown one. The queue's resources follow the site: `--pilotProcessors`, one `--tag=` per
    tag and one `--requiredTag=` per required tag (the pilot adds them to the tags it finds
    itself). The wrapper appends the per-pilot ones (the stamp, the token file), then the
    queue's `extra_options`.
    """
    args: list[str] = []
    for flag, value in (
        ("-S", options.setup),
        ("-r", options.release),
        ("-l", options.project),
        ("-e", ",".join(options.extensions)),
        ("-N", options.ce),
        ("-Q", options.queue),
        ("-n", options.site),
    ):
        if value:
            args += [flag, value]
    if options.processors > 1:
        args.append(f"--pilotProcessors={options.processors}")
    args += [f"--tag={tag}" for tag in options.tags]
    args += [f"--requiredTag={tag}" for tag in options.required_tags]
    args.append(f"--wnVO={options.wn_vo or options.vo}")
    if options.diracx_url_option:
        args.append(f"{options.diracx_url_option}={options.server_url.rstrip('/')}")
    return args


#: Secret-exchange requests the stock DIRAC pilot may make with the secret it is handed: up to 10
#: on a 5xx (its `MAX_REQUEST_RETRIES`), then, after a 401, up to 10 more with the vacuum fields.
#: Any of them may spend a use even when the pilot sees no answer (an answer lost on the way).
PILOT_EXCHANGE_REQUESTS = 20


def secret_uses(options: WrapperOptions, configured: int | None) -> int | None:
    """The use count to mint each of this queue's secrets with (None = unlimited).

    The wrapper alone: `configured` (the director's `secret.use_count_max`) as it is. With
    `secret_option`, the secret also sits on the pilot's command line, so its uses are bounded
    by what the wrapper and the pilot may need between them: the wrapper's `exchange_attempts`
    (each may spend a use, the answer lost) plus `PILOT_EXCHANGE_REQUESTS`; a smaller
    `configured` value wins (fewer retries, less exposure).
    """
    if not options.secret_option:
        return configured
    needed = options.tuning.exchange_attempts + PILOT_EXCHANGE_REQUESTS
    return needed if configured is None else min(configured, needed)


def _python_literal_json(value: Any) -> str:
    """JSON that is also the body of a Python raw string literal r'...': no quote, no newline.

    `ensure_ascii` escapes every control character and non-ASCII one; the single quote is the
    only character left that could end the literal, and JSON never ends with a backslash.
    """
    text = json.dumps(value, ensure_ascii=True, separators=(",", ":"))
    return text.replace("'", "\\u0027")


def _file_entry(item: WrapperFile) -> dict[str, str]:
    """The file as the wrapper's `config` lists it: its SHA-512, and its content compressed
    and base64-encoded when embedded. Every queue of a director embeds the same few files, so
    the entries are made once per content (`_shared_entry`) and shared by the queues' configs:
    a 100 kB pilot is held once, not once per queue."""
    return _shared_entry(item.name, item.sha512, item.content)


@functools.lru_cache(maxsize=64)
def _shared_entry(name: str, sha512: str, content: bytes | None) -> dict[str, str]:
    """`_file_entry`'s work, once per (name, sum, content); the entry must not be modified."""
    if not name or "/" in name or "\\" in name or name in (".", "..") or "\0" in name:
        raise ConfigError(f"pilot file name {name!r}: a plain file name is required")
    sha512 = sha512.lower()
    data = ""
    if content is not None:
        actual = hashlib.sha512(content).hexdigest()
        if sha512 and sha512 != actual:
            raise ConfigError(f"pilot file {name}: sha512 does not match the embedded content")
        sha512 = actual
        data = base64.b64encode(zlib.compress(content, 9)).decode("ascii")
    if not sha512:
        raise ConfigError(f"pilot file {name}: sha512 required (or a pilot.manifest listing it)")
    if not _SHA512.fullmatch(sha512):
        raise ConfigError(f"pilot file {name}: sha512 must be 128 hexadecimal characters")
    return {"name": name, "sha512": sha512, "data": data}


def _check(options: WrapperOptions) -> None:
    url = urlsplit(options.server_url)
    if url.scheme != "https" or not url.netloc:
        raise ConfigError(f"server_url {options.server_url!r}: an https:// URL is required")
    if not options.pilot_files:
        raise ConfigError("pilot_files: at least the pilot script is required")
    names = [f.name for f in options.pilot_files]
    if options.pilot_script not in names:
        raise ConfigError(f"pilot_script {options.pilot_script!r} is not among pilot_files")
    if any(f.content is None for f in options.pilot_files) and not options.pilot_locations:
        raise ConfigError("pilot_locations: required when a pilot file is not embedded")
    for location in options.pilot_locations:
        if not location.startswith(("https://", "file:", "/")):
            raise ConfigError(
                f"pilot location {location!r}: https://, file: or an absolute path expected"
            )
    if not options.python_commands or not all(
        _COMMAND.fullmatch(c) for c in options.python_commands
    ):
        raise ConfigError("python_commands: names or paths of [A-Za-z0-9_./+-] characters")
    for option in (
        options.diracx_url_option,
        options.stamp_option,
        options.token_file_option,
        options.secret_option,
    ):
        if not _OPTION.fullmatch(option):
            raise ConfigError(f"option name {option!r}: '-x' or '--name' expected")
    for name in options.environment:
        if not _ENV_NAME.fullmatch(name):
            raise ConfigError(f"environment: {name!r} is not a variable name")
    for tag in (*options.tags, *options.required_tags):
        if not _TAG.fullmatch(tag):
            raise ConfigError(
                f"tag {tag!r}: 1-64 of [A-Za-z0-9_.+-] expected (the pilot joins with ',')"
            )
    if options.processors < 1:
        raise ConfigError("processors: at least 1")
    if options.ca_pem and "-----BEGIN CERTIFICATE-----" not in options.ca_pem:
        raise ConfigError("ca_pem: PEM certificates expected")


def check_options(options: WrapperOptions) -> None:
    """Raises ConfigError where `wrapper_config` would, without making the config."""
    _check(options)
    for item in options.pilot_files:
        _file_entry(item)


def wrapper_config(options: WrapperOptions) -> dict[str, Any]:
    """The `config` template variable: everything the embedded program reads from the queue."""
    _check(options)
    tuning = options.tuning
    return {
        "server_url": options.server_url.rstrip("/"),
        "vo": options.vo,
        "site": options.site,
        "ce": options.ce,
        "queue": options.queue,
        "ca_pem": options.ca_pem,
        "ca_path": options.ca_path,
        "pilot_script": options.pilot_script,
        "pilot_arguments": pilot_arguments(options),
        "stamp_option": options.stamp_option,
        "token_file_option": options.token_file_option,
        "secret_option": options.secret_option,
        "extra_options": list(options.extra_options),
        "pilot_files": [_file_entry(f) for f in options.pilot_files],
        "pilot_locations": list(options.pilot_locations),
        "environment": dict(options.environment),
        "work_dir_base": options.work_dir_base,
        "exchange_attempts": tuning.exchange_attempts,
        "backoff_initial_s": tuning.backoff_initial_s,
        "backoff_max_s": tuning.backoff_max_s,
        "http_timeout_s": tuning.http_timeout_s,
        "download_max_bytes": tuning.download_max_bytes,
        "log_batch_lines": tuning.log_batch_lines,
        "log_flush_interval_s": tuning.log_flush_interval_s,
        "log_buffer_lines": tuning.log_buffer_lines,
        "log_max_line_bytes": tuning.log_max_line_bytes,
        "refresh_margin_s": tuning.refresh_margin_s,
        "final_flush_timeout_s": tuning.final_flush_timeout_s,
        "status_attempts": tuning.status_attempts,
    }


@functools.cache
def wrapper_program() -> str:
    """The source of `director/wrapper_program.py`, read once per process.

    It goes into the wrapper's quoted here-document verbatim, so it must be ASCII (the worker
    node's locale is unknown) and hold no line that would end the here-document.
    """
    source = importlib.resources.files("director").joinpath("wrapper_program.py").read_text()
    if not source.isascii() or HEREDOC_END in source.splitlines():
        raise RuntimeError("director/wrapper_program.py cannot be embedded in the wrapper")
    return source


class PreparedWrapper:
    """A queue's compiled template and checked settings: renders one wrapper per pilot.

    What a render needs beyond the template (the `config` dict and its JSON, which embeds the
    pilot files: tens of kB, more with a large pilot) is made on the first render and dropped
    by `release()`, which the submission cycle calls once a queue's wrappers of the cycle are
    rendered; the next render makes it again from the options (tens of microseconds). A
    director of 10,000 queues so holds the settings of the queues being submitted, not of
    every queue, between and during its cycles."""

    __slots__ = ("_config", "_options", "_python", "_static", "_template")

    def __init__(
        self,
        template: jinja2.Template,
        config: dict[str, Any] | None,
        python: str,
        options: WrapperOptions | None = None,
    ) -> None:
        self._template = template
        self._config: dict[str, Any] | None = config
        self._python = python
        self._options = options
        self._static: dict[str, Any] | None = None

    def secret_uses(self, configured: int | None) -> int | None:
        """The use count for this queue's secrets: see `secret_uses()`."""
        return configured if self._options is None else secret_uses(self._options, configured)

    def render(self, stamp: str, secret: str) -> str:
        """The wrapper for one pilot. The result holds the secret: write it 0600, never log it."""
        if not _STAMP.fullmatch(stamp):
            raise ValueError(f"pilot stamp {stamp!r}: 1-32 of [A-Za-z0-9_-] expected")
        if not _SECRET.fullmatch(secret):
            raise ValueError("pilot secret: 1-128 URL-safe characters expected")  # not echoed
        static = self._static
        if static is None:
            config = self._config
            if config is None:
                assert self._options is not None  # only released with its options
                config = wrapper_config(self._options)  # checked when prepared: same answer
            static = self._static = {
                "wrapper_program": wrapper_program(),
                "config": config,
                "config_json": _python_literal_json(config),
                "python_commands": self._python,
            }
        return self._template.render(static, pilot_stamp=stamp, pilot_secret=secret)

    def release(self) -> None:
        """Drop what the renders made (and the config, when it can be made again from the
        options) until the next render."""
        self._static = None
        if self._options is not None:
            self._config = None


class WrapperRenderer:
    """Prepares queues' wrappers from the renderer's template folders (operator's first)."""

    def __init__(self, renderer: TemplateRenderer) -> None:
        self._renderer = renderer

    def prepare(self, options: WrapperOptions) -> PreparedWrapper:
        """Checks the options and compiles the template; raises ConfigError with the reason.

        The `config` itself is made by the first render, not here: a cycle prepares every
        queue it plans before any is rendered, and 10,000 configs made up front were ~13 MB
        of the director's peak that only the group being rendered needs."""
        check_options(options)
        try:
            template = self._renderer.template(options.template)
        except jinja2.TemplateError as exc:
            raise ConfigError(f"pilot wrapper template {options.template!r}: {exc}") from exc
        return PreparedWrapper(template, None, " ".join(options.python_commands), options)


def embedded_program(rendered: str) -> str:
    """The Python program inside a rendered wrapper (between the heredoc markers), for checks."""
    start = rendered.index("<<'SITE_DIRECTOR_PILOT_PY'\n") + len("<<'SITE_DIRECTOR_PILOT_PY'\n")
    end = rendered.index("\nSITE_DIRECTOR_PILOT_PY\n", start)
    return rendered[start : end + 1]
