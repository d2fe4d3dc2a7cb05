"""The director's settings: YAML file < environment (`SITE_DIRECTOR_...`) < command-line flags.

Layout (see `config.example.yaml` for every key, commented):

    server:    url, ca_bundle, token_file (reread when it changes), timeout_seconds
    director:  name, work_dir, template_dir, intervals, concurrency, back-off, leases, demand,
               DiracX resource status, empty pilots, grace and timeout periods, metrics
    vos:       the VOs this director submits for (the first is the default of every site)
    pilot:     pilot options for every queue (setup, release, project, extensions, pilot
               files with SHA-512 sums or a manifest, CVMFS locations, extra options); queues
               may override
    sites:     {site: {enabled, vo, ces: {ce: {enabled, ce: {kind: ...}, queues: {queue: {...}}}}}}

A CE's `ce` block is a union keyed on `kind` over the backends `director.ce` knows, so a typo is
reported with its key path at load time. `load_config()` turns every validation problem into
one line `key.path: reason` of a single `ConfigError` (exit code 2).

Environment variables nest with `__`: `SITE_DIRECTOR_SERVER__URL`,
`SITE_DIRECTOR_DIRECTOR__CONCURRENCY`. Flags arrive as a nested dict of overrides.
"""

from __future__ import annotations

import contextvars
import functools
import os
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from director import ce as ce_registry
from director.empty_pilots import EmptyPilotPolicy
from director.errors import ConfigError
from director.sharing import Sharer

if TYPE_CHECKING:
    CEBlock = Any
else:
    CEBlock = ce_registry.config_union()

ENV_PREFIX = "SITE_DIRECTOR_"

Name = Annotated[str, Field(min_length=1, max_length=128)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerConfig(_Model):
    """Where the pilot/auth server is and how the director authenticates to it."""

    url: AnyHttpUrl = Field(description="base URL of the site-director server (or DiracX)")
    ca_bundle: Path | None = Field(None, description="PEM CA bundle; default: system CAs")
    token_file: Path | None = Field(None, description="the director's TrustedHost token")
    token: SecretStr | None = Field(None, description="the token itself (prefer token_file)")
    timeout_seconds: float = Field(30.0, gt=0, le=600)


class BackoffConfig(_Model):
    initial_seconds: float = Field(60.0, gt=0)
    max_seconds: float = Field(3600.0, gt=0)
    factor: float = Field(2.0, ge=1.0)


class FillDemand(_Model):
    """Always fill the free slots."""

    source: Literal["fill"] = "fill"


class DiracXDemand(_Model):
    """Waiting jobs of the site from a DiracX job service (`POST /api/jobs/summary`)."""

    source: Literal["diracx"]
    url: AnyHttpUrl = Field(description="base URL of the DiracX instance")
    token_file: Path | None = Field(None, description="default: the server token")
    ca_bundle: Path | None = None
    include_any_site: bool = Field(
        False, description="count jobs whose Site is ANY as demand at every site"
    )


class TaskQueueDemand(_Model):
    """Waiting jobs whose DIRAC task queue the queue can serve, read from DIRAC's TaskQueueDB
    once per cycle and matched as DIRAC's Matcher does (`director.taskqueues`, docs/demand.md)."""

    source: Literal["taskqueues"]
    url: SecretStr = Field(
        description="SQLAlchemy async URL of the TaskQueueDB, read-only account: "
        "mysql+asyncmy://reader:password@dirac-db.example.org:3306/TaskQueueDB"
    )
    timeout_seconds: float = Field(30.0, gt=0, le=600, description="reading the task queues")
    platforms: dict[str, list[str]] = Field(
        default_factory=dict,
        description="a queue platform -> the job platforms it runs too (DIRAC OSCompatibility)",
    )


Demand = Annotated[FillDemand | DiracXDemand | TaskQueueDemand, Field(discriminator="source")]


class ResourceStatusConfig(_Model):
    """DiracX's resource status as a second ban list: `GET /api/rss/site` and
    `GET /api/rss/compute`, read once per submission cycle next to the server's bans
    (`director.resource_status`, docs/operations.md)."""

    url: AnyHttpUrl = Field(description="base URL of the DiracX instance")
    ca_bundle: Path | None = Field(None, description="PEM CA bundle; default: system CAs")
    token_file: Path | None = Field(
        None, description="the director's DiracX token (any VO member); default: the server token"
    )
    timeout_seconds: float = Field(30.0, gt=0, le=600)
    unlisted: Literal["submit", "skip"] = Field(
        "submit",
        description="a site or CE the resource status does not list: submit (no opinion) or "
        "skip (as DIRAC's SiteDirector, which submits only to listed Active/Degraded ones)",
    )


class SecretConfig(_Model):
    """Constraints on the secret minted for each pilot (bound to its stamp in any case)."""

    expiration_minutes: int | None = Field(
        3 * 24 * 60, ge=1, description="null: no expiry (not recommended)"
    )
    use_count_max: int | None = Field(None, ge=1, description="null: unlimited uses")


class PilotOutputConfig(_Model):
    """Pilots' CE output, fetched when a pilot ends Failed or Aborted and on an operator's
    request, uploaded to the server before the pilot is cleaned from the CE."""

    max_bytes: int = Field(
        1024 * 1024, ge=1024, le=4 * 1024 * 1024, description="per stream, its tail kept"
    )
    attempts: int = Field(
        3, ge=1, le=100, description="monitoring cycles that try a failed pilot's output"
    )


class DirectorConfig(_Model):
    name: str = Field(
        default_factory=socket.gethostname,
        min_length=1,
        max_length=128,
        description="this instance's lease holder name (default: the host name)",
    )
    work_dir: Path = Path("/var/lib/site-director")
    template_dir: Path | None = Field(None, description="templates here override the packaged ones")
    submission_interval_seconds: float = Field(120.0, gt=0)
    monitoring_interval_seconds: float = Field(300.0, gt=0)
    concurrency: int = Field(8, ge=1, le=1024, description="queues handled at once")
    queue_timeout_seconds: float = Field(300.0, gt=0, description="one queue's cycle at most")
    group_pilots: int = Field(
        10_000,
        ge=1,
        description="a cycle registers, submits and records its pilots per group of at most "
        "this many (whole queues; one queue is capped at it): bounds the director's memory",
    )
    shutdown_timeout_seconds: float = Field(30.0, gt=0)
    backoff: BackoffConfig = Field(default_factory=BackoffConfig)
    demand: Demand = Field(default_factory=FillDemand)
    secret: SecretConfig = Field(default_factory=SecretConfig)
    resource_status: ResourceStatusConfig | None = Field(
        None, description="DiracX's resource status as a second ban list; null: off"
    )
    empty_pilots: EmptyPilotPolicy = Field(
        default_factory=EmptyPilotPolicy,
        description="fewer pilots to queues whose recent pilots ran no job; enabled: false: off",
    )
    leases: bool = Field(True, description="take per-queue leases from the server (HA)")
    lease_ttl_seconds: int = Field(600, ge=10, le=24 * 3600)
    submit_grace_seconds: float = Field(
        600.0, gt=0, description="registered pilots missing on the CE after this are Aborted"
    )
    unknown_timeout_seconds: float = Field(3600.0, gt=0)
    held_timeout_seconds: float = Field(3600.0, gt=0)
    clean_finished: bool = Field(True, description="remove CE leftovers of ended pilots")
    pilot_output: PilotOutputConfig = Field(default_factory=PilotOutputConfig)
    metrics_port: int | None = Field(None, ge=0, le=65535, description="Prometheus; null: off")
    metrics_host: str = "127.0.0.1"
    log_format: Literal["keyvalue", "json"] = "keyvalue"


class PilotFile(_Model):
    """A file the pilot needs. Embedded in the wrapper when `path` or `template` names a local
    copy; otherwise downloaded on the worker node from `pilot.locations` and checked against
    `sha512` (then required, unless `pilot.manifest` lists the file)."""

    name: str = Field(min_length=1, max_length=255, pattern=r"^[^/\\]+$")
    sha512: str | None = Field(None, pattern=r"^[0-9a-fA-F]{128}$")
    path: Path | None = Field(None, description="embed this local file")
    template: str | None = Field(None, description="embed this file of the template folders")

    @model_validator(mode="after")
    def _source(self) -> PilotFile:
        if self.path is not None and self.template is not None:
            raise ValueError("give path or template, not both")
        return self


class PilotOptions(_Model):
    """Options for the DIRAC pilot; a queue's `pilot` block overrides these key by key."""

    setup: str | None = Field(None, description="-S")
    installation: str | None = Field(
        None, description="refused: the stock DIRAC pilot has no -V option (see `release`)"
    )
    release: str | None = Field(None, description="-r: DIRAC release; default pilot.json's")
    project: str | None = Field(None, description="-l")
    extensions: list[str] | None = Field(None, description="-e")
    wn_vo: str | None = Field(None, description="--wnVO; default: the site's VO")
    pilot_script: str | None = Field(None, description="default: dirac-pilot.py")
    files: list[PilotFile] | None = Field(None, description="pilot files with SHA-512 sums")
    manifest: str | None = Field(
        None,
        description="where DIRAC's PilotSyncAgent publishes the pilot files, pilot.json and "
        "checksums.sha512 (https:// or file: URL, or a path): the sums come from there",
    )
    locations: list[str] | None = Field(None, description="https:// or file: URLs, or paths")
    cvmfs_locations: list[str] | None = Field(None, description="tried before `locations`")
    extra_options: list[str] | None = None
    diracx_url: str | None = Field(None, description="URL pilots call; default: server.url")
    diracx_url_option: str | None = None
    stamp_option: str | None = None
    token_file_option: str | None = None
    secret_option: str | None = Field(
        None, description="e.g. --pilotSecret: the pilot gets the secret (docs/wrapper.md)"
    )
    ca_file: Path | None = Field(None, description="CA PEM embedded; default server.ca_bundle")
    ca_path: str | None = Field(None, description="CA file/dir on the worker node instead")
    python_commands: list[str] | None = None
    work_dir_base: str | None = None
    environment: dict[str, str] | None = Field(None, description="added for the pilot")

    @model_validator(mode="after")
    def _sums(self) -> PilotOptions:
        if self.manifest is None:
            for i, item in enumerate(self.files or []):
                if item.path is None and item.template is None and item.sha512 is None:
                    raise ValueError(
                        f"files.{i}: sha512 is required for a downloaded file "
                        "(or a pilot.manifest that lists it)"
                    )
        return self

    @field_validator("installation")
    @classmethod
    def _no_installation(cls, value: str | None) -> str | None:
        if value is not None:
            raise ValueError(
                "the DIRAC pilot has no -V (installation) option any more and stops at it; "
                "remove the key (pilot.json names the installation; `release` gives -r)"
            )
        return value

    def merged(self, override: PilotOptions | None) -> PilotOptions:
        if override is None:
            return self
        values = self.model_dump(exclude_unset=True)
        values.update(override.model_dump(exclude_unset=True))
        return PilotOptions.model_validate(values)


class VOOverrides(_Model):
    """What one VO of a queue shared by several VOs sets differently: its limits and the jobs
    its demand counts (docs/operations.md, "Queues shared by several VOs")."""

    max_total_pilots: int | None = Field(None, ge=0)
    max_waiting_pilots: int | None = Field(None, ge=0)
    pilots_per_cycle: int | None = Field(None, ge=0)
    owner_group: str | None = None
    job_types: list[str] | None = None
    required_tags: list[str] | None = None


class QueueConfig(_Model):
    enabled: bool = True
    vos: list[Name] | None = Field(
        None, description="the VOs this queue serves; default: its CE's, else its site's"
    )
    per_vo: dict[Name, VOOverrides] = Field(
        default_factory=dict, description="limits and demand keys of one of `vos`"
    )
    ce_queue: str | None = Field(None, description="CE-side queue name; default: the key")
    max_total_pilots: int = Field(10, ge=0, description="DIRAC MaxTotalJobs")
    max_waiting_pilots: int = Field(5, ge=0, description="DIRAC MaxWaitingJobs")
    pilots_per_cycle: int = Field(5, ge=0, description="at most this many per cycle")
    processors: int = Field(1, ge=1, le=4096)
    memory_mb: int | None = Field(None, ge=1)
    max_runtime_s: int | None = Field(None, ge=1)
    tags: list[str] = Field(default_factory=list)
    required_tags: list[str] = Field(
        default_factory=list, description="DIRAC RequiredTag: only jobs with all of these tags"
    )
    platform: str | None = None
    cpu_time: int | None = Field(
        None, ge=1, description="DIRAC CPUTime (normalized CPU s); default max_runtime_s"
    )
    job_types: list[str] = Field(
        default_factory=list, description="DIRAC JobType: only these job types; empty: any"
    )
    owner_group: str | None = Field(None, description="only jobs of this DIRAC group")
    environment: dict[str, str] = Field(default_factory=dict)
    extra_attributes: dict[str, str] = Field(default_factory=dict)
    pilot: PilotOptions | None = None

    def for_vo(self, vo: str) -> QueueConfig:
        """The queue as `vo` works it: with that VO's `per_vo` overrides."""
        override = self.per_vo.get(vo)
        if override is None:
            return self
        return self.model_copy(update=override.model_dump(exclude_none=True))

    @field_validator("environment")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not key.replace("_", "a").isalnum() or key[0].isdigit():
                raise ValueError(f"{key!r} is not a valid environment variable name")
        return value


class CEEntry(_Model):
    enabled: bool = True
    vos: list[Name] | None = Field(None, description="default VOs of its queues")
    ce: CEBlock = Field(description="the backend block, keyed on kind")
    queues: dict[Name, QueueConfig] = Field(min_length=1)


class SiteConfig(_Model):
    enabled: bool = True
    vo: str | None = Field(None, description="default: the first of `vos`")
    vos: list[Name] | None = Field(None, description="default VOs of its queues, instead of vo")
    ces: dict[Name, CEEntry] = Field(min_length=1)


_yaml_path: contextvars.ContextVar[Path | None] = contextvars.ContextVar("yaml_path", default=None)


class _YamlSource(PydanticBaseSettingsSource):
    """The YAML file named to `load_config`, the lowest of the sources."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = _yaml_path.get()
        if path is None:
            return {}
        return _read_yaml(path)


class Settings(BaseSettings):
    """All of the director's configuration; built once in the CLI and passed down."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        nested_model_default_partial_update=True,
    )

    server: ServerConfig
    director: DirectorConfig = Field(default_factory=DirectorConfig)
    vos: list[Name] = Field(min_length=1)
    pilot: PilotOptions = Field(default_factory=PilotOptions)
    sites: dict[Name, SiteConfig] = Field(default_factory=dict)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _YamlSource(settings_cls))

    @model_validator(mode="after")
    def _share_alike(self) -> Settings:
        """Queues configured alike share one model, and CEs one backend block
        (`director.sharing`): the settings live as long as the director."""
        sharer = Sharer()
        for site in self.sites.values():
            for entry in site.ces.values():
                entry.__dict__["ce"] = sharer.share(entry.ce)
                for name, queue in entry.queues.items():
                    entry.queues[name] = sharer.share(queue)
        return self

    def queues(self) -> Iterator[QueueRef]:
        """Every configured queue, enabled or not, in config order; a queue serving several
        VOs once per VO, in the order of its `vos` (`QueueRef.key` tells them apart)."""
        for site_name, site in self.sites.items():
            site_vos = site.vos or [site.vo or self.vos[0]]
            for ce_name, entry in site.ces.items():
                for queue_name, queue in entry.queues.items():
                    vos = tuple(dict.fromkeys(queue.vos or entry.vos or site_vos))
                    for vo in vos:
                        yield QueueRef(
                            site=site_name,
                            ce=ce_name,
                            queue=queue_name,
                            vo=vo,
                            config=queue.for_vo(vo),
                            entry=entry,
                            enabled=site.enabled and entry.enabled and queue.enabled,
                            pilot=self.pilot.merged(queue.pilot),
                            vos=vos,
                        )


@dataclass(frozen=True)
class QueueRef:
    """One queue with what it inherits from its site and CE."""

    site: str
    ce: str
    queue: str
    vo: str
    config: QueueConfig
    entry: CEEntry
    enabled: bool
    pilot: PilotOptions
    vos: tuple[str, ...] = ()
    """Every VO the CE queue serves (this entry's among them); empty: only `vo`."""

    @property
    def shared(self) -> bool:
        """Whether other VOs' entries submit to the same CE queue."""
        return len(self.vos) > 1

    @functools.cached_property
    def key(self) -> str:
        """`site/ce/queue`, or `vo/site/ce/queue` for one VO of a queue shared by several:
        the entry's name in logs, metrics, back-off, reports and leases. Made once: it keys
        a dozen dictionaries per queue, which then share one string."""
        name = f"{self.site}/{self.ce}/{self.queue}"
        return f"{self.vo}/{name}" if self.shared else name

    def share(self, free_slots: int) -> int:
        """This VO's part of free slots the CE reports for the whole CE queue: an equal part,
        the remainder to the first VOs of `vos`."""
        if not self.shared:
            return free_slots
        parts, rest = divmod(max(free_slots, 0), len(self.vos))
        return parts + (1 if self.vos.index(self.vo) < rest else 0)

    @property
    def ce_queue(self) -> str:
        return self.config.ce_queue if self.config.ce_queue is not None else self.queue


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}:{where}: invalid YAML: {problem}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, not {type(data).__name__}")
    return data


_UNION_TAGS = {"ce": set(ce_registry.BACKENDS), "demand": {"fill", "diracx", "taskqueues"}}


def _key_path(loc: tuple[int | str, ...]) -> str:
    """The key path as the operator wrote it: without the union tags Pydantic inserts."""
    parts: list[str] = []
    for part in loc:
        if parts and str(part) in _UNION_TAGS.get(parts[-1], ()):
            continue
        parts.append(str(part))
    return ".".join(parts) or "<root>"


def _env_variable(path: str) -> str | None:
    """The environment variable that set this key path (or one of its parents), if one did:
    `director.concurrency` <- `SITE_DIRECTOR_DIRECTOR__CONCURRENCY` or `SITE_DIRECTOR_DIRECTOR`
    (pydantic-settings matches names without regard to case)."""
    names = {name.upper(): name for name in os.environ if name.upper().startswith(ENV_PREFIX)}
    parts = path.split(".")
    for end in range(len(parts), 0, -1):
        name = names.get((ENV_PREFIX + "__".join(parts[:end])).upper())
        if name is not None:
            return name
    return None


def _problem_lines(error: ValidationError) -> list[str]:
    lines = []
    for problem in error.errors(include_url=False):
        path = _key_path(problem["loc"])
        variable = _env_variable(path)
        source = f" (environment variable {variable})" if variable else ""
        lines.append(f"{path}{source}: {problem['msg']}")
    return lines


def _semantic_problems(settings: Settings) -> list[str]:
    """What the types cannot say: cross-references between keys."""
    problems = []
    for site_name, site in settings.sites.items():
        if site.vo is not None and site.vo not in settings.vos:
            problems.append(f"sites.{site_name}.vo: {site.vo!r} is not one of vos {settings.vos}")
        if site.vo is not None and site.vos is not None:
            problems.append(f"sites.{site_name}.vos: give vo or vos, not both")
        problems.extend(_vo_problems(f"sites.{site_name}", site.vos, settings.vos))
        for ce_name, entry in site.ces.items():
            where = f"sites.{site_name}.ces.{ce_name}"
            problems.extend(_vo_problems(where, entry.vos, settings.vos))
            for queue_name, queue in entry.queues.items():
                vos = queue.vos
                problems.extend(_vo_problems(f"{where}.queues.{queue_name}", vos, settings.vos))
                served = queue.vos or entry.vos or site.vos or [site.vo or settings.vos[0]]
                for vo in queue.per_vo:
                    if vo not in served:
                        problems.append(
                            f"{where}.queues.{queue_name}.per_vo.{vo}: the queue does not serve "
                            f"{vo!r} (its VOs: {served})"
                        )
    for ref in settings.queues():
        limits = ref.config
        if limits.max_waiting_pilots > limits.max_total_pilots:
            where = "" if limits is ref.entry.queues[ref.queue] else f"per_vo.{ref.vo}."
            problem = (
                f"sites.{ref.site}.ces.{ref.ce}.queues.{ref.queue}.{where}"
                "max_waiting_pilots: larger than max_total_pilots"
            )
            if problem not in problems:  # once, not once per VO of the queue
                problems.append(problem)
    if settings.server.token_file is None and settings.server.token is None:
        problems.append("server.token_file: required (or server.token)")
    backoff = settings.director.backoff
    if backoff.initial_seconds > backoff.max_seconds:
        problems.append("director.backoff.initial_seconds: larger than max_seconds")
    return problems


def _vo_problems(where: str, vos: list[str] | None, known: list[str]) -> list[str]:
    """A `vos` list that is empty or names a VO the director does not submit for."""
    if vos is None:
        return []
    if not vos:
        return [f"{where}.vos: at least one VO"]
    return [f"{where}.vos: {vo!r} is not one of vos {known}" for vo in vos if vo not in known]


def load_config(
    path: Path | None,
    overrides: Mapping[str, Any] | None = None,
    *,
    require_token: bool = True,
) -> Settings:
    """Settings from the YAML file, the environment and flag overrides (highest last).

    Raises ConfigError with one line per problem, each naming the key path and the reason.
    `require_token=False` serves the dry run, which never calls the server.
    """
    token = _yaml_path.set(path)
    try:
        settings = Settings(**dict(overrides or {}))
    except ValidationError as exc:
        raise ConfigError(_report(path, _problem_lines(exc))) from exc
    except SettingsError as exc:  # a variable holding a section that is not valid JSON
        field = str(exc).split('"')[1] if str(exc).count('"') >= 2 else ""
        variable = _env_variable(field) if field else None
        where = f"environment variable {variable}" if variable else "environment"
        raise ConfigError(f"{where}: {exc.__cause__ or exc}") from exc
    finally:
        _yaml_path.reset(token)
    problems = _semantic_problems(settings)
    if not require_token:
        problems = [p for p in problems if not p.startswith("server.token_file")]
    if problems:
        raise ConfigError(_report(path, problems))
    return settings


def _report(path: Path | None, problems: list[str]) -> str:
    prefix = f"{path}: " if path is not None else ""
    return "\n".join(prefix + p for p in problems)


def nested_override(dotted: str, value: Any) -> dict[str, Any]:
    """`("director.work_dir", v)` -> `{"director": {"work_dir": v}}`, for flag overrides."""
    result: dict[str, Any] = {}
    node = result
    *parents, last = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return result


def merge(*dicts: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge, later wins: to combine several flag overrides."""
    out: dict[str, Any] = {}
    for d in dicts:
        for key, value in d.items():
            if isinstance(value, Mapping) and isinstance(out.get(key), dict):
                out[key] = merge(out[key], value)
            else:
                out[key] = value
    return out
