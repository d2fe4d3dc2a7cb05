"""Server settings: built once by the CLI (or a test) and passed down; no module globals.

Sources, lowest first: defaults, environment variables `SITE_DIRECTOR_...`, then the CLI's
flags (passed as init arguments). The database defaults to a SQLite file under the data
directory, so a fresh machine needs nothing but a writable folder.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SITE_DIRECTOR_", extra="forbid")

    data_dir: Path = Field(Path("data"), description="Keys and the default SQLite database.")
    db_url: str | None = Field(
        None, description="SQLAlchemy async URL; SQLite under data_dir if unset."
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
        " long as their pilot (the lines of deleted pilots always go).",
    )

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
