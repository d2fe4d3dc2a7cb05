"""The server's side of a submission cycle, in bulk across queues: phase 2 registers every
planned pilot and mints its bound secret before anything is submitted; phase 4 records what
the CEs answered (references patched on, failed pilots Aborted after their secrets are
revoked) and counts each queue's submissions. Both run per group of whole queues of at most
`director.group_pilots` pilots (`group_batches`), which bounds the director's memory."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pydantic import TypeAdapter

from director.batching import chunks
from director.ce.base import ComputingElement, QueueSpec, SubmitResult
from director.config import QueueRef
from director.cycle.context import CycleContext
from director.cycle.outcomes import QueueOutcome, log_unexpected
from director.cycle.queues import GRID_TYPES
from director.wrapper import PreparedWrapper
from server.models import (
    STAMP_PATTERN,
    BulkPilot,
    BulkRegistration,
    PilotStatus,
    SecretConstraints,
)

_BULK: TypeAdapter[BulkRegistration] = TypeAdapter(BulkRegistration)
_BULK_PILOT: TypeAdapter[BulkPilot] = TypeAdapter(BulkPilot)
_STAMP = re.compile(STAMP_PATTERN)
MAX_TEXT = 255
"""`PilotMetadata`'s limit on a reference or a status reason."""

BULK_MAX = 10_000
"""Pilots per registration, revocation or PATCH call (the server takes 10,000 at most)."""


@dataclass(eq=False, slots=True)
class Batch:
    """One queue's pilots on their way through phases 2-4 of a submission cycle."""

    ref: QueueRef
    outcome: QueueOutcome
    ce: ComputingElement
    spec: QueueSpec
    prepared: PreparedWrapper
    n: int
    """The pilots planned (phase 1); their stamps are made when the group starts (`stamp`)."""
    stamps: list[str] = field(default_factory=list)
    registered: list[str] = field(default_factory=list)
    """The stamps the server registered (all of them, unless a registration call failed)."""
    secrets: dict[str, str] = field(default_factory=dict, repr=False)
    """Stamp -> minted secret, from phase 2 until the wrappers are rendered."""
    submitting: bool = False
    """The CE call started: from then on, only the CE knows which pilots it holds."""
    results: list[SubmitResult] | None = None
    record_failure: str | None = None

    def stamp(self, new_stamp: Callable[[], str]) -> None:
        """The batch's `n` stamps, made when its group starts rather than when it is planned:
        a cycle plans every queue before its first group registers, and 100,000 stamps held
        from the start were ~9 MB of the director's peak."""
        self.stamps = [new_stamp() for _ in range(self.n)]

    def fail(self, error: str) -> None:
        if self.outcome.error is None:
            self.outcome.error = self.outcome.why = error

    def record_error(self, error: str) -> None:
        if self.record_failure is None:
            self.record_failure = error


def form_groups(sizes: Sequence[int], limit: int) -> list[list[int]]:
    """The groups of a cycle's phases 2-4: the indices of the planned queues, in order, cut so
    that a group holds at most `limit` pilots (`director.group_pilots`). A queue is never split:
    one that plans more than `limit` on its own counts as `limit` (`group_batches` caps it) and
    fills a group of its own; a queue planning none takes no place."""
    groups: list[list[int]] = []
    current: list[int] = []
    total = 0
    for index, size in enumerate(sizes):
        size = min(size, limit)
        if current and total + size > limit:
            groups.append(current)
            current, total = [], 0
        current.append(index)
        total += size
    if current:
        groups.append(current)
    return groups


def group_batches(batches: Sequence[Batch], limit: int) -> list[list[Batch]]:
    """`form_groups` over the planned batches; a queue that planned more than `limit` pilots
    submits `limit` this cycle (its `n` and `why` say so) and the rest in the next ones."""
    for batch in batches:
        if batch.n > limit:
            batch.n = limit
            batch.outcome.n = limit
            batch.outcome.why = f"{batch.outcome.why}; capped at director.group_pilots {limit}"
    return [
        [batches[index] for index in group]
        for group in form_groups([batch.n for batch in batches], limit)
    ]


@dataclass(frozen=True, slots=True)
class _Row:
    """One pilot of phase 4: its reference, or the reason it is Aborted."""

    batch: Batch
    stamp: str
    reference: str | None
    reason: str | None


def _stamp_json(stamp: str) -> bytes:
    """A stamp as a JSON string, written without an encoder: one that is not a stamp (whose
    characters never need escaping) raises. The stamps are the director's own (`new_stamp`)."""
    if not _STAMP.fullmatch(stamp):
        raise ValueError(f"pilot stamp {stamp!r}: 1-32 of [A-Za-z0-9_-] expected")
    return b'"' + stamp.encode() + b'"'


def registration_body(
    vo: str, pilots: Sequence[tuple[Batch, str]], constraints: SecretConstraints
) -> bytes:
    """The JSON of a `BulkRegistration` minting a secret for each pilot, made without a model
    per pilot: every field but the stamp is the queue's, so each queue's fields are checked
    (by `BulkPilot`) and serialised once, and each pilot adds its stamp to them. 10,000 pilot
    models, and the dicts they were made from, were ~8 MB of the director's peak per group in
    flight. The stamps are the director's own (`new_stamp`); one that is not a stamp raises."""
    if not pilots:
        raise ValueError("a registration needs at least one pilot")
    if len(pilots) > BULK_MAX:
        raise ValueError(f"{len(pilots)} pilots: a registration takes at most {BULK_MAX}")
    head = BulkRegistration.model_validate(
        {"vo": vo, "pilots": [{"pilot_stamp": pilots[0][1]}], "mint_secrets": True,
         "secret_constraints": constraints}
    )  # fmt: skip
    # one join over the pieces: no copy of the whole but the result
    parts = [_BULK.dump_json(head, exclude={"pilots"})[:-1], b',"pilots":[']
    fields: dict[int, bytes] = {}
    for batch, stamp in pilots:
        quoted = _stamp_json(stamp)  # checked before the queue's fields
        rest = fields.get(id(batch))
        if rest is None:
            pilot = BulkPilot(
                pilot_stamp=stamp,
                grid_type=GRID_TYPES.get(batch.outcome.kind, batch.outcome.kind),
                grid_site=batch.ref.site,
                destination_site=batch.ref.ce,
                queue=batch.ref.ce_queue,
            )
            rest = fields[id(batch)] = _BULK_PILOT.dump_json(pilot, exclude={"pilot_stamp"})[1:]
        parts += (b'{"pilot_stamp":%s,%s' % (quoted, rest), b",")
    parts[-1] = b"]}"
    return b"".join(parts)


async def register(context: CycleContext, batches: Sequence[Batch]) -> None:
    """Phase 2: register every planned pilot and mint its secret, one call per VO and secret
    use count (per `BULK_MAX` pilots). A failed call fails the queues it carried; the others
    go on."""
    client = context.server()
    cfg = context.settings.director.secret
    # one call per VO and use count (a queue that hands the secret to the pilot needs more)
    by_vo: dict[tuple[str, int | None], list[tuple[Batch, str]]] = {}
    for batch in batches:
        uses = batch.prepared.secret_uses(cfg.use_count_max)
        by_vo.setdefault((batch.ref.vo, uses), []).extend((batch, stamp) for stamp in batch.stamps)
    for (vo, uses), pilots in by_vo.items():
        constraints = SecretConstraints(
            expiration_minutes=cfg.expiration_minutes, pilot_secret_use_count_max=uses
        )
        for chunk in chunks(pilots, BULK_MAX):  # the models of one chunk at a time
            try:
                body = registration_body(vo, chunk, constraints)
                secret_of = await client.register_bulk(body)
                del body
            except Exception as exc:
                log_unexpected(exc, "registration")
                for batch, _ in chunk:
                    batch.fail(f"{type(exc).__name__}: {exc}")
                continue
            for batch, stamp in chunk:
                batch.registered.append(stamp)
                secret = secret_of.get(stamp)
                if secret is None:
                    batch.fail(f"ServerError: the server minted no secret for pilot {stamp}")
                else:
                    batch.secrets[stamp] = secret
            del secret_of


def record_body(rows: Sequence[_Row]) -> bytes:
    """The JSON of phase 4's `PATCH /api/pilots/metadata`: each pilot's CE reference, or
    Aborted with its reason. Written a pilot at a time, with the limits of `PilotMetadata`
    (255 characters): 10,000 models at once were ~6 MB of the director's peak per group. A
    value over the limit raises, as the model did, and fails the chunk's queues."""
    parts: list[bytes] = [b"{"]
    for row in rows:
        if row.reason is None:
            value = {"PilotJobReference": row.reference}
        else:
            value = {"Status": PilotStatus.ABORTED.value, "StatusReason": row.reason}
        for name, text in value.items():
            if text is not None and len(text) > MAX_TEXT:
                raise ValueError(f"pilot {row.stamp}: {name} over {MAX_TEXT} characters")
        parts += (b"%s:%s" % (_stamp_json(row.stamp), json.dumps(value).encode()), b",")
    if len(parts) == 1:
        return b"{}"
    parts[-1] = b"}"
    return b"".join(parts)


async def record(context: CycleContext, batches: Sequence[Batch]) -> None:
    """Phase 4: references patched on, failed pilots Aborted with their reason, their secrets
    revoked, all queues at once (per `BULK_MAX` pilots); then each queue's counts.

    Pilots registered for a queue that failed before its CE call are Aborted too; a queue that
    failed during its CE call (a timeout) is left to the next reconciliation, which finds out
    from the CE what it holds. Secrets are revoked before the Aborted status is patched on, so
    a pilot the server shows as Aborted never keeps a usable secret."""
    client = context.server()
    # the models are made one chunk at a time: 100,000 of them at once would be the
    # director's largest allocation
    rows: list[_Row] = []
    for batch in batches:
        if batch.results is not None:
            for result in batch.results:
                if result.ok:
                    rows.append(_Row(batch, result.stamp, result.reference, None))
                else:
                    reason = (result.error or "submission failed")[:255]
                    rows.append(_Row(batch, result.stamp, None, reason))
        elif not batch.submitting:
            reason = f"not submitted: {batch.outcome.error or 'unknown'}"[:255]
            rows.extend(_Row(batch, stamp, None, reason) for stamp in batch.registered)
    failed = [row for row in rows if row.reason is not None]
    unrevoked: set[str] = set()
    for chunk in chunks(failed, BULK_MAX):
        try:
            await client.revoke_secrets([row.stamp for row in chunk])
        except Exception as exc:
            log_unexpected(exc, "revoking secrets")
            for row in chunk:  # left live: the reconciliation Aborts them later
                unrevoked.add(row.stamp)
                row.batch.record_error(f"{type(exc).__name__}: {exc}")
    if unrevoked:
        rows = [row for row in rows if row.stamp not in unrevoked]
    for chunk in chunks(rows, BULK_MAX):
        try:
            await client.patch_metadata(record_body(chunk))
        except Exception as exc:
            log_unexpected(exc, "patching references")
            for row in chunk:
                row.batch.record_error(f"{type(exc).__name__}: {exc}")
    for batch in batches:
        if batch.results is not None:
            _count_submission(context, batch, batch.results)


def _count_submission(context: CycleContext, batch: Batch, results: list[SubmitResult]) -> None:
    """Counts, metrics and back-off of a queue whose CE call answered; a failed PATCH or
    revocation is the queue's error (the reconciliation finishes the job next cycle)."""
    outcome, key = batch.outcome, batch.ref.key
    failed = [result for result in results if not result.ok]
    outcome.submitted = len(results) - len(failed)
    outcome.failed = len(failed)
    context.metrics.submitted.labels(key).inc(outcome.submitted)
    context.metrics.failed.labels(key).inc(outcome.failed)
    if failed:
        reason = (failed[0].error or "submission failed")[:255]
        rest = context.backoff.failure(key, reason)
        outcome.why = f"{len(failed)} failed ({reason}); backing off {rest:.0f}s"
    else:
        context.backoff.success(key)
    if batch.record_failure is not None:
        outcome.error = outcome.why = batch.record_failure
