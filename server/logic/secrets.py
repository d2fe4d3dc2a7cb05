"""Pilot secrets as operators see them: mint, list, change, revoke, purge.

Minting is open to pilot managers (the director mints for its own VO); listing and changing
constraints are for administrators; revocation is for both, a manager only touching secrets
whose VOs are all its own.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from server.access import require_vo, vo_scope
from server.clock import utcnow
from server.context import ServerContext
from server.db import pilots as db_pilots
from server.db import secrets as db
from server.db import tokens as db_tokens
from server.errors import Forbidden, InvalidRequest, NotFound
from server.identity import ADMIN, GENERIC_PILOT, TRUSTED_HOST, Identity
from server.logic import secrets_minting
from server.models import (
    MintedSecret,
    SecretConstraints,
    SecretInfo,
    SecretMintRequest,
    SecretRevocation,
    SecretUpdate,
)


def _no_legacy(identity: Identity) -> None:
    """A GenericPilot token (one pilot's borrowed credential) manages no secrets."""
    if GENERIC_PILOT in identity.properties and not identity.properties & {ADMIN, TRUSTED_HOST}:
        raise Forbidden("Legacy pilot tokens cannot manage secrets.")


def bound_stamps(body: SecretMintRequest) -> list[str | None]:
    """Secret i is bound to stamp i; without stamps, `n` unbound secrets (default one)."""
    if body.pilot_stamps:
        if body.n is not None and body.n != len(body.pilot_stamps):
            raise InvalidRequest("n must equal the number of pilot_stamps when both are given.")
        if len(set(body.pilot_stamps)) != len(body.pilot_stamps):
            raise InvalidRequest("Duplicate stamps in pilot_stamps.")
        return list(body.pilot_stamps)
    return [None] * (body.n if body.n is not None else 1)


async def mint(
    ctx: ServerContext, identity: Identity, body: SecretMintRequest
) -> list[MintedSecret]:
    _no_legacy(identity)
    vos = {body.vo, *body.vos}
    for vo in sorted(vos):
        require_vo(identity, vo)
        ctx.require_known_vo(vo)
    stamps = bound_stamps(body)
    constraints = SecretConstraints.model_validate(
        body.model_dump(include=set(SecretConstraints.model_fields))
    )
    async with ctx.db.transaction() as conn:
        real = [s for s in stamps if s is not None]
        if real:
            found = await db_pilots.pilots_by_stamp(conn, real)
            if any(p["VO"] not in vos for p in found.values()):
                raise Forbidden("Some stamps belong to pilots of another VO.")
        return await secrets_minting.mint(
            conn, vo=body.vo, constraints=constraints, bound_stamps=stamps, now=utcnow()
        )


async def list_secrets(
    ctx: ServerContext, pilot_stamp: str | None, page: int, per_page: int
) -> list[SecretInfo]:
    async with ctx.db.read() as conn:
        return await db.list_secrets(
            conn, pilot_stamp=pilot_stamp, offset=(page - 1) * per_page, limit=per_page
        )


def update_values(update: SecretUpdate, now: datetime) -> dict[str, Any]:
    """Column values for a PATCH: absent fields stay, an explicit null means unlimited."""
    given = update.model_fields_set
    values: dict[str, Any] = {}
    if "expiration_minutes" in given:
        minutes = update.expiration_minutes
        values["ExpiresAt"] = now + timedelta(minutes=minutes) if minutes is not None else None
    if "pilot_secret_use_count_max" in given:
        values["RemainingUses"] = update.pilot_secret_use_count_max
    for field, column in (("sites", "Sites"), ("ces", "CEs"), ("queues", "Queues")):
        if field in given:
            values[column] = db.dump_list(getattr(update, field) or [])
    return values


async def update_secret(ctx: ServerContext, secret_id: int, update: SecretUpdate) -> SecretInfo:
    values = update_values(update, utcnow())
    async with ctx.db.transaction() as conn:
        if values and not await db.update_secret(conn, secret_id, values):
            raise NotFound(f"Unknown secret {secret_id}")
        found = await db.list_secrets(conn, secret_ids=[secret_id])
    if not found:
        raise NotFound(f"Unknown secret {secret_id}")
    return found[0]


async def revoke(ctx: ServerContext, identity: Identity, body: SecretRevocation) -> int:
    """Revoke by ids and/or by bound stamps; returns how many secrets were newly revoked.

    The token families exchanged for these secrets are revoked with them: a pilot the director
    aborts loses its refresh and access tokens, not only the chance to exchange again."""
    _no_legacy(identity)
    if not body.secret_ids and not body.pilot_stamps:
        raise InvalidRequest("Give secret_ids or pilot_stamps.")
    scope = vo_scope(identity)
    async with ctx.db.transaction() as conn:
        ids = set(body.secret_ids)
        if body.pilot_stamps:
            ids.update(await db.secret_ids_for_stamps(conn, body.pilot_stamps))
        ordered = sorted(ids)
        vos = await db.vos_of(conn, ordered)
        if scope is not None and any(not set(v) <= scope for v in vos.values()):
            raise Forbidden("Some secrets are valid for VOs that are not yours.")
        revoked = await db.revoke(conn, ordered)
        families = await db_tokens.families_of_secrets(conn, ordered)
        await db_tokens.revoke_families(conn, conn.dialect.name, families, utcnow())
        return revoked


async def purge(ctx: ServerContext, now: datetime | None = None) -> int:
    async with ctx.db.transaction() as conn:
        return await db.purge(conn, now or utcnow())
