"""The ARC backend against a real A-REX (fork back-end on loopback), with both credentials:
the test user's X.509 certificate, and bearer tokens our own server issued and A-REX verified
through our discovery documents over HTTPS.

Jobs are tiny shell wrappers; the CE's own pace (its fork back-end notices a job's end every
10-20 s) sets how long a test polls, and no test asserts a duration.
"""

from __future__ import annotations

import secrets
import ssl
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import httpx
import pytest

from director.ce.arc import (
    ARCCE,
    OWN_JOBS_TTL_S,
    ARCCEConfig,
    CETokenSource,
    parse_reference,
)
from director.ce.base import PilotSubmission, QueueSpec, StatusResult
from director.ce.credentials import CredentialSource, ServerCredentials
from director.client import ServerClient, TokenSource
from director.errors import CEPermanentError, CETemporaryError
from director.render import TemplateRenderer
from server.models import FINAL_STATUSES, PilotStatus
from tests.conftest import LiveServer
from tests.director.ce.arc_infra import ARCInfra, poll

pytestmark = [pytest.mark.arc, pytest.mark.slow]
OK_PILOT = '#!/bin/sh\necho "pilot $PILOT_STAMP says hello"\necho "to stderr" >&2\nexit 0\n'
FAILING_PILOT = '#!/bin/sh\necho "about to fail"\nexit 3\n'
SLEEPING_PILOT = "#!/bin/sh\nsleep 60\n"  # long enough to be seen running and killed


def stamp() -> str:
    return secrets.token_hex(16)


def x509_config(infra: ARCInfra, **overrides: object) -> ARCCEConfig:
    return ARCCEConfig.model_validate(
        {
            "url": infra.url,
            "cert_file": infra.user_cert,
            "key_file": infra.user_key,
            "ca_file": infra.ca_file,
            **overrides,
        }
    )


def make_ce(
    config: ARCCEConfig, tmp_path: Path, credentials: CredentialSource | None = None
) -> ARCCE:
    return ARCCE(config, renderer=TemplateRenderer(), work_dir=tmp_path, credentials=credentials)


def server_credentials(server: LiveServer, token_file: Path, ca_file: Path) -> ServerCredentials:
    """What the director injects: CE tokens bought with its service token from its server."""
    return ServerCredentials(ServerClient(server.url, TokenSource(token_file), ca_bundle=ca_file))


RUN = secrets.token_hex(3)
"""In every site name: runs sharing the one CE (reruns, parallel sessions) never mix."""


def queue_for(infra: ARCInfra, name: str = "test") -> QueueSpec:
    return QueueSpec(
        name=infra.queue,
        site=f"LCG.ARC-{name}-{RUN}.test",
        ce="localhost",
        environment={"SITE_NOTE": 'quoted "value" with spaces'},
    )


async def wait_final(ce: ARCCE, references: Sequence[str]) -> list[StatusResult]:
    latest: list[StatusResult] = []

    async def ended() -> bool:
        nonlocal latest
        latest = await ce.status(references)
        return all(r.status in FINAL_STATUSES for r in latest)

    assert await poll(ended, timeout=180), [(r.ce_state, r.status) for r in latest]
    return latest


@pytest.fixture
async def x509_ce(arc_infra: ARCInfra, tmp_path: Path) -> AsyncIterator[ARCCE]:
    ce = make_ce(x509_config(arc_infra), tmp_path)
    yield ce
    await ce.close()


async def test_x509_pilots_end_done_and_failed_with_output_then_clean(
    x509_ce: ARCCE,
    arc_infra: ARCInfra,
) -> None:
    queue = queue_for(arc_infra, "x509")
    good, bad = stamp(), stamp()
    submitted = await x509_ce.submit(
        queue, [PilotSubmission(good, OK_PILOT), PilotSubmission(bad, FAILING_PILOT)]
    )
    assert [r.stamp for r in submitted] == [good, bad]
    assert all(r.ok for r in submitted), submitted
    refs = [r.reference for r in submitted if r.reference]
    assert all(parse_reference(ref)[0] == x509_ce.config.netloc for ref in refs)

    listed = {job.stamp: job.reference for job in await x509_ce.list_jobs(queue)}
    assert listed == {good: refs[0], bad: refs[1]}
    assert await x509_ce.list_jobs(queue_for(arc_infra, "another-queue")) == []

    done, failed = await wait_final(x509_ce, refs)
    assert (done.status, done.ce_state, done.exit_code) == (PilotStatus.DONE, "FINISHED", 0)
    assert (failed.status, failed.ce_state, failed.exit_code) == (PilotStatus.FAILED, "FAILED", 3)
    assert "3" in failed.reason

    output = await x509_ce.output(refs[0])
    assert f"pilot {good} says hello" in output.stdout
    assert "to stderr" in output.stderr
    assert "about to fail" in (await x509_ce.output(refs[1])).stdout

    assert all(r.ok for r in await x509_ce.clean(refs))
    gone: list[StatusResult] = []

    async def cleaned() -> bool:  # A-REX queues the cleaning ("202 Queued for cleaning")
        nonlocal gone
        gone = await x509_ce.status(refs)
        return all("no longer knows" in r.reason for r in gone)

    assert await poll(cleaned), gone
    assert [r.status for r in gone] == [PilotStatus.ABORTED, PilotStatus.ABORTED]
    assert await x509_ce.list_jobs(queue) == []


async def test_load_counts_fresh_jobs_as_waiting_then_kill_aborts(
    x509_ce: ARCCE,
    arc_infra: ARCInfra,
) -> None:
    queue = queue_for(arc_infra, "load")
    moment = [0.0]
    x509_ce.clock = lambda: moment[0]
    submitted = await x509_ce.submit(
        queue, [PilotSubmission(stamp(), SLEEPING_PILOT) for _ in range(3)]
    )
    refs = [r.reference for r in submitted if r.reference]
    assert len(refs) == 3
    # just accepted: GLUE2 has not seen them yet, they must count all the same (DIRAC #8208)
    load = await x509_ce.load(queue)
    assert load.waiting + load.running >= 3

    async def started() -> bool:
        return any(r.status is PilotStatus.RUNNING for r in await x509_ce.status(refs))

    assert await poll(started)
    moment[0] += OWN_JOBS_TTL_S + 1  # the listing load() keeps for a while has expired
    assert (await x509_ce.load(queue)).running >= 1

    assert all(r.ok for r in await x509_ce.kill(refs))
    killed = await wait_final(x509_ce, refs)
    assert {r.status for r in killed} == {PilotStatus.ABORTED}
    assert {r.ce_state for r in killed} == {"KILLED"}
    assert all(r.ok for r in await x509_ce.clean(refs))


async def test_ce_token_from_our_server_submits_and_kills(
    arc_infra: ARCInfra,
    arc_issuer: LiveServer,
    tmp_path: Path,
) -> None:
    """The director's service token buys a CE token from our server; A-REX verifies it
    against our JWKS over HTTPS (test CA) and maps the caller."""
    service_token = tmp_path / "service.token"
    service_token.write_text(arc_issuer.director_token)
    service_token.chmod(0o600)
    config = ARCCEConfig(url=arc_infra.url, ca_file=arc_infra.ca_file, ce_token=CETokenSource())
    ce = make_ce(config, tmp_path, server_credentials(arc_issuer, service_token, arc_infra.ca_file))
    try:
        queue = queue_for(arc_infra, "token")
        good, sleeper = stamp(), stamp()
        submitted = await ce.submit(
            queue, [PilotSubmission(good, OK_PILOT), PilotSubmission(sleeper, SLEEPING_PILOT)]
        )
        assert all(r.ok for r in submitted), submitted
        refs = [r.reference for r in submitted if r.reference]
        assert {j.stamp for j in await ce.list_jobs(queue)} == {good, sleeper}
        assert all(r.ok for r in await ce.kill(refs[1:]))
        done, killed = await wait_final(ce, refs)
        assert done.status is PilotStatus.DONE
        assert killed.status is PilotStatus.ABORTED
        assert f"pilot {good} says hello" in (await ce.output(refs[0])).stdout
        assert all(r.ok for r in await ce.clean(refs))
    finally:
        await ce.close()


async def test_token_file_is_reread_and_a_bad_token_is_an_auth_error(
    arc_infra: ARCInfra,
    arc_issuer: LiveServer,
    tmp_path: Path,
) -> None:
    token_file = tmp_path / "ce.token"
    token_file.write_text("not-a-token\n")
    config = ARCCEConfig(
        url=arc_infra.url,
        ca_file=arc_infra.ca_file,
        token_file=token_file,
    )
    ce = make_ce(config, tmp_path)
    queue = queue_for(arc_infra, "file")
    try:
        with pytest.raises(CEPermanentError) as refused:
            await ce.load(queue)
        assert refused.value.category == "auth"

        verify = ssl.create_default_context(cafile=str(arc_infra.ca_file))
        async with httpx.AsyncClient(verify=verify) as client:
            response = await client.post(
                f"{arc_issuer.url}/api/auth/ce-token",
                json={"audience": arc_infra.url},
                headers={"Authorization": f"Bearer {arc_issuer.director_token}"},
            )
        token_file.write_text(response.json()["access_token"] + "\n")
        load = await ce.load(queue)  # the operator refreshed the file: no restart needed
        assert load.free_slots is not None
    finally:
        await ce.close()


async def test_unknown_issuer_token_is_refused(
    arc_infra: ARCInfra,
    arc_issuer: LiveServer,
    tmp_path: Path,
) -> None:
    """A token signed by a key A-REX cannot find at the issuer is refused (403 -> auth)."""
    from server.keys import KeyStore

    stranger = KeyStore(tmp_path / "other-jwks.json", arc_issuer.url)
    forged = stranger.sign(
        {"iss": arc_issuer.url, "sub": "x", "aud": arc_infra.url, "exp": 2_000_000_000},
        alg="RS256",
    )
    token_file = tmp_path / "forged.token"
    token_file.write_text(forged)
    ce = make_ce(
        ARCCEConfig(
            url=arc_infra.url,
            ca_file=arc_infra.ca_file,
            token_file=token_file,
        ),
        tmp_path,
    )
    try:
        with pytest.raises(CEPermanentError) as refused:
            await ce.submit(queue_for(arc_infra), [PilotSubmission(stamp(), OK_PILOT)])
        assert refused.value.category == "auth"
    finally:
        await ce.close()


async def test_rejected_and_unreachable(
    x509_ce: ARCCE,
    arc_infra: ARCInfra,
    tmp_path: Path,
) -> None:
    nosuch = QueueSpec(name="no-such-queue", site="LCG.ARC.test", ce="localhost")
    with pytest.raises(CEPermanentError) as rejected:
        await x509_ce.submit(nosuch, [PilotSubmission(stamp(), OK_PILOT)])
    assert rejected.value.category == "rejected"
    assert "no-such-queue" in str(rejected.value)

    from tests.conftest import free_port

    closed = make_ce(x509_config(arc_infra, url=f"https://localhost:{free_port()}/arex"), tmp_path)
    try:
        with pytest.raises(CETemporaryError) as unreachable:
            await closed.load(queue_for(arc_infra))
        assert unreachable.value.category == "unreachable"
    finally:
        await closed.close()


async def test_a_service_token_without_trusted_host_gets_no_ce_token(
    arc_infra: ARCInfra,
    arc_issuer: LiveServer,
    tmp_path: Path,
) -> None:
    user_token = tmp_path / "user.token"
    user_token.write_text(arc_issuer.token("alice", "lhcb"))
    ce = make_ce(
        ARCCEConfig(url=arc_infra.url, ca_file=arc_infra.ca_file, ce_token=CETokenSource()),
        tmp_path,
        server_credentials(arc_issuer, user_token, arc_infra.ca_file),
    )
    try:
        with pytest.raises(CEPermanentError) as refused:
            await ce.load(queue_for(arc_infra))
        assert refused.value.category == "auth"
        assert "403" in str(refused.value)
    finally:
        await ce.close()
