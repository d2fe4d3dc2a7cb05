"""Key rotation seen by a real, long-running A-REX: it keeps accepting CE tokens across a
rotation of our key set, without a restart of either side.

A-REX 6.17 (the test CE) fetches the issuer's discovery document and JWKS for every token it
checks (src/hed/libs/otokens/jwse_keys.cpp, JWSE::ExtractPublicKey); ARC 7 keeps them per
issuer for up to an hour but fetches again when a token names a key id it has not seen. Either
way a new key must be in the JWKS before it signs (that is the rotation's publication delay),
and an old key must stay there while tokens it signed live (the grace). Both are checked here.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx
import pytest
from joserfc.jws import extract_compact

from director.ce.arc import ARCCE, ARCCEConfig
from director.render import TemplateRenderer
from server.keys import activate_keyset, rotate_keyset
from tests.conftest import LiveServer
from tests.director.ce.arc_infra import ARCInfra, arc_env_file, poll
from tests.director.ce.test_arc_live import queue_for

pytestmark = [pytest.mark.arc, pytest.mark.slow]


def arched_pid() -> str:
    return (arc_env_file().parent / "run" / "arched.pid").read_text().strip()


def rsa_kid(token: str) -> str:
    header = extract_compact(token.encode()).protected
    assert header["alg"] == "RS256"
    kid = header["kid"]
    assert isinstance(kid, str)
    return kid


async def test_a_rex_accepts_tokens_across_a_rotation_without_restart(
    arc_infra: ARCInfra,
    arc_issuer: LiveServer,
    tmp_path: Path,
) -> None:
    pid = arched_pid()
    trust = ssl.create_default_context(cafile=str(arc_infra.ca_file))
    server = httpx.AsyncClient(base_url=arc_issuer.url, verify=trust)
    token_file = tmp_path / "ce.token"
    ce = ARCCE(
        ARCCEConfig(url=arc_infra.url, ca_file=arc_infra.ca_file, token_file=token_file),
        renderer=TemplateRenderer(),
        work_dir=tmp_path,
    )
    queue = queue_for(arc_infra, "rotation")

    async def ce_token() -> str:
        r = await server.post(
            "/api/auth/ce-token",
            json={"audience": arc_infra.url},
            headers={"Authorization": f"Bearer {arc_issuer.director_token}"},
        )
        assert r.status_code == 200, r.text
        token: str = r.json()["access_token"]
        return token

    async def published() -> set[str]:
        keys = (await server.get("/.well-known/jwks.json")).json()["keys"]
        return {k["kid"] for k in keys}

    async def accepted(token: str) -> bool:
        token_file.write_text(token + "\n")  # the backend opens new connections for it
        load = await ce.load(queue)  # raises CEPermanentError("auth") on a 403
        return load.free_slots is not None

    try:
        before = await ce_token()
        old_kid = rsa_kid(before)
        assert await accepted(before)

        # 1. the next keys are published; the old ones still sign
        _, new_rsa = rotate_keyset(arc_issuer.settings.keyset_path, delay=3600)

        async def new_key_published() -> bool:
            return new_rsa in await published()

        assert await poll(new_key_published, timeout=60, interval=0.5)
        during = await ce_token()
        assert rsa_kid(during) == old_kid
        assert await accepted(during)

        # 2. the delay is over (the operator says so): the new RSA key signs CE tokens
        assert new_rsa in activate_keyset(arc_issuer.settings.keyset_path)
        after = during

        async def new_key_signs() -> bool:
            nonlocal after
            after = await ce_token()
            return rsa_kid(after) == new_rsa

        assert await poll(new_key_signs, timeout=60, interval=0.5)
        assert await accepted(after)  # A-REX found the new key in the JWKS it fetched

        # 3. tokens the old key signed still work during the grace
        assert old_kid in await published()
        assert await accepted(before)
        assert arched_pid() == pid  # A-REX ran through it all
    finally:
        await ce.close()
        await server.aclose()
