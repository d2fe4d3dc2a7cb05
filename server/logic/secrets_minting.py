"""Making secrets: 32 random bytes as 64 lowercase hex characters, as DiracX mints them."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncConnection

from server.db import secrets as db_secrets
from server.models import MintedSecret, SecretConstraints


def hash_secret(plain: str) -> str:
    """One SHA-256, not a slow KDF: a secret is 256 random bits, so there is nothing to guess
    and nothing a salt or stretching would protect (`server.logic.auth` verifies by the
    same digest, looked up by the unique index)."""
    return hashlib.sha256(plain.encode()).hexdigest()


def new_secrets(n: int) -> tuple[list[str], list[str]]:
    """`n` fresh secrets (32 random bytes as 64 lowercase hex characters, as `secrets.token_hex`
    makes them) and their digests, from one read of the system's random source, not `n`."""
    pool = os.urandom(32 * n).hex()
    plains = [pool[i : i + 64] for i in range(0, 64 * n, 64)]
    sha256 = hashlib.sha256
    return plains, [sha256(p.encode()).hexdigest() for p in plains]


async def mint(
    conn: AsyncConnection,
    *,
    vo: str,
    constraints: SecretConstraints,
    bound_stamps: Sequence[str | None],
    now: datetime,
) -> list[MintedSecret]:
    """Mint one secret per entry of `bound_stamps`, inside the caller's transaction."""
    plains, expires_in = await mint_plain(
        conn, vo=vo, constraints=constraints, bound_stamps=bound_stamps, now=now
    )
    return [
        MintedSecret(pilot_secret=plain, pilot_secret_expires_in=expires_in, pilot_stamp=s)
        for plain, s in zip(plains, bound_stamps, strict=True)
    ]


async def mint_plain(
    conn: AsyncConnection,
    *,
    vo: str,
    constraints: SecretConstraints,
    bound_stamps: Sequence[str | None],
    now: datetime,
) -> tuple[list[str], int | None]:
    """`mint` without a model per secret (bulk registration answers 10,000 at once): the
    secrets, in the order of `bound_stamps`, and when they expire (absolute Unix time, as
    DiracX reports it; None: never)."""
    plains, hashes = new_secrets(len(bound_stamps))
    expires_at = (
        now + timedelta(minutes=constraints.expiration_minutes)
        if constraints.expiration_minutes is not None
        else None
    )
    await db_secrets.insert_secrets(
        conn,
        hashes=hashes,
        vos=[vo, *constraints.vos],
        bound_stamps=bound_stamps,
        sites=constraints.sites,
        ces=constraints.ces,
        queues=constraints.queues,
        expires_at=expires_at,
        uses=constraints.pilot_secret_use_count_max,
        now=now,
    )
    expires_in = int(expires_at.replace(tzinfo=UTC).timestamp()) if expires_at is not None else None
    return plains, expires_in
