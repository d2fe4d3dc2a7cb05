"""Wire models shared by the server and the director's client.

This module imports only Pydantic, so `director/client.py` can use it without pulling in the
server. Field names, aliases and length limits follow DiracX 0.7.0 where DiracX has the
endpoint; `max_length` equals the column size so oversized input is a 422, never a database
error.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator


class PilotStatus(StrEnum):
    SUBMITTED = "Submitted"
    WAITING = "Waiting"
    RUNNING = "Running"
    DONE = "Done"
    FAILED = "Failed"
    DELETED = "Deleted"
    ABORTED = "Aborted"
    UNKNOWN = "Unknown"


#: A pilot in one of these states never changes again (DIRAC's PilotStatus.PILOT_FINAL_STATES).
FINAL_STATUSES: frozenset[PilotStatus] = frozenset(
    {PilotStatus.DONE, PilotStatus.FAILED, PilotStatus.ABORTED, PilotStatus.DELETED}
)

#: A pilot stamp: 1-32 of these characters, the alphabet the director makes its stamps from
#: (32 hex) and DIRAC's (8 hex, or a GUID's hex and dashes). No NUL, space, slash or dot: a
#: stamp ends up in paths, log scopes and the pilot's command line.
STAMP_PATTERN = r"^[A-Za-z0-9_-]{1,32}$"
Stamp = Annotated[str, Field(min_length=1, max_length=32, pattern=STAMP_PATTERN)]
VOName = Annotated[str, Field(min_length=1, max_length=128)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- pilots (DiracX 0.7.0) ------------------------------------------------------------------


class PilotRegistration(_Strict):
    """Body of `POST /api/pilots/` (DiracX `PilotRegistrationParams`)."""

    pilot_stamp: Stamp
    vo: VOName
    grid_type: str = Field("DIRAC", max_length=32)
    grid_site: str = Field("Unknown", max_length=128)
    destination_site: str = Field("NotAssigned", max_length=128)
    pilot_reference: str | None = Field(None, max_length=255)
    pilot_status: PilotStatus = PilotStatus.SUBMITTED


class PilotMetadata(_Strict):
    """One value of the `PATCH /api/pilots/metadata` mapping; absent fields are left alone.

    `PilotJobReference` is our addition: the director learns a pilot's CE reference only after
    it registered the stamp, and patches it on afterwards.
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    status_reason: str | None = Field(None, alias="StatusReason", max_length=255)
    status: PilotStatus | None = Field(None, alias="Status")
    benchmark: float | None = Field(None, alias="BenchMark", allow_inf_nan=False)
    destination_site: str | None = Field(None, alias="DestinationSite", max_length=128)
    queue: str | None = Field(None, alias="Queue", max_length=128)
    grid_site: str | None = Field(None, alias="GridSite", max_length=128)
    grid_type: str | None = Field(None, alias="GridType", max_length=32)
    accounting_sent: bool | None = Field(None, alias="AccountingSent")
    current_job_id: int | None = Field(None, alias="CurrentJobID", ge=0, le=2**63 - 1, strict=True)
    pilot_job_reference: str | None = Field(None, alias="PilotJobReference", max_length=255)


# --- search (DiracX search DSL) ---------------------------------------------------------------


class ScalarOperator(StrEnum):
    EQ = "eq"
    NEQ = "neq"
    GT = "gt"
    LT = "lt"
    LIKE = "like"
    NOT_LIKE = "not like"
    REGEX = "regex"


class VectorOperator(StrEnum):
    IN = "in"
    NOT_IN = "not in"


SearchValue = Annotated[str, Field(max_length=255)] | int | float


class ScalarSearch(_Strict):
    parameter: str = Field(max_length=64)
    operator: ScalarOperator
    value: SearchValue


class VectorSearch(_Strict):
    parameter: str = Field(max_length=64)
    operator: VectorOperator
    values: list[SearchValue] = Field(max_length=10_000)


SearchSpec = ScalarSearch | VectorSearch


class SortSpec(_Strict):
    parameter: str = Field(max_length=64)
    direction: Literal["asc", "desc"] = "asc"


class SearchParams(_Strict):
    parameters: list[str] | None = Field(None, max_length=64)
    search: list[SearchSpec] = Field(default_factory=list, max_length=64)
    sort: list[SortSpec] = Field(default_factory=list, max_length=16)
    distinct: bool = False


class SummaryParams(_Strict):
    grouping: list[str] = Field(max_length=16)
    search: list[SearchSpec] = Field(default_factory=list, max_length=64)


# --- beyond DiracX 0.7.0: bulk registration, deletion, jobs -----------------------------------


class SecretConstraints(_Strict):
    """Constraints on minted secrets; DiracX's draft names. None means unlimited."""

    expiration_minutes: int | None = Field(None, ge=1, le=10 * 365 * 24 * 60)
    pilot_secret_use_count_max: int | None = Field(None, ge=1)
    vos: list[VOName] = Field(default_factory=list, max_length=64)
    sites: list[Annotated[str, Field(max_length=128)]] = Field(
        default_factory=list, max_length=1000
    )
    ces: list[Annotated[str, Field(max_length=128)]] = Field(default_factory=list, max_length=1000)
    queues: list[Annotated[str, Field(max_length=128)]] = Field(
        default_factory=list, max_length=1000
    )


class BulkPilot(_Strict):
    pilot_stamp: Stamp
    grid_type: str = Field("DIRAC", max_length=32)
    grid_site: str = Field("Unknown", max_length=128)
    destination_site: str = Field("NotAssigned", max_length=128)
    queue: str = Field("Unknown", max_length=128)
    pilot_reference: str | None = Field(None, max_length=255)
    pilot_status: PilotStatus = PilotStatus.SUBMITTED


class BulkRegistration(_Strict):
    """Body of `POST /api/pilots/bulk`: all pilots or none, in one transaction.

    With `mint_secrets`, one secret bound to each stamp is minted in the same transaction, with
    `secret_constraints` (the stamp binding and `vo` are implied).
    """

    vo: VOName
    pilots: list[BulkPilot] = Field(min_length=1, max_length=10_000)
    mint_secrets: bool = False
    secret_constraints: SecretConstraints = Field(default_factory=SecretConstraints)


class RegisteredPilot(BaseModel):
    pilot_stamp: str
    pilot_id: int


class MintedSecret(BaseModel):
    pilot_secret: str
    pilot_secret_expires_in: int | None
    pilot_stamp: str | None


class BulkRegistrationResult(BaseModel):
    pilots: list[RegisteredPilot]
    secrets: list[MintedSecret] = Field(default_factory=list)


class PilotDeletion(_Strict):
    """Body of `DELETE /api/pilots/`: by stamps, or by age and status (maintenance)."""

    pilot_stamps: list[Stamp] | None = Field(None, max_length=10_000)
    older_than_days: int | None = Field(None, ge=0)
    statuses: list[PilotStatus] | None = None
    vo: VOName | None = None


class DeletionResult(BaseModel):
    deleted: int


class JobAssociation(_Strict):
    """Body of `PATCH /api/pilots/jobs`: the jobs a pilot has run (DIRAC's JobToPilotMapping)."""

    pilot_stamp: Stamp
    job_ids: list[Annotated[int, Field(ge=1, le=2**63 - 1, strict=True)]] = Field(
        min_length=1, max_length=10_000
    )


class PilotJobs(BaseModel):
    pilot_stamp: str
    job_ids: list[int]


# --- secrets ----------------------------------------------------------------------------------


class SecretMintRequest(SecretConstraints):
    """Body of `POST /api/pilots/secrets`; with `pilot_stamps`, secret i is bound to stamp i."""

    vo: VOName
    n: int | None = Field(None, ge=1, le=10_000)
    pilot_stamps: list[Stamp] = Field(default_factory=list, max_length=10_000)


class SecretInfo(BaseModel):
    """What an admin sees of a secret: never the secret itself."""

    secret_id: int
    vos: list[str]
    pilot_stamps: list[str]
    sites: list[str]
    ces: list[str]
    queues: list[str]
    expires_at: int | None
    remaining_uses: int | None
    created_at: int
    last_used_at: int | None
    revoked: bool


class SecretUpdate(_Strict):
    expiration_minutes: int | None = Field(None, ge=1)
    pilot_secret_use_count_max: int | None = Field(None, ge=0)
    sites: list[Annotated[str, Field(max_length=128)]] | None = None
    ces: list[Annotated[str, Field(max_length=128)]] | None = None
    queues: list[Annotated[str, Field(max_length=128)]] | None = None


class SecretRevocation(_Strict):
    secret_ids: list[int] = Field(default_factory=list, max_length=10_000)
    pilot_stamps: list[Stamp] = Field(default_factory=list, max_length=10_000)


# --- auth -------------------------------------------------------------------------------------


class SecretExchange(_Strict):
    """Body of `POST /api/auth/secret-exchange`; the vacuum fields may be empty strings."""

    pilot_stamp: Stamp
    pilot_secret: str = Field(min_length=1, max_length=128)
    vo: str | None = Field(None, max_length=128)
    grid_type: str | None = Field(None, max_length=32)
    grid_site: str | None = Field(None, max_length=128)
    status: str | None = Field(None, max_length=32)
    ce: str | None = Field(None, max_length=128)
    queue: str | None = Field(None, max_length=128)


class TokenResponse(BaseModel):
    access_token: str
    expires_in: int
    token_type: Literal["Bearer"] = "Bearer"  # noqa: S105 - a scheme name
    refresh_token: str | None = None


class PilotTokenRefresh(_Strict):
    refresh_token: str = Field(min_length=1, max_length=4096)
    pilot_stamp: Stamp


# --- logs -------------------------------------------------------------------------------------


class LogLine(BaseModel):
    model_config = ConfigDict(extra="ignore")

    timestamp: str = Field(max_length=64)
    severity: str = Field(max_length=16)
    message: str
    scope: str = Field("Pilot", max_length=64)


class LogBatch(BaseModel):
    """Body of `POST /api/pilots/internal/message`; `pilot_stamp` is ignored: the token decides."""

    model_config = ConfigDict(extra="ignore")

    lines: list[LogLine] = Field(default_factory=list)
    pilot_stamp: str | None = None


class LegacyLogBatch(BaseModel):
    model_config = ConfigDict(extra="ignore")

    pilot_stamp: Stamp
    lines: list[LogLine] = Field(default_factory=list)


# --- director leases --------------------------------------------------------------------------


class LeaseRequest(_Strict):
    """Body of `POST /api/director/leases`: take or renew the leases on these queues."""

    holder: str = Field(min_length=1, max_length=128)
    queues: list[Annotated[str, Field(min_length=1, max_length=255)]] = Field(max_length=10_000)
    ttl_seconds: int = Field(ge=1, le=24 * 3600)


class LeaseRelease(_Strict):
    holder: str = Field(min_length=1, max_length=128)
    queues: list[Annotated[str, Field(min_length=1, max_length=255)]] = Field(max_length=10_000)


class LeaseGrant(BaseModel):
    granted: list[str]
    refused: list[str]


def drop_none(values: dict[str, Any]) -> dict[str, Any]:
    """The fields a client actually set, for PATCH-style bodies."""
    return {k: v for k, v in values.items() if v is not None}


# --- director queue reports -------------------------------------------------------------------


def _utc(value: datetime) -> datetime:
    """Aware UTC (a naive time is read as UTC), in the range every backend stores."""
    try:
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError as exc:  # 9999-12-31T23:00-05:00 is past year 9999 in UTC
        raise ValueError("time out of range") from exc
    if not 1970 <= value.year <= 9998:
        raise ValueError("time out of range (years 1970-9998)")
    return value


UTCTime = Annotated[datetime, AfterValidator(_utc)]
Count = Annotated[int, Field(ge=0, le=2**31 - 1)]


class QueueReport(_Strict):
    """One queue as its director last saw it: limits from the config, back-off, last cycle."""

    queue_key: str = Field(min_length=1, max_length=384, description="the director's site/ce/queue")
    vo: VOName
    site: str = Field(min_length=1, max_length=128)
    ce: str = Field(min_length=1, max_length=128)
    queue: str = Field(min_length=1, max_length=128, description="the CE-side queue name")
    ce_kind: str = Field(min_length=1, max_length=32)
    max_total_pilots: Count
    max_waiting_pilots: Count
    pilots_per_cycle: Count
    enabled: bool
    failures: Count = 0
    backoff_until: UTCTime | None = None
    last_error: str | None = Field(None, max_length=255)
    last_cycle_at: UTCTime | None = None
    last_submitted: Count | None = None
    last_waiting: Count | None = None
    last_running: Count | None = None
    ended_pilots: Count | None = Field(
        None, description="Done pilots of the recent window the empty ratio is of"
    )
    empty_ratio: float | None = Field(
        None, ge=0.0, le=1.0, description="share of those pilots that ran no job"
    )
    submission_factor: float | None = Field(
        None, ge=0.0, le=1.0, description="what the director scales this queue's submission by"
    )


class QueuesReport(_Strict):
    """Body of `PUT /api/director/queues`: every queue the director serves (the report
    replaces the director's previous one, so a queue left out is no longer served)."""

    queues: list[QueueReport] = Field(max_length=10_000)

    @model_validator(mode="after")
    def _unique_keys(self) -> QueuesReport:
        seen: set[tuple[str, str]] = set()
        for q in self.queues:
            if (q.vo, q.queue_key) in seen:
                raise ValueError(f"queue {q.queue_key!r} of VO {q.vo!r} is reported twice")
            seen.add((q.vo, q.queue_key))
        return self


class QueueEmptyPilots(BaseModel):
    """One queue's Done pilots that ended since a time: how many ran no job (`empty`) and
    how many ran at least one (`with_jobs`). A queue is named as its pilot records name it:
    `site` GridSite, `ce` DestinationSite, `queue` Queue."""

    vo: str
    site: str
    ce: str
    queue: str
    empty: int
    with_jobs: int


# --- bans -------------------------------------------------------------------------------------


def _printable(value: str) -> str:
    """No control characters (a name or reason ends up in logs and HTML), and no blank
    value: leading and trailing spaces are dropped first."""
    value = value.strip()
    if not value:
        raise ValueError("must not be blank")
    if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in value):
        raise ValueError("must not contain control characters")
    return value


#: A site, CE or CE-side queue name as the pilot records and the director's config hold it.
BanName = Annotated[str, Field(min_length=1, max_length=128), AfterValidator(_printable)]


class BanTarget(_Strict):
    """What a ban covers, within one VO: a whole site, one CE of it (`ce`), or one queue of
    that CE (`ce` and `queue`: the CE-side queue name). `vo` defaults to the caller's own."""

    vo: VOName | None = None
    site: BanName
    ce: BanName | None = None
    queue: BanName | None = None

    @model_validator(mode="after")
    def _queue_needs_ce(self) -> BanTarget:
        if self.queue is not None and self.ce is None:
            raise ValueError("a queue ban names its CE too")
        return self

    @property
    def kind(self) -> str:
        return "queue" if self.queue is not None else "ce" if self.ce is not None else "site"


class BanRequest(BanTarget):
    """Body of `POST /api/bans`: the target, why (required), and optionally until when."""

    reason: str = Field(min_length=1, max_length=255)
    until: UTCTime | None = Field(None, description="the ban ends by itself then (UTC)")

    @model_validator(mode="after")
    def _reason_printable(self) -> BanRequest:
        self.reason = _printable(self.reason)
        return self


class Ban(BaseModel):
    """A ban as the API lists it; `active` is false once allowed again or past `until`."""

    ban_id: int
    vo: str
    site: str
    ce: str | None
    queue: str | None
    reason: str
    banned_by: str
    banned_at: datetime
    until: datetime | None
    allowed_by: str | None = None
    allowed_at: datetime | None = None
    active: bool

    def covers(self, site: str, ce: str, queue: str) -> bool:
        """Whether this ban covers the queue `queue` of CE `ce` at site `site`."""
        return (
            self.site == site
            and (self.ce is None or self.ce == ce)
            and (self.queue is None or self.queue == queue)
        )

    @property
    def target(self) -> str:
        return "/".join(p for p in (self.site, self.ce, self.queue) if p is not None)

    @property
    def kind(self) -> str:
        return "queue" if self.queue is not None else "CE" if self.ce is not None else "site"


# --- kills and pilot outputs ------------------------------------------------------------------


class RequestState(StrEnum):
    """Where an operator's request about one pilot stands (a kill, or a fetch of its output).

    `requested` and `in_progress` are open: the director following the pilot picks them up at
    its next monitoring step, and may be told to come back later (`next_attempt_at`). The
    others are final: `done`; `failed` with `last_error` (attempts exhausted, or refused for
    good by the CE); `already_ended` (a kill of a pilot that had ended: nothing to do)."""

    REQUESTED = "requested"
    IN_PROGRESS = "in_progress"
    DONE = "done"
    FAILED = "failed"
    ALREADY_ENDED = "already_ended"


OPEN_REQUEST_STATES: frozenset[RequestState] = frozenset(
    {RequestState.REQUESTED, RequestState.IN_PROGRESS}
)

RequestReason = Annotated[str, Field(min_length=1, max_length=255), AfterValidator(_printable)]


class QueueSelector(_Strict):
    """All live pilots of one queue of a VO, named as the pilot records name it: `site`
    GridSite, `ce` DestinationSite, `queue` Queue (the CE-side queue)."""

    vo: VOName | None = None
    site: BanName
    ce: BanName
    queue: BanName


class KillRequest(_Strict):
    """Body of `POST /api/pilots/kills`: the pilots by stamp, or every live pilot of one
    queue (`queue`), and why (required: the pilot ends Aborted with "killed by <who>: <why>")."""

    pilot_stamps: list[Stamp] | None = Field(None, min_length=1, max_length=10_000)
    queue: QueueSelector | None = None
    reason: RequestReason

    @model_validator(mode="after")
    def _one_selection(self) -> KillRequest:
        if (self.pilot_stamps is None) == (self.queue is None):
            raise ValueError("give pilot_stamps or queue, not both")
        return self


class OutputFetchRequest(_Strict):
    """Body of `POST /api/pilots/output-requests`: fetch these pilots' CE output (any status)."""

    pilot_stamps: list[Stamp] = Field(min_length=1, max_length=1000)
    reason: RequestReason | None = None


class PilotRequest(BaseModel):
    """A stored kill or output-fetch request, with the pilot as the director needs it."""

    request_id: int
    kind: Literal["kill", "output"]
    pilot_stamp: str
    vo: str
    reason: str | None
    requested_by: str
    requested_at: datetime
    state: RequestState
    attempts: int
    last_error: str | None
    next_attempt_at: datetime | None
    updated_at: datetime
    # the pilot as now recorded (None once it was purged)
    pilot_status: str | None = None
    pilot_reference: str | None = None
    grid_type: str | None = None
    site: str | None = None
    ce: str | None = None
    queue: str | None = None


class RequestOutcome(_Strict):
    """What a director did about one request: `in_progress` (started; nothing else changes),
    `done`, `already_ended` (the CE no longer runs the pilot), `retry` (a temporary failure:
    the server sets the next attempt time, and fails the request after too many attempts)
    or `failed` (for good), with `error` saying why for the last two."""

    request_id: int = Field(ge=1)
    outcome: Literal["in_progress", "done", "already_ended", "retry", "failed"]
    error: str | None = Field(None, max_length=255)


class RequestOutcomes(_Strict):
    """Body of `PATCH /api/pilots/kills` and `PATCH /api/pilots/output-requests`."""

    outcomes: list[RequestOutcome] = Field(min_length=1, max_length=1000)


#: The largest stream an upload may carry (characters); the server keeps at most its
#: `pilot_output_max_bytes` of each, the tail.
MAX_OUTPUT_CHARS = 4 * 1024 * 1024


class PilotOutputUpload(_Strict):
    """Body of `PUT /api/pilots/output`: one pilot's CE output as its director fetched it
    (secrets redacted and each stream cut to its tail by the server too), or, when the CE no
    longer has it, `not_available` with the reason and no stream."""

    pilot_stamp: Stamp
    std_output: str | None = Field(None, max_length=MAX_OUTPUT_CHARS)
    std_error: str | None = Field(None, max_length=MAX_OUTPUT_CHARS)
    ce_log: str | None = Field(None, max_length=MAX_OUTPUT_CHARS)
    not_available: RequestReason | None = None

    @model_validator(mode="after")
    def _output_or_reason(self) -> PilotOutputUpload:
        streams = (self.std_output, self.std_error, self.ce_log)
        if self.not_available is not None and any(s is not None for s in streams):
            raise ValueError("not_available carries no output")
        if self.not_available is None and all(s is None for s in streams):
            raise ValueError("give at least one stream, or not_available with the reason")
        return self


class PilotOutput(BaseModel):
    """A pilot's stored CE output (DiracX's PilotOutput: StdOutput, StdError; plus the CE's
    own log), or the reason it is not available; `truncated` when a stream was cut (its
    tail kept)."""

    pilot_stamp: str
    vo: str
    std_output: str | None
    std_error: str | None
    ce_log: str | None
    not_available: str | None
    truncated: bool
    uploaded_by: str
    uploaded_at: datetime


# --- errors -----------------------------------------------------------------------------------


class StampsDetail(BaseModel):
    """The detail of an error naming pilot stamps (unknown, duplicated, already registered)."""

    message: str
    pilot_stamps: list[str]


class HTTPError(BaseModel):
    """The body of every error answer but a 422: DiracX's `{"detail": ...}`."""

    detail: str | StampsDetail
