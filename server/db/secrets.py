"""Pilot secrets, kept only as SHA-256 hashes, with their constraints."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from server.db.schema import SECRET_STAMPS as STAMPS
from server.db.schema import SECRETS


def dump_list(values: Sequence[str]) -> str:
    return json.dumps(sorted(set(values)))


async def insert_secrets(
    conn: AsyncConnection,
    *,
    hashes: Sequence[str],
    vos: Sequence[str],
    bound_stamps: Sequence[str | None],
    sites: Sequence[str],
    ces: Sequence[str],
    queues: Sequence[str],
    expires_at: datetime | None,
    uses: int | None,
    now: datetime,
) -> list[int]:
    """Insert one secret per hash (secret i bound to `bound_stamps[i]` unless None); returns ids."""
    common = {
        "VOs": dump_list(vos),
        "Sites": dump_list(sites),
        "CEs": dump_list(ces),
        "Queues": dump_list(queues),
        "ExpiresAt": expires_at,
        "RemainingUses": uses,
        "CreatedAt": now,
        "LastUsedAt": None,
        "Revoked": False,
    }
    await conn.execute(insert(SECRETS), [{"SecretHash": h, **common} for h in hashes])
    ids: dict[str, int] = {}
    for start in range(0, len(hashes), 900):
        chunk = hashes[start : start + 900]
        rows = await conn.execute(
            select(SECRETS.c.SecretHash, SECRETS.c.SecretID).where(SECRETS.c.SecretHash.in_(chunk))
        )
        ids.update({r[0]: r[1] for r in rows})
    bindings = [
        {"SecretID": ids[h], "PilotStamp": stamp}
        for h, stamp in zip(hashes, bound_stamps, strict=True)
        if stamp is not None
    ]
    if bindings:
        await conn.execute(insert(STAMPS), bindings)
    return [ids[h] for h in hashes]
