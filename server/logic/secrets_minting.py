"""Making secrets: 32 random bytes as 64 lowercase hex characters, as DiracX mints them."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncConnection

from server.db import secrets as db_secrets
from server.models import MintedSecret, SecretConstraints


def new_secret() -> tuple[str, str]:
    """A fresh secret and its SHA-256 hex digest (the only form the database keeps)."""
    plain = secrets.token_hex(32)
    return plain, hash_secret(plain)


def hash_secret(plain: str) -> str:
    return hashlib.sha256(plain.encode()).hexdigest()


async def mint(
    conn: AsyncConnection,
    *,
    vo: str,
    constraints: SecretConstraints,
    bound_stamps: Sequence[str | None],
    now: datetime,
) -> list[MintedSecret]:
    """Mint one secret per entry of `bound_stamps`, inside the caller's transaction."""
    pairs = [new_secret() for _ in bound_stamps]
    expires_at = (
        now + timedelta(minutes=constraints.expiration_minutes)
        if constraints.expiration_minutes is not None
        else None
    )
    await db_secrets.insert_secrets(
        conn,
        hashes=[h for _, h in pairs],
        vos=[vo, *constraints.vos],
        bound_stamps=bound_stamps,
        sites=constraints.sites,
        ces=constraints.ces,
        queues=constraints.queues,
        expires_at=expires_at,
        uses=constraints.pilot_secret_use_count_max,
        now=now,
    )
    # absolute Unix time, as DiracX reports it
    expires_in = int(expires_at.replace(tzinfo=UTC).timestamp()) if expires_at is not None else None
    return [
        MintedSecret(pilot_secret=plain, pilot_secret_expires_in=expires_in, pilot_stamp=s)
        for (plain, _), s in zip(pairs, bound_stamps, strict=True)
    ]
