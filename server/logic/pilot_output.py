"""Pilot output: what the CE kept of a pilot (stdout, stderr, the CE's own log), uploaded by
the director that followed it, served to the readers of its VO.

Each stream is redacted as log lines are (`server.logic.logs.redact`: the pilot secret in
every form the pilot prints it), made storable, then cut to the server's
`pilot_output_max_bytes`, keeping the tail (where a pilot says why it failed), after a line
saying how much was cut. Redaction comes first, so a cut cannot separate a secret from the
mention that gets it redacted.

A CE that no longer has the output is recorded once (`not_available` with the reason); such a
report never replaces an output already stored. An upload closes the pilot's open
output-fetch request: done, or failed with "not available: <reason>".
"""

from __future__ import annotations

from datetime import UTC
from typing import Any

from server.access import vo_scope
from server.clock import utcnow
from server.context import ServerContext
from server.db import pilot_requests as db
from server.db import pilots as db_pilots
from server.errors import InvalidRequest, NotFound
from server.identity import Identity
from server.logic.logs import redact, storable
from server.logic.pilot_requests import MAX_SUB, OUTPUT
from server.models import PilotOutput, PilotOutputUpload, RequestState


def tail(text: str, max_bytes: int) -> tuple[str, bool]:
    """`text` if it fits in `max_bytes` of UTF-8, else its last bytes (whole characters)
    after a line saying how many bytes were cut; and whether it was cut."""
    data = text.encode()
    if len(data) <= max_bytes:
        return text, False
    note = f"[... {len(data) - max_bytes} bytes cut: the last {max_bytes} follow ...]\n"
    kept = data[len(data) - max(max_bytes - len(note.encode()), 0) :]
    return note + kept.decode("utf-8", "ignore"), True


def clean(text: str | None, max_bytes: int) -> tuple[str | None, bool]:
    if text is None:
        return None, False
    return tail(redact(storable(text)), max_bytes)


def to_output(row: dict[str, Any], pilot: dict[str, Any]) -> PilotOutput:
    return PilotOutput(
        pilot_stamp=pilot["PilotStamp"],
        vo=pilot["VO"],
        std_output=row["StdOutput"],
        std_error=row["StdError"],
        ce_log=row["CELog"],
        not_available=row["NotAvailable"],
        truncated=bool(row["Truncated"]),
        uploaded_by=row["UploadedBy"],
        uploaded_at=row["UploadedAt"].replace(tzinfo=UTC),
    )


async def _pilot(conn: Any, identity: Identity, stamp: str) -> dict[str, Any]:
    """The pilot as the caller may see it; another VO's is as unknown as a missing one."""
    found = await db_pilots.pilots_by_stamp(conn, [stamp])
    pilot = found.get(stamp)
    scope = vo_scope(identity)
    if pilot is None or (scope is not None and pilot["VO"] not in scope):
        raise NotFound({"message": "Unknown pilot stamps", "pilot_stamps": [stamp]})
    return pilot


async def upload(ctx: ServerContext, identity: Identity, body: PilotOutputUpload) -> PilotOutput:
    """Store a pilot's output (replacing an earlier one), or that the CE no longer had it
    (kept only where nothing is stored yet); the output as now stored."""
    if len(identity.sub) > MAX_SUB:
        raise InvalidRequest(f"Token subject longer than {MAX_SUB} characters")
    limit = ctx.settings.pilot_output_max_bytes
    now = utcnow()
    async with ctx.db.transaction() as conn:
        pilot = await _pilot(conn, identity, body.pilot_stamp)
        stored = await db.read_output(conn, pilot["PilotID"])
        row: dict[str, Any]
        if body.not_available is not None:
            row = {
                "StdOutput": None,
                "StdError": None,
                "CELog": None,
                "NotAvailable": body.not_available,
                "Truncated": False,
            }
            closing = {
                "State": RequestState.FAILED.value,
                "LastError": f"not available: {body.not_available}"[:255],
            }
        else:
            streams = {
                "StdOutput": clean(body.std_output, limit),
                "StdError": clean(body.std_error, limit),
                "CELog": clean(body.ce_log, limit),
            }
            row = {k: v[0] for k, v in streams.items()}
            row.update(NotAvailable=None, Truncated=any(v[1] for v in streams.values()))
            closing = {"State": RequestState.DONE.value}
        row.update(PilotID=pilot["PilotID"], UploadedBy=identity.sub, UploadedAt=now)
        keep = stored is not None and body.not_available is not None
        if not keep:
            await db.store_output(conn, row, replace=stored is not None)
        await db.close_open(
            conn,
            OUTPUT,
            body.pilot_stamp,
            {**closing, "UpdatedAt": now, "NextAttemptAt": None},
        )
        result = stored if keep and stored is not None else row
    return to_output(result, pilot)


async def read(ctx: ServerContext, identity: Identity, stamp: str) -> PilotOutput:
    """The pilot's stored output; NotFound when there is none (or the pilot is not visible)."""
    async with ctx.db.read() as conn:
        pilot = await _pilot(conn, identity, stamp)
        row = await db.read_output(conn, pilot["PilotID"])
    if row is None:
        raise NotFound("No output stored for this pilot")
    return to_output(row, pilot)


async def read_if_any(ctx: ServerContext, identity: Identity, stamp: str) -> PilotOutput | None:
    try:
        return await read(ctx, identity, stamp)
    except NotFound:
        return None
