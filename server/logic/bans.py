"""Bans of sites, CEs and queues, per VO: who may set and lift them, and what is in force.

Setting and lifting need the SiteManager policy and a VO the caller acts for (an
administrator: any VO this server serves); reading needs the Reader policy and is scoped to
the caller's VOs. A ban records who (the token's `sub`), when, why and, optionally, until
when; directors read the list once per cycle and skip what it covers.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from server.access import vo_scope
from server.clock import utcnow
from server.context import ServerContext
from server.db import bans as db
from server.errors import Forbidden, InvalidRequest, NotFound
from server.identity import Identity
from server.models import Ban, BanRequest, BanTarget

#: The BannedBy and AllowedBy columns' size: a longer token `sub` cannot be recorded.
MAX_SUB = 255


def _aware(value: datetime | None) -> datetime | None:
    return None if value is None else value.replace(tzinfo=UTC)


def _naive(value: datetime) -> datetime:
    return value.astimezone(UTC).replace(tzinfo=None)


def target_key(vo: str, site: str, ce: str | None, queue: str | None) -> str:
    """The `ActiveKey` of a target: one value per (VO, site, CE, queue), fixed length."""
    return hashlib.sha256(json.dumps([vo, site, ce, queue]).encode()).hexdigest()


def to_ban(row: dict[str, Any], now: datetime) -> Ban:
    until = row["Until"]
    return Ban(
        ban_id=row["BanID"],
        vo=row["VO"],
        site=row["Site"],
        ce=row["CE"],
        queue=row["Queue"],
        reason=row["Reason"],
        banned_by=row["BannedBy"],
        banned_at=_aware(row["BannedAt"]) or row["BannedAt"],
        until=_aware(until),
        allowed_by=row["AllowedBy"],
        allowed_at=_aware(row["AllowedAt"]),
        active=row["ActiveKey"] is not None and (until is None or until > now),
    )


def _vo_of(ctx: ServerContext, identity: Identity, vo: str | None) -> str:
    """The VO a ban request acts on: the one named, or the caller's; refused unless the
    caller acts for it (administrators act for every VO this server serves)."""
    vo = vo or identity.vo
    if not identity.is_admin and vo not in identity.vos:
        raise Forbidden("Bans can only be managed within your own VO.")
    ctx.require_known_vo(vo)
    if len(identity.sub) > MAX_SUB:
        raise InvalidRequest(f"Token subject longer than {MAX_SUB} characters")
    return vo


async def ban(ctx: ServerContext, identity: Identity, body: BanRequest) -> Ban:
    """Ban the target for its VO; AlreadyExists when a ban is already in force there."""
    vo = _vo_of(ctx, identity, body.vo)
    now = utcnow()
    until = None if body.until is None else _naive(body.until)
    if until is not None and until <= now:
        raise InvalidRequest("'until' is in the past: such a ban would never apply")
    row: dict[str, Any] = {
        "VO": vo,
        "Site": body.site,
        "CE": body.ce,
        "Queue": body.queue,
        "Reason": body.reason,
        "BannedBy": identity.sub,
        "BannedAt": now,
        "Until": until,
        "AllowedBy": None,
        "AllowedAt": None,
        "ActiveKey": target_key(vo, body.site, body.ce, body.queue),
    }
    async with ctx.db.transaction() as conn:
        row["BanID"] = await db.insert_ban(conn, row, now)
    return to_ban(row, now)


async def allow(ctx: ServerContext, identity: Identity, body: BanTarget) -> list[Ban]:
    """Lift the ban in force on exactly this target (a site's ban is lifted by naming the
    site, not one of its CEs); NotFound when none is in force there."""
    vo = _vo_of(ctx, identity, body.vo)
    now = utcnow()
    key = target_key(vo, body.site, body.ce, body.queue)
    async with ctx.db.transaction() as conn:
        lifted = await db.allow(conn, key, by=identity.sub, now=now)
    if not lifted:
        raise NotFound("No ban in force on this target")
    return [to_ban(r, now) for r in lifted]


async def list_bans(
    ctx: ServerContext, identity: Identity, vo: str | None = None, *, history: bool = False
) -> list[Ban]:
    """The bans in force in the caller's VOs (all for an administrator), or of the one VO
    named (which the caller must act for); with `history`, the allowed and expired ones too."""
    scope = vo_scope(identity)
    if vo is not None:
        if scope is not None and vo not in scope:
            raise Forbidden("Bans can only be read within your own VO.")
        scope = frozenset({vo})
    now = utcnow()
    async with ctx.db.read() as conn:
        rows = await db.read(conn, scope, now, history=history)
    return [to_ban(r, now) for r in rows]
