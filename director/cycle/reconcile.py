"""Reconciliation: a queue's CE jobs against its live pilots without a CE reference, by stamp,
so that a crash between submission and registration loses no pilot and counts none twice."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from director.ce.base import ComputingElement, QueueSpec
from director.client import LivePilot
from director.config import QueueRef
from director.cycle.context import CycleContext
from director.errors import CEError
from server.models import PilotMetadata, PilotStatus

log = logging.getLogger(__name__)

NEVER_SUBMITTED = "registered but never submitted to the CE"


async def reconcile(
    context: CycleContext,
    ref: QueueRef,
    ce: ComputingElement,
    spec: QueueSpec,
    unreferenced: Sequence[LivePilot],
) -> None:
    """Patch the references the server misses on; Abort (after revoking their secrets) the
    pilots registered but absent from the CE after `director.submit_grace_seconds`.

    `unreferenced` are the queue's live pilots without a reference, from
    `ServerClient.unreferenced_pilots` at the start of the cycle. No other director works this
    queue (the lease) and this one has not submitted to it yet this cycle, so they are still
    current."""
    if not unreferenced:
        return
    try:
        jobs = await ce.list_jobs(spec)
    except CEError as exc:
        log.info("queue %s: cannot list CE jobs for reconciliation: %s", ref.key, exc)
        return
    on_ce = {job.stamp: job for job in jobs}
    now = context.clock()
    grace = context.settings.director.submit_grace_seconds
    updates: dict[str, PilotMetadata] = {}
    never: list[str] = []
    for pilot in unreferenced:
        if pilot.reference is not None:
            continue
        job = on_ce.get(pilot.stamp)
        if job is not None:
            updates[pilot.stamp] = PilotMetadata(pilot_job_reference=job.reference)
            continue
        if pilot.submitted_at is not None and now - pilot.submitted_at > grace:
            never.append(pilot.stamp)
            updates[pilot.stamp] = PilotMetadata(
                status=PilotStatus.ABORTED, status_reason=NEVER_SUBMITTED
            )
    if never:  # first: a pilot the server shows as Aborted never keeps a usable secret
        await context.server().revoke_secrets(never)
    if updates:
        await context.server().patch_metadata(updates)
        log.info(
            "reconcile queue=%s references=%d never_submitted=%d",
            ref.key,
            len(updates) - len(never),
            len(never),
        )
    if never:
        context.metrics.aborted.labels(ref.key).inc(len(never))
