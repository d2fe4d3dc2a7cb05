"""A single-use secret under a crowd: 64 concurrent exchanges, exactly one token, 200 times,
on every database (issue 8). The race is real: the app runs in this event loop and the 64
requests interleave on the database through the connection pool.

SECURITY_SINGLE_USE_TRIALS overrides the trial count (200) for a quicker run by hand.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections import Counter
from http import HTTPStatus

import pytest

from tests.conftest import Roles
from tests.security.routes import has_route

TRIALS = int(os.environ.get("SECURITY_SINGLE_USE_TRIALS", "200"))
CROWD = 64
#: Trials raced at the same time: more pressure on the pool, and a shorter run.
PARALLEL_TRIALS = 4


@pytest.mark.slow
async def test_single_use_secret_has_exactly_one_winner(api: Roles) -> None:
    if not has_route(api.sut.app, "POST", "/api/auth/secret-exchange"):
        return
    stamps = [uuid.uuid4().hex for _ in range(TRIALS)]
    r = await api.admin.post(
        "/api/pilots/bulk",
        json={
            "vo": "lhcb",
            "pilots": [{"pilot_stamp": s} for s in stamps],
            "mint_secrets": True,
            "secret_constraints": {"pilot_secret_use_count_max": 1},
        },
    )
    assert r.status_code == HTTPStatus.CREATED, r.text
    secrets = {m["pilot_stamp"]: m["pilot_secret"] for m in r.json()["secrets"]}

    async def trial(stamp: str) -> tuple[int, Counter[int], set[str]]:
        body = {"pilot_stamp": stamp, "pilot_secret": secrets[stamp]}
        responses = await asyncio.gather(
            *(api.anonymous.post("/api/auth/secret-exchange", json=body) for _ in range(CROWD))
        )
        codes = Counter(r.status_code for r in responses)
        tokens = {r.json()["access_token"] for r in responses if r.status_code == HTTPStatus.OK}
        return codes[HTTPStatus.OK], codes, tokens

    violations = []
    for start in range(0, TRIALS, PARALLEL_TRIALS):
        batch = stamps[start : start + PARALLEL_TRIALS]
        for stamp, (wins, codes, tokens) in zip(
            batch, await asyncio.gather(*(trial(s) for s in batch)), strict=True
        ):
            if wins != 1 or codes[HTTPStatus.UNAUTHORIZED] != CROWD - 1 or len(tokens) != wins:
                violations.append(f"{stamp}: {dict(codes)}")
    print(f"\n{api.sut.backend}: {TRIALS} trials x {CROWD} exchanges, violations={len(violations)}")
    assert not violations, violations[:10]
