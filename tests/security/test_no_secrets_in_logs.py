"""Secrets and tokens never reach a log record.

Every log record the process emits (root logger at DEBUG, so SQLAlchemy's statements, their
parameters and result rows are included, and uvicorn's loggers too) is captured across a flow
that mints secrets, exchanges them (right and wrong), refreshes, reuses a refresh token,
ships log lines carrying a `--pilotSecret` option in each form the DIRAC pilot uses, mints a
CE token and revokes in both forms. No record may contain any secret value or any JWT.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterator
from http import HTTPStatus
from typing import Any

import httpx
import pytest

from server.identity import GENERIC_PILOT
from tests.conftest import LiveServer, Roles
from tests.security.forge import claims_of
from tests.security.routes import has_route

JWT = re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*")
#: uvicorn's loggers do not propagate to the root; "uvicorn.access" is left alone on purpose:
#: the server runs uvicorn with access_log=False (uvicorn's line holds the query string, where
#: the DIRAC pilot puts its refresh token) and logs requests itself without it.
PROPAGATE_OFF = ("uvicorn", "uvicorn.error")
#: The test's own HTTP client logs the URLs it calls, query string included: not the server.
CLIENT_LOGGERS = ("httpx", "httpcore")


@pytest.fixture
def all_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """caplog at DEBUG on the root logger, plus the loggers that do not propagate to it."""
    caplog.set_level(logging.DEBUG)
    # SQLAlchemy pins its own logger at WARNING; an operator debugging SQL turns it up, and
    # then statements, parameters (INFO) and result rows (DEBUG) must hold no secret either
    caplog.set_level(logging.DEBUG, logger="sqlalchemy.engine")
    saved = []
    for name in PROPAGATE_OFF:
        logger = logging.getLogger(name)
        saved.append((logger, logger.level))
        logger.addHandler(caplog.handler)
        logger.setLevel(logging.DEBUG)
    try:
        yield caplog
    finally:
        for logger, level in saved:
            logger.removeHandler(caplog.handler)
            logger.setLevel(level)


def _record_text(record: logging.LogRecord) -> str:
    parts = [record.getMessage(), repr(record.args), record.exc_text or ""]
    if record.exc_info and record.exc_info[1] is not None:
        parts.append(repr(record.exc_info[1]))
    parts.extend(repr(v) for k, v in vars(record).items() if k not in logging.LogRecord.__dict__)
    return "\n".join(parts)


def _lines(secret: str) -> list[dict[str, str]]:
    """The pilot's first batches: its command line with the secret, in every form."""
    base = {"timestamp": "2026-01-01T00:00:00Z", "scope": "Pilot"}
    return [
        {
            **base,
            "severity": "DEBUG",
            "message": f"Options list: [('-S', 'LHCb-Production'), ('--pilotSecret', '{secret}')]",
        },
        {
            **base,
            "severity": "INFO",
            "message": f"python3 dirac-pilot.py --pilotSecret={secret} -n X",
        },
        {
            **base,
            "severity": "INFO",
            "message": f"python3 dirac-pilot.py --pilotSecret {secret} -d",
        },
        {**base, "severity": "COMMAND", "message": f'"--pilotSecret", "{secret}"'},
    ]


async def _flow(
    admin: httpx.AsyncClient,
    director: httpx.AsyncClient,
    anonymous: httpx.AsyncClient,
    legacy: httpx.AsyncClient,
    app: Any,
) -> tuple[set[str], set[str]]:
    """Run everything that handles a secret or a token; returns (secrets, tokens) seen."""
    secrets: set[str] = set()
    tokens: set[str] = set()
    stamps = [uuid.uuid4().hex for _ in range(2)]
    r = await admin.post(
        "/api/pilots/bulk",
        json={
            "vo": "lhcb",
            "pilots": [{"pilot_stamp": s} for s in stamps],
            "mint_secrets": True,
            "secret_constraints": {"pilot_secret_use_count_max": 3},
        },
    )
    assert r.status_code == HTTPStatus.CREATED, r.text
    bound = [s["pilot_secret"] for s in r.json()["secrets"]]
    secrets.update(bound)
    r = await director.post("/api/pilots/secrets", json={"vo": "lhcb", "n": 2})
    assert r.status_code == HTTPStatus.CREATED, r.text
    unbound = [s["pilot_secret"] for s in r.json()]
    secrets.update(unbound)
    wrong = uuid.uuid4().hex + uuid.uuid4().hex
    secrets.add(wrong)
    if not has_route(app, "POST", "/api/auth/secret-exchange"):
        return secrets, tokens

    async def exchange(stamp: str, secret: str, **extra: str) -> httpx.Response:
        return await anonymous.post(
            "/api/auth/secret-exchange",
            json={"pilot_stamp": stamp, "pilot_secret": secret, **extra},
        )

    assert (await exchange(stamps[0], wrong)).status_code == HTTPStatus.UNAUTHORIZED
    assert (await exchange(stamps[1], bound[0])).status_code == HTTPStatus.UNAUTHORIZED
    r = await exchange(stamps[0], bound[0])
    assert r.status_code == HTTPStatus.OK, r.text
    first = r.json()
    tokens.update([first["access_token"], first["refresh_token"]])
    vacuum = uuid.uuid4().hex
    r = await exchange(
        vacuum, unbound[0], vo="lhcb", grid_type="DIRAC", grid_site="X", status="Running"
    )
    if r.status_code == HTTPStatus.OK:
        tokens.update(v for k, v in r.json().items() if k.endswith("token") and v)
    # refresh, then reuse the spent refresh token (family revocation, which the server logs)
    r = await anonymous.post(
        "/api/auth/pilot-token",
        json={"refresh_token": first["refresh_token"], "pilot_stamp": stamps[0]},
    )
    assert r.status_code == HTTPStatus.OK, r.text
    second = r.json()
    tokens.update([second["access_token"], second["refresh_token"]])
    r = await anonymous.post(
        "/api/auth/pilot-token",
        json={"refresh_token": first["refresh_token"], "pilot_stamp": stamps[0]},
    )
    assert r.status_code == HTTPStatus.UNAUTHORIZED, r.text
    # a fresh pilot ships its command line, secret included
    r = await exchange(stamps[1], bound[1])
    assert r.status_code == HTTPStatus.OK, r.text
    third = r.json()
    tokens.update([third["access_token"], third["refresh_token"]])
    pilot = {"Authorization": f"Bearer {third['access_token']}"}
    r = await anonymous.post(
        "/api/pilots/internal/message",
        json={"pilot_stamp": stamps[1], "lines": _lines(bound[1])},
        headers=pilot,
    )
    assert r.status_code == HTTPStatus.NO_CONTENT, r.text
    r = await legacy.post(
        "/api/pilots/legacy/message", json={"pilot_stamp": stamps[1], "lines": _lines(bound[1])}
    )
    assert r.status_code == HTTPStatus.NO_CONTENT, r.text
    # what an operator reads back is redacted as well
    r = await admin.post(
        "/api/pilots/search/logs",
        json={"search": [{"parameter": "PilotStamp", "operator": "eq", "value": stamps[1]}]},
    )
    assert r.status_code == HTTPStatus.OK, r.text
    assert r.json(), "the pilot's lines were not stored"
    assert bound[1] not in r.text, "a stored log line still holds the secret"
    if has_route(app, "POST", "/api/auth/ce-token"):
        r = await director.post("/api/auth/ce-token", json={"audience": "https://ce.example.org"})
        assert r.status_code == HTTPStatus.OK, r.text
        tokens.add(r.json()["access_token"])
    # a forged token is still a token: refusing it must not print it
    forged = third["access_token"][:-8] + "AAAAAAAA"
    tokens.add(forged)
    r = await anonymous.post(
        "/api/pilots/search", json={}, headers={"Authorization": f"Bearer {forged}"}
    )
    assert r.status_code == HTTPStatus.UNAUTHORIZED
    # revoke: RFC 7009 form fields, and the pilot's query-string form
    r = await anonymous.post(
        "/api/auth/revoke",
        data={"token": second["refresh_token"], "token_type_hint": "refresh_token"},
    )
    assert r.status_code == HTTPStatus.OK, r.text
    r = await anonymous.post(
        "/api/auth/revoke", params={"refresh_token": third["refresh_token"], "client_id": "pilot"}
    )
    assert r.status_code == HTTPStatus.OK, r.text
    return secrets, tokens


def _assert_clean(records: list[logging.LogRecord], secrets: set[str], tokens: set[str]) -> None:
    assert records, "nothing was captured: the capture is broken"
    leaks = []
    for record in records:
        if record.name.split(".")[0] in CLIENT_LOGGERS:
            continue
        text = _record_text(record)
        found = [f"secret {s[:6]}..." for s in secrets if s in text]
        found += [f"token {t[:12]}..." for t in tokens if t in text]
        found += [f"JWT-shaped {m[:12]}..." for m in JWT.findall(text)]
        if found:
            leaks.append(
                f"{record.name}:{record.levelname}: {found} in {record.getMessage()[:200]!r}"
            )
    assert not leaks, "\n".join(leaks)


async def test_no_secret_or_token_in_logs_in_process(
    api: Roles, all_logs: pytest.LogCaptureFixture
) -> None:
    secrets, tokens = await _flow(
        api.admin, api.director, api.anonymous, api.legacy_pilot, api.sut.app
    )
    _assert_clean(all_logs.records, secrets, tokens)
    # the capture saw the database, including the stored (redacted) command line
    sql = [_record_text(r) for r in all_logs.records if r.name.startswith("sqlalchemy")]
    assert any("pilotSecret" in text for text in sql)


async def test_no_secret_or_token_in_logs_of_a_live_server(
    live_server: LiveServer, all_logs: pytest.LogCaptureFixture
) -> None:
    """The same over real HTTP (uvicorn in this process), so uvicorn's loggers are in."""

    def client(token: str | None = None) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.AsyncClient(base_url=live_server.url, headers=headers, timeout=30)

    from server.app import create_app

    app = create_app(live_server.settings)  # only for its route table
    legacy_token = live_server.token("pilot", "lhcb", [GENERIC_PILOT])
    async with (
        client(live_server.admin_token) as admin,
        client(live_server.director_token) as director,
        client() as anonymous,
        client(legacy_token) as legacy,
    ):
        secrets, tokens = await _flow(admin, director, anonymous, legacy, app)
    tokens.add(legacy_token)
    _assert_clean(all_logs.records, secrets, tokens)


def test_the_scan_catches_a_leak() -> None:
    """Control: the scan flags a secret, a token and a JWT-shaped string when they are there."""
    token = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "got %s", ("s3cr3t",), None)
    with pytest.raises(AssertionError):
        _assert_clean([record], {"s3cr3t"}, set())
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "auth %s", (token,), None)
    with pytest.raises(AssertionError):
        _assert_clean([record], set(), set())
    assert claims_of(token) == {"sub": "x"}
