"""Pilot monitor sessions, kept as rows of the `RefreshTokens` table.

A session is a server-side record, so logging out ends it for every worker and host sharing
the database, not only in the browser that logged out. The row reuses the refresh-token
columns: `JTI` is the session id (the cookie's `jti`), `FamilyID` is `monitor:<jti>` (a family
of its own, so no pilot or user family can ever include it), `PilotStamp` is NULL, `Revoked`
is set at logout, and maintenance deletes the row once `ExpiresAt` has passed, as for any
refresh token. The cookie itself cannot be replayed as a refresh token: its JWT `typ` differs.
A session is alive only while its row exists, unrevoked and unexpired: a lost row ends the
session (the operator logs in again), it never revives one.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from server.db.schema import REFRESH_TOKENS as RT

FAMILY_PREFIX = "monitor:"
_jti = RT.c.JTI  # (a lower-case name: ruff takes RT.c.JTI for a constant)
_SUB_MAX = 255  # the column sizes: the row is a record, the signed cookie holds the identity
_VO_MAX = 128


async def insert_session(
    conn: AsyncConnection,
    *,
    session_id: str,
    sub: str,
    vo: str,
    issued_at: datetime,
    expires_at: datetime,
) -> None:
    await conn.execute(
        RT.insert(),
        {
            "JTI": session_id,
            "FamilyID": FAMILY_PREFIX + session_id,
            "Sub": sub[:_SUB_MAX],
            "VO": vo[:_VO_MAX],
            "PilotStamp": None,
            "IssuedAt": issued_at,
            "ExpiresAt": expires_at,
            "Used": False,
            "Revoked": False,
        },
    )


async def session_alive(conn: AsyncConnection, session_id: str, now: datetime) -> bool:
    row = (
        await conn.execute(
            select(RT.c.JTI).where(
                _jti == session_id,
                RT.c.FamilyID == FAMILY_PREFIX + session_id,
                RT.c.Revoked.is_(False),
                RT.c.ExpiresAt > now,
            )
        )
    ).first()
    return row is not None


async def revoke_session(conn: AsyncConnection, session_id: str) -> None:
    """Idempotent: logging out twice, or with an already purged session, is not an error."""
    await conn.execute(
        update(RT)
        .where(_jti == session_id, RT.c.FamilyID == FAMILY_PREFIX + session_id)
        .values(Revoked=True)
    )
