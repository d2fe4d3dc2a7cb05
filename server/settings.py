"""Server settings: built once by the CLI (or a test) and passed down; no module globals.

Sources, lowest first: defaults, a YAML file (`--config F` or SITE_DIRECTOR_SERVER_CONFIG,
e.g. /etc/site-director/server.yaml, keys named as the fields below), environment variables
`SITE_DIRECTOR_...`, then the CLI's flags (passed as init arguments): the director's order. The
database defaults to a SQLite file under the data directory, so a fresh machine needs nothing
but a writable folder.
"""

from __future__ import annotations

import contextvars
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

CONFIG_VARIABLE = "SITE_DIRECTOR_SERVER_CONFIG"
ENV_PREFIX = "SITE_DIRECTOR_"


class ServerConfigError(Exception):
    """The configuration file or the settings cannot be used: one line naming the file, the
    key and the reason (the CLI exits 2 with it)."""


_config_file: contextvars.ContextVar[Path | None] = contextvars.ContextVar(
    "server_config_file", default=None
)


class _YamlFile(PydanticBaseSettingsSource):
    """The file given to `load_server_settings`, below the environment and the flags."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = _config_file.get()
        return {} if path is None else read_config_file(path)


def read_config_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ServerConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}:" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ServerConfigError(f"{path}:{where} invalid YAML: {problem}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ServerConfigError(
            f"{path}: the top level must be a mapping, not {type(data).__name__}"
        )
    return data


class ServerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SITE_DIRECTOR_", extra="forbid")

    host: str = Field("127.0.0.1", min_length=1, description="Address uvicorn listens on.")
    port: int = Field(8000, ge=0, le=65535, description="Port uvicorn listens on.")
    workers: int = Field(1, ge=1, le=256, description="uvicorn worker processes.")
    tls_cert: Path | None = Field(None, description="PEM certificate chain: serve HTTPS.")
    tls_key: Path | None = Field(None, description="PEM private key of tls_cert.")
    log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = Field(
        "info", description="uvicorn's log level."
    )
    data_dir: Path = Field(Path("data"), description="Keys and the default SQLite database.")
    db_url: str | None = Field(
        None, description="SQLAlchemy async URL; SQLite under data_dir if unset."
    )
    db_pool_size: int = Field(
        10,
        ge=1,
        le=1000,
        description="MariaDB and PostgreSQL: connections each server process keeps open; as"
        " many again at peak, each opened and closed per request. Not used on SQLite.",
    )
    issuer: str | None = Field(
        None,
        description="`iss` of every token, the public base URL: recorded in the key set when"
        " it is made; a different one later is refused unless the server is told to change it.",
    )
    keys_file: Path | None = Field(
        None,
        description="The signing key set (JWKS with the issuer record); jwks.json in data_dir"
        " if unset. Several hosts point this at one shared file (a deployed secret).",
    )
    key_publication_delay: int = Field(
        3600,
        ge=0,
        description="Seconds a key made by `keys rotate` is in the JWKS before it signs.",
    )
    key_grace: int | None = Field(
        None,
        ge=0,
        description="Seconds a replaced key keeps verifying (and stays in the JWKS) once its"
        " successor signs; unset: the longest lifetime of a token the server signs.",
    )
    vos: list[str] = Field(default_factory=lambda: ["lhcb", "dteam"])
    auto_migrate: bool = Field(True, description="Run the Alembic migrations at start-up.")

    access_token_lifetime: int = Field(1200, ge=10, description="Seconds, user and service tokens.")
    pilot_token_lifetime: int = Field(1200, ge=1, description="Seconds, pilot access tokens.")
    refresh_token_lifetime: int = Field(7 * 24 * 3600, ge=60, description="Seconds.")

    log_max_lines_per_request: int = Field(5000, ge=1)
    log_max_line_bytes: int = Field(16 * 1024, ge=64)
    log_max_bytes_per_pilot: int = Field(64 * 1024 * 1024, ge=1024)
    log_rate_lines_per_minute: int = Field(60_000, ge=1, description="Per pilot.")
    pilot_output_max_bytes: int = Field(
        1024 * 1024,
        ge=1024,
        le=4 * 1024 * 1024,
        description="Per stream of an uploaded pilot output (stdout, stderr, CE log): the tail "
        "is kept.",
    )

    search_timeout: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="Seconds each statement of a search (pilots, summary, logs) may run; past"
        " it the search is stopped and answered 422.",
    )

    maintenance: bool = Field(
        True,
        description="Run the maintenance (`site-director maintenance`) on a schedule inside the"
        " server: one runner across all workers and hosts, elected by a lease in the database.",
    )
    maintenance_interval: float = Field(
        3600.0,
        gt=0,
        description="Seconds between two scheduled maintenance runs; the runner's lease lasts"
        " two intervals, so a dead runner is replaced within three.",
    )
    pilot_retention_days: int = Field(
        30,
        ge=0,
        description="Pilots submitted more than N days ago are deleted, whatever their status"
        " (DIRAC's PilotStatusAgent ClearPilotsDelay, 30); 0 keeps them.",
    )
    aborted_pilot_retention_days: int = Field(
        7,
        ge=0,
        description="Aborted pilots submitted more than N days ago are deleted (DIRAC's"
        " PilotStatusAgent ClearAbortedPilotsDelay, 7); 0 keeps them.",
    )
    log_retention_days: int | None = Field(
        None,
        ge=0,
        description="Log lines received more than N days ago are deleted; unset keeps them as"
        " long as their pilot (the lines of deleted pilots always go). On PostgreSQL whole days"
        " go at once: a day's partition is dropped when all of it is older than N days.",
    )
    log_partition_days_ahead: int = Field(
        7,
        ge=1,
        le=366,
        description="PostgreSQL: each maintenance run makes the daily partitions of the log"
        " table for today and this many days ahead (a line of a day without one lands in the"
        " default partition, which is slower to purge).",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, _YamlFile(settings_cls)

    @field_validator("vos")
    @classmethod
    def _no_empty_vo(cls, vos: list[str]) -> list[str]:
        if any(not vo.strip() for vo in vos):
            raise ValueError("a VO name cannot be empty")
        return vos

    @property
    def database_url(self) -> str:
        if self.db_url:
            return self.db_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'site-director.db').resolve()}"

    @property
    def keyset_path(self) -> Path:
        return self.keys_file if self.keys_file is not None else self.data_dir / "jwks.json"


def load_server_settings(config: Path | None = None, **flags: Any) -> ServerSettings:
    """Settings from the file (`config`, else SITE_DIRECTOR_SERVER_CONFIG when set), the
    environment and the flags, highest last. Raises ServerConfigError with one line: the file
    or the environment variable, the key and the reason of the first problem."""
    if config is None and os.environ.get(CONFIG_VARIABLE):
        config = Path(os.environ[CONFIG_VARIABLE])
    token = _config_file.set(config)
    try:
        return ServerSettings(**flags)
    except ValidationError as exc:
        problem = exc.errors(include_url=False)[0]
        key = ".".join(str(part) for part in problem["loc"]) or "<root>"
        more = len(exc.errors()) - 1
        also = f" (and {more} more)" if more else ""
        raise ServerConfigError(
            f"{_source_of(key, config, flags)}{key}: {problem['msg']}{also}"
        ) from exc
    except SettingsError as exc:  # a list in the environment that is not JSON
        raise ServerConfigError(f"environment: {exc.__cause__ or exc}") from exc
    finally:
        _config_file.reset(token)


def _source_of(key: str, config: Path | None, flags: dict[str, Any]) -> str:
    """Where a refused value came from, highest source first, as the operator wrote it."""
    top = key.split(".")[0]
    if top in flags:
        return ""
    variable = ENV_PREFIX + top.upper()
    if any(name.upper() == variable for name in os.environ):
        return f"environment variable {variable}: "
    return f"{config}: " if config is not None else ""
