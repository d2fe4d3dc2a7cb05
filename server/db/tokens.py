"""Refresh tokens and revoked token families.

A refresh token is usable once: `spend` is a conditional UPDATE, so of two requests racing
with the same token exactly one rotates it and the other is treated as reuse. Revoking a family
marks every refresh token of it and records the family id, which the pilot endpoints consult so
access tokens of the family die too (RFC 7009 section 2.1). Each token records the secret its
family was exchanged for, so revoking a secret revokes the families issued from it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, exists, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from server.db.batch import chunks
from server.db.schema import REFRESH_TOKENS as RT
from server.db.schema import REVOKED_FAMILIES as RF
from server.db.secrets import insert_ignoring_conflicts

_jti = RT.c.JTI  # (a lower-case name: ruff takes RT.c.JTI for a constant)
_INSERT = RT.insert()  # built once: every exchange and refresh stores a token


async def insert_refresh_token(
    conn: AsyncConnection,
    *,
    jti: str,
    family_id: str,
    sub: str,
    vo: str,
    pilot_stamp: str | None,
    issued_at: datetime,
    expires_at: datetime,
    secret_id: int | None = None,
) -> None:
    await conn.execute(
        _INSERT,
        {
            "JTI": jti,
            "FamilyID": family_id,
            "Sub": sub,
            "VO": vo,
            "PilotStamp": pilot_stamp,
            "SecretID": secret_id,
            "IssuedAt": issued_at,
            "ExpiresAt": expires_at,
            "Used": False,
            "Revoked": False,
        },
    )


async def mark_used(conn: AsyncConnection, jti: str, now: datetime) -> bool:
    """Spend a refresh token; False if it was already used, revoked, expired or unknown."""
    result = await conn.execute(_spendable(jti, now).values(Used=True))
    return result.rowcount == 1


@dataclass(frozen=True)
class Spent:
    """A refresh token just spent: the secret its family was exchanged for, and whether the
    family is revoked (then the caller refuses, and the rollback unspends the token)."""

    secret_id: int | None
    family_revoked: bool


async def spend(conn: AsyncConnection, jti: str, family_id: str, now: datetime) -> Spent | None:
    """`mark_used`, `secret_of` and `family_revoked` in one round trip where UPDATE ...
    RETURNING exists (PostgreSQL, SQLite): a refresh is a pilot's most frequent call after
    its log batches. None: not spendable (used, revoked, expired or unknown). MariaDB has no
    UPDATE ... RETURNING: the three statements, the family first."""
    if conn.dialect.name in ("postgresql", "sqlite"):
        row = (
            await conn.execute(
                _spendable(jti, now)
                .values(Used=True)
                .returning(RT.c.SecretID, family_is_revoked(family_id))
            )
        ).first()
        return None if row is None else Spent(row[0], bool(row[1]))
    revoked = await family_revoked(conn, family_id)
    if not await mark_used(conn, jti, now):
        return None
    return Spent(await secret_of(conn, jti), revoked)


def _spendable(jti: str, now: datetime) -> Any:
    return update(RT).where(
        _jti == jti, RT.c.Used.is_(False), RT.c.Revoked.is_(False), RT.c.ExpiresAt > now
    )


async def secret_of(conn: AsyncConnection, jti: str) -> int | None:
    """The secret the token's family was exchanged for (carried over on every rotation)."""
    row = (await conn.execute(select(RT.c.SecretID).where(_jti == jti))).first()
    return None if row is None else row[0]


async def families_of_secrets(conn: AsyncConnection, secret_ids: Sequence[int]) -> list[str]:
    """The token families issued from these secrets (those with a refresh token still kept)."""
    families: set[str] = set()
    for chunk in chunks(secret_ids):
        rows = await conn.execute(select(RT.c.FamilyID).where(RT.c.SecretID.in_(chunk)).distinct())
        families.update(r[0] for r in rows)
    return sorted(families)


async def known(conn: AsyncConnection, jti: str) -> bool:
    """Whether the token was issued (it may be used or revoked since), its row locked to the
    end of the transaction: of several requests replaying one refresh token, the first whose
    `mark_used` waited for the winner keeps the row locked anyway (PostgreSQL locks the row it
    re-checks, even when the check fails). One that came later and did not wait would go on to
    revoke the family, insert the family row and then wait for the first on the token's row,
    while the first waited for its family row: a deadlock (a 503, seen with two workers under
    load). Locking here, every replay queues on the token's row before touching the family."""
    row = (await conn.execute(select(RT.c.JTI).where(_jti == jti).with_for_update())).first()
    return row is not None


def family_is_revoked(family_id: str | None) -> Any:
    """The SQL truth of the family being revoked, to ask it within another statement."""
    return exists().where(RF.c.FamilyID == family_id)


async def family_revoked(conn: AsyncConnection, family_id: str) -> bool:
    row = (await conn.execute(select(RF.c.FamilyID).where(RF.c.FamilyID == family_id))).first()
    return row is not None


async def revoke_families(
    conn: AsyncConnection, dialect: str, family_ids: Sequence[str], now: datetime
) -> None:
    """Revoke whole families; idempotent, and safe when two requests revoke the same one."""
    if not family_ids:
        return
    await conn.execute(
        insert_ignoring_conflicts(RF, dialect),
        [{"FamilyID": f, "RevokedAt": now} for f in family_ids],
    )
    for chunk in chunks(family_ids):
        await conn.execute(update(RT).where(RT.c.FamilyID.in_(chunk)).values(Revoked=True))


async def purge(conn: AsyncConnection, now: datetime, family_horizon: datetime) -> tuple[int, int]:
    """Delete expired refresh tokens, and family revocations older than any token they cover."""
    tokens = await conn.execute(delete(RT).where(RT.c.ExpiresAt <= now))
    families = await conn.execute(delete(RF).where(RF.c.RevokedAt < family_horizon))
    return tokens.rowcount, families.rowcount
