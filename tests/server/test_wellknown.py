"""Discovery documents, health, metrics, key rotation and the schema migrations."""

from __future__ import annotations

from http import HTTPStatus
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from server.db.log_partitions import is_log_partition
from server.db.pilot_counts import PILOT_COUNTS
from server.db.schema import metadata
from server.identity import ADMIN, mint_user_token
from server.keys import KeyStore, rotate_keyset
from tests.conftest import ISSUER, Roles


async def test_openid_configuration_and_jwks(api: Roles) -> None:
    r = await api.anonymous.get("/.well-known/openid-configuration")
    assert r.status_code == HTTPStatus.OK
    conf = r.json()
    assert conf["issuer"] == ISSUER
    assert conf["jwks_uri"] == f"{ISSUER}/.well-known/jwks.json"
    assert conf["token_endpoint"].startswith(ISSUER)
    r = await api.anonymous.get("/.well-known/jwks.json")
    keys = r.json()["keys"]
    assert {k["alg"] for k in keys} >= {"EdDSA", "RS256"}
    assert all("d" not in k and "p" not in k for k in keys), "private parts must never leave"
    assert all(k["kid"] for k in keys)


async def test_health_and_metrics(api: Roles) -> None:
    r = await api.anonymous.get("/api/health")
    assert r.status_code == HTTPStatus.OK
    assert r.json() == {"status": "ok"}
    await api.user.post("/api/pilots/search", json={})
    r = await api.anonymous.get("/metrics")
    assert r.status_code == HTTPStatus.OK
    assert 'site_director_server_requests_total{method="POST",route="/api/pilots/search"' in r.text


def test_keyset_file_is_private_and_rotation_keeps_old_keys(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    store = KeyStore(path, ISSUER)
    assert path.stat().st_mode & 0o777 == 0o600
    old = mint_user_token(store, sub="a", vo="lhcb", properties=[ADMIN], lifetime=60)
    new_kids = rotate_keyset(path, delay=0)
    assert path.stat().st_mode & 0o777 == 0o600
    rotated = KeyStore(path, ISSUER)
    new = mint_user_token(rotated, sub="a", vo="lhcb", properties=[ADMIN], lifetime=60)
    assert rotated.verify(old)["sub"] == "a"  # old keys keep verifying
    from joserfc.jws import extract_compact

    assert extract_compact(new.encode()).protected["kid"] in new_kids  # the new key signs


def declared_elsewhere(name: str | None, type_: str, _parents: object) -> bool:
    """PilotLogs' partitions (PostgreSQL) mirror their parent; PilotCounts (SQLite) is kept by
    triggers and declared apart (`server.db.pilot_counts`): the schema declares neither."""
    if type_ != "table" or name is None:
        return True
    return not (is_log_partition(name) or name == PILOT_COUNTS.name)


async def test_migrations_match_the_schema(api: Roles) -> None:
    """`db upgrade` builds exactly the tables the code declares, on every backend."""
    engine = api.sut.app.state.ctx.db.engine

    def diff(conn: object) -> list[object]:
        ctx = MigrationContext.configure(
            conn,  # type: ignore[arg-type]
            opts={"compare_type": False, "include_name": declared_elsewhere},
        )
        return [
            d
            for d in compare_metadata(ctx, metadata)
            if not (
                isinstance(d, tuple) and d[0] == "remove_table" and d[1].name == "alembic_version"
            )
        ]

    async with engine.connect() as conn:
        assert await conn.run_sync(diff) == []
