"""Key rotation: the next key is published before it signs, a replaced key verifies for a grace
period and then leaves the JWKS, and a store reading a shared file follows changes made by
another process. Time is an injected clock; nothing sleeps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from joserfc.jws import extract_compact

from server.cli import SystemExit2, keys_command
from server.identity import ADMIN, mint_user_token
from server.installation import key_grace
from server.keys import (
    NEXT,
    RELOAD_CHECK_SECONDS,
    RETIRING,
    SIGNING,
    InvalidToken,
    KeyStore,
    activate_keyset,
    read_keyset,
    record_signed,
    rotate_keyset,
)
from server.settings import ServerSettings

ISSUER = "https://sd.example.org"
T0 = 1_900_000_000


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def kid_of(token: str) -> str:
    kid = extract_compact(token.encode()).protected["kid"]
    assert isinstance(kid, str)
    return kid


def public_kids(store: KeyStore) -> set[str]:
    return {k["kid"] for k in store.public_jwks()["keys"]}


def token(store: KeyStore, lifetime: int = 600) -> str:
    return mint_user_token(store, sub="a", vo="lhcb", properties=[ADMIN], lifetime=lifetime)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> KeyStore:
    return KeyStore(tmp_path / "jwks.json", ISSUER, clock=clock)


def test_the_next_key_is_published_before_it_signs(store: KeyStore, clock: Clock) -> None:
    old_ed, old_rsa = store.signing_kid("EdDSA"), store.signing_kid("RS256")
    new_ed, new_rsa = rotate_keyset(store.path, delay=3600, grace=7200, now=T0)
    clock.advance(RELOAD_CHECK_SECONDS)  # the running server looks at the file again
    assert {new_ed, new_rsa, old_ed, old_rsa} <= public_kids(store)  # published at once
    assert kid_of(token(store)) == old_ed  # ... but the old keys still sign
    assert store.signing_kid("RS256") == old_rsa
    assert {s.kid: s.state for s in store.statuses()} == {
        new_ed: NEXT,
        new_rsa: NEXT,
        old_ed: SIGNING,
        old_rsa: SIGNING,
    }

    clock.advance(3600 - RELOAD_CHECK_SECONDS)  # the delay is over: no one writes anything
    assert kid_of(token(store)) == new_ed
    assert store.signing_kid("RS256") == new_rsa
    assert {s.kid: s.state for s in store.statuses()}[old_ed] == RETIRING


def test_a_replaced_key_verifies_for_the_grace_then_leaves(store: KeyStore, clock: Clock) -> None:
    old_kid = store.signing_kid()
    old = token(store, lifetime=10_000)
    rotate_keyset(store.path, delay=0, grace=7200, now=T0)
    clock.advance(RELOAD_CHECK_SECONDS)
    assert kid_of(token(store)) != old_kid
    assert store.verify(old)["sub"] == "a"  # tokens the old key signed keep working

    clock.advance(7200 - RELOAD_CHECK_SECONDS - 1)
    assert store.verify(old)["sub"] == "a"  # verified (and remembered) a second before the end
    assert old_kid in public_kids(store)
    clock.advance(1)
    assert old_kid not in public_kids(store)  # the grace is over: out of the JWKS
    with pytest.raises(InvalidToken) as refused:
        store.verify(old)  # and the remembered verification is forgotten with the key
    assert refused.value.reason == "unknown key id"

    assert old_kid in {k["kid"] for k in read_keyset(store.path)["keys"]}
    rotate_keyset(store.path, now=int(clock()))  # the next rotation removes it from the file
    assert old_kid not in {k["kid"] for k in read_keyset(store.path)["keys"]}


def test_a_long_token_printed_by_the_cli_outlives_the_grace(store: KeyStore) -> None:
    kid = store.signing_kid()
    record_signed(store.path, kid, T0 + 90 * 86400)  # a director token for 90 days
    rotate_keyset(store.path, delay=0, grace=3600, now=T0)
    times = read_keyset(store.path)["key_times"]
    assert times[kid]["verify_until"] == T0 + 90 * 86400
    other = next(k for k in times if k != kid and times[k]["verify_until"] is not None)
    assert times[other]["verify_until"] == T0 + 3600  # the RSA key: nothing printed with it
    # a token printed after the rotation was planned moves the end as well
    record_signed(store.path, kid, T0 + 100 * 86400)
    assert read_keyset(store.path)["key_times"][kid]["verify_until"] == T0 + 100 * 86400


def test_retire_now_after_a_leak(store: KeyStore, clock: Clock) -> None:
    leaked = token(store)
    new = rotate_keyset(store.path, retire_now=True, now=T0)
    assert [k["kid"] for k in read_keyset(store.path)["keys"]] == new
    clock.advance(RELOAD_CHECK_SECONDS)
    with pytest.raises(InvalidToken):
        store.verify(leaked)
    assert kid_of(token(store)) == new[0]


def test_activate_lets_the_published_keys_sign_at_once(store: KeyStore, clock: Clock) -> None:
    new = rotate_keyset(store.path, delay=3600, now=T0)
    assert sorted(activate_keyset(store.path, now=T0 + 60)) == sorted(new)
    clock.advance(60)
    assert kid_of(token(store)) == new[0]
    assert activate_keyset(store.path, now=T0 + 61) == []


def test_another_process_sees_a_rotation_within_the_check_interval(
    store: KeyStore, clock: Clock, tmp_path: Path
) -> None:
    other_host = KeyStore(store.path, ISSUER, clock=clock)
    before = public_kids(other_host)
    new = rotate_keyset(store.path, delay=0, now=T0)
    assert public_kids(other_host) == before  # no stat before the interval is over
    clock.advance(RELOAD_CHECK_SECONDS)
    assert set(new) <= public_kids(other_host)
    assert kid_of(token(other_host)) == new[0]
    assert other_host.verify(token(store))["sub"] == "a"


def test_a_broken_file_keeps_the_keys_in_memory(store: KeyStore, clock: Clock) -> None:
    good = token(store)
    store.path.write_text('{"keys": [')  # someone editing the secret by hand
    clock.advance(RELOAD_CHECK_SECONDS)
    assert store.verify(good)["sub"] == "a"
    assert kid_of(token(store)) == kid_of(good)


def test_a_key_set_without_times_keeps_working(tmp_path: Path, clock: Clock) -> None:
    """Key sets written before the times: the first key of each algorithm signs, the others
    verify until a rotation gives them an end."""
    path = tmp_path / "jwks.json"
    first = KeyStore(path, ISSUER, clock=clock)
    old = token(first)
    document = read_keyset(path)
    newer = KeyStore(tmp_path / "other.json", ISSUER)
    legacy = {"issuer": ISSUER, "keys": read_keyset(newer.path)["keys"] + document["keys"]}
    path.write_text(json.dumps(legacy))
    store = KeyStore(path, ISSUER, clock=clock)
    assert store.signing_kid() == legacy["keys"][0]["kid"]
    assert store.verify(old)["sub"] == "a"
    rotate_keyset(path, delay=0, grace=60, now=T0)
    times = read_keyset(path)["key_times"]
    assert all(times[k["kid"]]["verify_until"] == T0 + 60 for k in legacy["keys"])


def test_the_default_grace_covers_every_lifetime_the_server_signs() -> None:
    settings = ServerSettings(refresh_token_lifetime=3 * 86400, access_token_lifetime=3600)
    assert key_grace(settings) == 3 * 86400
    assert key_grace(ServerSettings(key_grace=60)) == 60


def test_keys_command_rotates_the_file_a_setting_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import argparse

    shared = tmp_path / "secret" / "jwks.json"
    KeyStore(shared, ISSUER)
    monkeypatch.setenv("SITE_DIRECTOR_KEY_PUBLICATION_DELAY", "120")

    def run(action: str, **flags: object) -> str:
        args: dict[str, object] = {"data_dir": None, "keys_file": str(shared), "delay": None}
        args |= {"config": None}  # the parser's --config (the server settings file), unset
        args |= {"grace": None, "retire_now": False, **flags}
        assert keys_command(argparse.Namespace(action=action, **args)) == 0
        return capsys.readouterr().out

    out = run("rotate")
    assert "they sign in 120 s" in out
    assert out.count(" next ") == 2
    assert out.count(" signing ") == 2
    assert "signing now" in run("activate")
    with pytest.raises(SystemExit2, match="--data-dir"):
        run("list", keys_file=None)
    with pytest.raises(SystemExit2, match="go with rotate"):
        run("list", delay=5)


def test_tokens_are_the_bytes_joserfc_signs(store: KeyStore) -> None:
    """`KeyStore.sign` makes Ed25519 tokens itself (a fast path): Ed25519 is deterministic,
    so they must be exactly what `joserfc.jwt.encode` makes of the same header and claims,
    and verify as any other token."""
    from joserfc import jwt

    claims = {"sub": "a:é", "vo": "lhcb", "iss": ISSUER, "jti": "j", "exp": T0 + 600, "x": [1]}
    signed = store.sign(dict(claims), typ="at+jwt")
    kid = kid_of(signed)
    key = store._keyset.get_by_kid(kid)
    expected = jwt.encode(
        {"alg": "EdDSA", "kid": kid, "typ": "at+jwt"}, dict(claims), key, algorithms=["EdDSA"]
    )
    assert signed == expected
    assert store.verify(signed, typ="at+jwt", now=T0)["sub"] == "a:é"
