"""Pilot authentication: secret exchange, refresh-token rotation, revocation.

Every refusal of a credential is the same `Unauthorized(INVALID)`, so a caller cannot learn
which secret exists, which constraint failed, or whether a stamp is registered. The use count is
spent by one conditional UPDATE; on SQLite and PostgreSQL that UPDATE also reads the secret
(`db.secrets.consume_for_exchange`, UPDATE ... RETURNING) and a refusal rolls the use back, on
MariaDB a read comes first (`secret_for_exchange`, then `consume_use`). All statements of an
exchange share one transaction (a bound secret: two statements, the UPDATE and the refresh
token's INSERT, on SQLite and PostgreSQL), and the tokens are signed after it commits, outside
the SQLite write lock.

A bound secret opens only its stamps. An unbound secret (a vacuum pilot's, often multi-use and
baked into VM images) registers new pilots, and opens again only a stamp it registered itself
(`PilotSecretRegistrations`). Every refresh token records the secret its family came from, so
revoking the secret revokes the family (`logic.secrets.revoke`).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from server.clock import utcnow
from server.context import ServerContext
from server.db import pilots as db_pilots
from server.db import secrets as db_secrets
from server.db import tokens as db_tokens
from server.errors import AlreadyExists, Unauthorized
from server.identity import (
    ACCESS_TYP,
    REFRESH_TYP,
    Identity,
    mint_pilot_access_token,
    mint_refresh_token,
    refused,
    token_typ,
)
from server.keys import REASON_REVOKED, InvalidToken
from server.logic.secrets_minting import hash_secret
from server.models import PilotStatus, SecretExchange, TokenResponse

log = logging.getLogger(__name__)

INVALID = "Invalid credentials"
VACUUM_DEFAULTS = {"grid_type": "DIRAC", "grid_site": "Unknown", "status": PilotStatus.RUNNING}


def _refuse() -> Unauthorized:
    return Unauthorized(INVALID)


@dataclass(frozen=True)
class PilotPlace:
    """Where a pilot runs, as the secret's constraints see it."""

    vo: str
    site: str | None
    ce: str | None
    queue: str | None


def is_vacuum(body: SecretExchange) -> bool:
    """The DIRAC pilot retries a refused exchange with these fields (maybe empty strings)."""
    return any(v is not None for v in (body.vo, body.grid_type, body.grid_site, body.status))


def vacuum_vo(body: SecretExchange, secret_vos: list[str]) -> str | None:
    """An empty or absent VO means the secret's only VO, if it has exactly one."""
    if body.vo:
        return body.vo
    return secret_vos[0] if len(secret_vos) == 1 else None


def vacuum_status(raw: str | None) -> PilotStatus | None:
    if not raw:
        return PilotStatus.RUNNING
    try:
        return PilotStatus(raw)
    except ValueError:
        return None


def allowed(constraint: list[str], value: str | None) -> bool:
    """An empty constraint allows anything; otherwise the value must be listed."""
    return not constraint or (value is not None and value in constraint)


def secret_admits(secret: dict[str, Any], place: PilotPlace, now: datetime) -> bool:
    """The pure part of the checks (the UPDATE re-checks revocation, expiry and uses)."""
    if secret["Revoked"]:
        return False
    if secret["ExpiresAt"] is not None and secret["ExpiresAt"] <= now:
        return False
    if secret["RemainingUses"] is not None and secret["RemainingUses"] <= 0:
        return False
    return place_admitted(secret, place)


def place_admitted(secret: dict[str, Any], place: PilotPlace) -> bool:
    """The secret's constraints on where a pilot runs: its VOs, sites, CEs and queues."""
    return (
        place.vo in db_secrets.load_list(secret["VOs"])
        and allowed(db_secrets.load_list(secret["Sites"]), place.site)
        and allowed(db_secrets.load_list(secret["CEs"]), place.ce)
        and allowed(db_secrets.load_list(secret["Queues"]), place.queue)
    )


def _vacuum_row(
    body: SecretExchange, vo: str, status: PilotStatus, now: datetime
) -> dict[str, Any]:
    pilot = (
        body.pilot_stamp,
        body.grid_type or VACUUM_DEFAULTS["grid_type"],
        body.grid_site or VACUUM_DEFAULTS["grid_site"],
        body.ce or "NotAssigned",
        body.queue or "Unknown",
        None,  # the reference is the stamp
        status.value,
    )
    return db_pilots.pilot_row(vo, pilot, now, reason="Registered by secret exchange")


@dataclass(frozen=True)
class _Grant:
    vo: str
    stamp: str
    family_id: str
    jti: str
    now: datetime
    secret_id: int | None


async def _store_refresh(ctx: ServerContext, conn: AsyncConnection, grant: _Grant) -> None:
    await db_tokens.insert_refresh_token(
        conn,
        jti=grant.jti,
        family_id=grant.family_id,
        sub=f"{grant.vo}:{grant.stamp}",
        vo=grant.vo,
        pilot_stamp=grant.stamp,
        issued_at=grant.now,
        expires_at=grant.now + timedelta(seconds=ctx.settings.refresh_token_lifetime),
        secret_id=grant.secret_id,
    )


def _tokens(ctx: ServerContext, grant: _Grant) -> TokenResponse:
    """Sign the pair; `iat` is the stored issue time, so `exp` matches the stored expiry."""
    now = int(grant.now.replace(tzinfo=UTC).timestamp())
    lifetime = ctx.settings.pilot_token_lifetime
    access = mint_pilot_access_token(
        ctx.keys,
        vo=grant.vo,
        stamp=grant.stamp,
        lifetime=lifetime,
        family_id=grant.family_id,
        now=now,
    )
    refresh = mint_refresh_token(
        ctx.keys,
        vo=grant.vo,
        stamp=grant.stamp,
        lifetime=ctx.settings.refresh_token_lifetime,
        family_id=grant.family_id,
        jti=grant.jti,
        now=now,
    )
    return TokenResponse(access_token=access, expires_in=lifetime, refresh_token=refresh)


async def exchange(ctx: ServerContext, body: SecretExchange) -> TokenResponse:
    """A pilot's secret for a token pair; registers a vacuum pilot with an unbound secret."""
    secret_hash = hash_secret(body.pilot_secret)
    now = utcnow()
    async with ctx.db.transaction() as conn:
        # where it can, one statement reads the secret and spends a use (the rest of the
        # checks refuse by raising, which rolls the use back); otherwise a read, then the
        # conditional UPDATE once the checks passed
        spent = db_secrets.consumes_in_one_statement(conn)
        if spent:
            secret = await db_secrets.consume_for_exchange(conn, secret_hash, body.pilot_stamp, now)
        else:
            secret = await db_secrets.secret_for_exchange(conn, secret_hash, body.pilot_stamp)
        if secret is None:
            raise _refuse()
        bound = secret["bound_count"] > 0
        if bound and not secret["bound_here"]:
            raise _refuse()
        new_row: dict[str, Any] | None = None
        if secret["PilotVO"] is not None:
            # an unbound secret opens again only a stamp it registered itself (a vacuum pilot
            # retrying after a lost answer), never one a director or another secret registered
            if not bound and not secret["registered_here"]:
                raise _refuse()
            place = PilotPlace(
                secret["PilotVO"], secret["GridSite"], secret["DestinationSite"], secret["Queue"]
            )
        else:
            vo = vacuum_vo(body, db_secrets.load_list(secret["VOs"]))
            status = vacuum_status(body.status)
            if bound or not is_vacuum(body) or vo is None or status is None:
                raise _refuse()
            if vo not in ctx.settings.vos:
                raise _refuse()
            place = PilotPlace(vo, body.grid_site or None, body.ce, body.queue)
            new_row = _vacuum_row(body, vo, status, now)
        if spent:
            admitted = place_admitted(secret, place)
        else:  # the checks, then the conditional UPDATE
            admitted = secret_admits(secret, place, now) and await db_secrets.consume_use(
                conn, secret["SecretID"], now
            )
        if not admitted:
            raise _refuse()
        if new_row is not None:
            try:
                await db_pilots.insert_pilot(conn, new_row)
            except AlreadyExists as exc:  # a racing exchange registered it first
                raise _refuse() from exc
            await db_secrets.record_registration(conn, secret["SecretID"], body.pilot_stamp)
        grant = _Grant(
            place.vo, body.pilot_stamp, uuid.uuid4().hex, uuid.uuid4().hex, now, secret["SecretID"]
        )
        await _store_refresh(ctx, conn, grant)
    return _tokens(ctx, grant)


async def refresh(ctx: ServerContext, refresh_token: str, stamp: str) -> TokenResponse:
    """Rotate: the presented token dies, a new pair of the same family is issued. Presenting a
    dead token again (reuse: it was stolen, or replayed) revokes the whole family."""
    claims = _refresh_claims(ctx, refresh_token)
    if claims is None or claims["pilot_stamp"] != stamp:
        raise _refuse()
    family, jti = claims["fam"], str(claims["jti"])
    now = utcnow()
    reused = False
    async with ctx.db.transaction() as conn:
        spent = await db_tokens.spend(conn, jti, family, now)
        if spent is not None:
            if spent.family_revoked:
                raise _refuse()  # the rollback unspends the token
            grant = _Grant(str(claims["vo"]), stamp, family, uuid.uuid4().hex, now, spent.secret_id)
            await _store_refresh(ctx, conn, grant)
        elif await db_tokens.family_revoked(conn, family):
            raise _refuse()
        elif await db_tokens.known(conn, jti):
            reused = True
            await db_tokens.revoke_families(conn, conn.dialect.name, [family], now)
        else:
            raise _refuse()
    if reused:
        log.warning("refresh token reuse: family revoked (stamp=%s)", stamp)
        raise _refuse()
    return _tokens(ctx, grant)


def _refresh_claims(ctx: ServerContext, token: str) -> dict[str, Any] | None:
    try:
        claims = ctx.keys.verify(token, typ=REFRESH_TYP)
    except InvalidToken:
        return None
    if not isinstance(claims.get("pilot_stamp"), str) or not isinstance(claims.get("fam"), str):
        return None
    if not isinstance(claims.get("vo"), str):
        return None
    return claims


async def revoke(ctx: ServerContext, token: str) -> None:
    """RFC 7009: revoke the family of a valid pilot refresh or access token. Unknown, foreign
    and already-dead tokens are not an error (the client wanted it dead; it is)."""
    typ = token_typ(token)
    if typ not in (REFRESH_TYP, ACCESS_TYP):
        return
    try:
        claims = ctx.keys.verify(token, typ=typ)
    except InvalidToken:
        return
    family = claims.get("fam")
    if not isinstance(family, str):
        return  # a user or service token: nothing server-side to revoke
    async with ctx.db.transaction() as conn:
        await db_tokens.revoke_families(conn, conn.dialect.name, [family], utcnow())


async def ensure_live(ctx: ServerContext, identity: Identity) -> None:
    """Refuse a pilot access token whose family was revoked (logout, or refresh reuse)."""
    if not identity.is_pilot or identity.family_id is None:
        return
    async with ctx.db.read() as conn:
        if await db_tokens.family_revoked(conn, identity.family_id):
            raise refused(REASON_REVOKED)


async def purge(ctx: ServerContext, now: datetime | None = None) -> tuple[int, int]:
    """Expired refresh tokens, and family revocations older than any access token of theirs."""
    now = now or utcnow()
    horizon = now - timedelta(seconds=ctx.settings.pilot_token_lifetime + 60)
    async with ctx.db.transaction() as conn:
        return await db_tokens.purge(conn, now, horizon)
