"""HTCondor-CE tokens the director fetches and refreshes (`ce_token`), on a FakeSchedd.

The backend asks its injected CredentialSource for a token before each schedd call, writes it
(0600, temp + rename) to the file the HTCondor client reads (SCITOKENS_FILE), rewrites it when the
source renews it, and turns the source's failures into CE errors of the same kind. What the
fake schedd cannot show (the pool accepting that token) is in test_htcondor_ce_token_live.py.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from director.ce.base import PilotSubmission, QueueSpec
from director.ce.credentials import ServerCredentials
from director.ce.htcondor import HTCondorCE, HTCondorCEConfig, auth_parameters
from director.errors import (
    CEError,
    CEPermanentError,
    CETemporaryError,
    ServerError,
    ServerUnavailable,
    TokenRefused,
)
from director.render import TemplateRenderer
from server.models import TokenResponse

htcondor2 = pytest.importorskip("htcondor2", reason="the htcondor bindings are absent")

from tests.director.ce.fake_schedd import FakeSchedd  # noqa: E402

HOST = "ce.example.org"
AUDIENCE = f"{HOST}:9619"
QUEUE = QueueSpec(name="grid", site="LCG.Example.org", ce=HOST)
_CLIENT_KEYS = ("SEC_CLIENT_AUTHENTICATION_METHODS", "SCITOKENS_FILE", "AUTH_SSL_CLIENT_CADIR")


class FakeSource:
    """A CredentialSource that hands out the tokens it is given, or fails as told."""

    def __init__(self, *tokens: str) -> None:
        self.tokens = list(tokens)
        self.calls: list[tuple[str, int | None]] = []
        self.error: Exception | None = None

    async def token(self, audience: str, *, lifetime_s: int | None = None) -> str:
        self.calls.append((audience, lifetime_s))
        if self.error is not None:
            raise self.error
        return self.tokens[min(len(self.calls), len(self.tokens)) - 1]

    async def proxy(self) -> Path:
        raise AssertionError("an HTCondor-CE with ce_token asks for no proxy")

    async def aclose(self) -> None:
        return None


class FakeIssuer:
    """ServerClient.ce_token: a new token at each call, or an error."""

    def __init__(self, lifetime: int = 1200) -> None:
        self.lifetime = lifetime
        self.calls = 0
        self.error: Exception | None = None

    async def ce_token(self, audience: str, lifetime_s: int | None = None) -> TokenResponse:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return TokenResponse(access_token=f"jwt-{self.calls}", expires_in=self.lifetime)


class Observed:
    """What the HTCondor client would see at each schedd call: the token file it is told to
    read, that file's content, mode and inode (a file replaced by rename has a new inode)."""

    def __init__(self, fake: FakeSchedd) -> None:
        self.fake = fake
        self.seen: list[tuple[str, str, int, int]] = []

    def __call__(self) -> FakeSchedd:
        path = Path(htcondor2.param["SCITOKENS_FILE"])
        info = path.stat()
        self.seen.append((str(path), path.read_text(), stat.S_IMODE(info.st_mode), info.st_ino))
        return self.fake


@pytest.fixture(autouse=True)
def client_settings() -> Iterator[None]:
    """The backend sets process-wide client settings: put back what was there."""
    before = {key: htcondor2.param.get(key) for key in _CLIENT_KEYS}
    yield
    for key, value in before.items():
        if value is None:
            if htcondor2.param.get(key) is not None:
                del htcondor2.param[key]
        else:
            htcondor2.param[key] = value


def make_ce(
    work_dir: Path, credentials: object, observed: Observed | None = None, **config: object
) -> HTCondorCE:
    settings: dict[str, object] = {"host": HOST, "ce_token": {"lifetime_s": 900}}
    settings.update(config)
    return HTCondorCE(
        HTCondorCEConfig.model_validate(settings),
        renderer=TemplateRenderer(),
        work_dir=work_dir,
        credentials=credentials,  # type: ignore[arg-type]
        schedd_factory=observed or (lambda: FakeSchedd()),
    )


def pilot(stamp: str) -> list[PilotSubmission]:
    return [PilotSubmission(stamp, f"#!/bin/sh\necho {stamp}\n")]


# ----------------------------------------------------------------------------- configuration


def test_ce_token_asks_for_host_port_unless_told_otherwise() -> None:
    assert HTCondorCEConfig(host=HOST).token_audience == AUDIENCE
    config = HTCondorCEConfig.model_validate({"host": HOST, "port": 9620, "ce_token": {}})
    assert config.token_audience == f"{HOST}:9620"
    assert config.ce_token is not None
    assert config.ce_token.lifetime_s == 1200
    explicit = HTCondorCEConfig.model_validate(
        {"host": HOST, "ce_token": {}, "token_audience": f"condor://{HOST}:9619"}
    )
    assert explicit.token_audience == f"condor://{HOST}:9619"
    # a config written back and read again keeps its audience
    assert HTCondorCEConfig.model_validate(explicit.model_dump()) == explicit


def test_ce_token_is_one_credential_among_the_others() -> None:
    with pytest.raises(ValidationError, match="at most one"):
        HTCondorCEConfig.model_validate({"host": HOST, "ce_token": {}, "scitoken_file": "/etc/tok"})
    with pytest.raises(ValidationError):
        HTCondorCEConfig.model_validate({"host": HOST, "ce_token": {"server_url": "x"}})
    with pytest.raises(ValidationError):
        HTCondorCEConfig.model_validate({"host": HOST, "ce_token": {"lifetime_s": 10}})


def test_the_client_reads_the_issued_token_from_the_backends_file(tmp_path: Path) -> None:
    ce = make_ce(tmp_path, FakeSource("t"), ca_dir="/etc/grid-security/certificates")
    assert ce.token_file == tmp_path / "credentials" / "scitoken"
    params = auth_parameters(ce.config, ce.token_file)
    assert params == {
        "SEC_CLIENT_AUTHENTICATION_METHODS": "SCITOKENS",
        "SCITOKENS_FILE": str(ce.token_file),
        "AUTH_SSL_CLIENT_CADIR": "/etc/grid-security/certificates",
    }
    with pytest.raises(ValueError, match="names the file"):
        auth_parameters(ce.config)


# ----------------------------------------------------------------------------- the token file


async def test_the_token_is_written_privately_before_the_schedd_is_asked(tmp_path: Path) -> None:
    source = FakeSource("header.payload.signature")
    observed = Observed(FakeSchedd())
    ce = make_ce(tmp_path, source, observed)

    (result,) = await ce.submit(QUEUE, pilot("s0"))

    assert result.reference is not None
    assert source.calls == [(AUDIENCE, 900)]
    path, content, mode, _ = observed.seen[0]
    assert path == str(ce.token_file)
    assert content == "header.payload.signature\n"
    assert mode == 0o600
    assert ce.token_file is not None
    assert stat.S_IMODE(ce.token_file.parent.stat().st_mode) == 0o700
    # nothing left beside it (the temporary file was renamed into place)
    assert os.listdir(ce.token_file.parent) == ["scitoken"]


async def test_a_renewed_token_replaces_the_file_and_an_unchanged_one_is_left_alone(
    tmp_path: Path,
) -> None:
    """With the director's real cache (ServerCredentials) and its clock moved on."""
    now = [1000.0]
    issuer = FakeIssuer(lifetime=1200)
    observed = Observed(FakeSchedd())
    ce = make_ce(tmp_path, ServerCredentials(issuer, clock=lambda: now[0]), observed)

    (result,) = await ce.submit(QUEUE, pilot("s0"))
    assert result.reference is not None
    await ce.status([result.reference])  # same token: the file is not rewritten
    now[0] += 801  # less than a third of its life left: the source renews it
    await ce.load(QUEUE)
    await ce.kill([result.reference])

    assert issuer.calls == 2
    contents = [content for _, content, _, _ in observed.seen]
    inodes = [inode for _, _, _, inode in observed.seen]
    assert contents == ["jwt-1\n", "jwt-1\n", "jwt-2\n", "jwt-2\n"]
    assert inodes[0] == inodes[1]
    assert inodes[2] == inodes[3]
    assert inodes[1] != inodes[2]  # replaced by rename, not rewritten in place
    assert {mode for _, _, mode, _ in observed.seen} == {0o600}
    assert ce.token_file is not None
    assert os.listdir(ce.token_file.parent) == ["scitoken"]


async def test_a_token_file_deleted_meanwhile_is_written_again(tmp_path: Path) -> None:
    observed = Observed(FakeSchedd())
    ce = make_ce(tmp_path, FakeSource("t1"), observed)
    await ce.load(QUEUE)
    assert ce.token_file is not None
    ce.token_file.unlink()
    await ce.load(QUEUE)
    assert [content for _, content, _, _ in observed.seen] == ["t1\n", "t1\n"]


async def test_queues_of_one_ce_asking_at_once_present_one_token(tmp_path: Path) -> None:
    issuer = FakeIssuer()
    observed = Observed(FakeSchedd())
    ce = make_ce(tmp_path, ServerCredentials(issuer), observed)
    await asyncio.gather(*(ce.load(QUEUE) for _ in range(4)))
    assert issuer.calls == 1
    assert {content for _, content, _, _ in observed.seen} == {"jwt-1\n"}


def test_the_dry_run_asks_for_no_token(tmp_path: Path) -> None:
    source = FakeSource("t")
    ce = make_ce(tmp_path, source)
    assert "htcondor.sub" in ce.describe(QUEUE, pilot("s0"))
    assert source.calls == []
    assert not (tmp_path / "credentials").exists()


# ----------------------------------------------------------------------------- failures


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (CETemporaryError("the server gave no CE token: 503", "auth"), CETemporaryError),
        (CEPermanentError("the server refused a CE token: 403", "auth"), CEPermanentError),
    ],
    ids=["temporary", "permanent"],
)
async def test_the_sources_errors_keep_their_kind_and_name_the_ce(
    tmp_path: Path, error: CEError, expected: type[CEError]
) -> None:
    source = FakeSource()
    source.error = error
    fake = FakeSchedd()
    ce = make_ce(tmp_path, source, Observed(fake))
    with pytest.raises(expected) as caught:
        await ce.submit(QUEUE, pilot("s0"))
    assert caught.value.category == "auth"
    assert HOST in str(caught.value)
    assert str(error) in str(caught.value)
    assert fake.calls == []  # the CE was not asked without a token
    assert not (tmp_path / "credentials").exists()


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (ServerUnavailable("POST /api/auth/ce-token: no answer"), CETemporaryError),
        (ServerError("POST /api/auth/ce-token: 403 not TrustedHost", 403), CEPermanentError),
        (TokenRefused("POST /api/auth/ce-token: 401", 401), CEPermanentError),
    ],
    ids=["server-down", "403", "401"],
)
async def test_the_servers_answers_become_ce_errors(
    tmp_path: Path, error: Exception, expected: type[CEError]
) -> None:
    issuer = FakeIssuer()
    issuer.error = error
    fake = FakeSchedd()
    ce = make_ce(tmp_path, ServerCredentials(issuer), Observed(fake))
    with pytest.raises(expected) as caught:
        await ce.status([f"htcondorce://{HOST}/1.0"])
    assert caught.value.category == "auth"
    assert fake.calls == []


async def test_without_a_credential_source_a_ce_token_ce_fails_permanently(
    tmp_path: Path,
) -> None:
    ce = make_ce(tmp_path, None)
    with pytest.raises(CEPermanentError, match="no credential source") as caught:
        await ce.load(QUEUE)
    assert caught.value.category == "auth"


@pytest.mark.parametrize("token", ["", "two\nlines", "with space"], ids=["empty", "lines", "space"])
async def test_a_token_that_is_not_one_token_is_refused(tmp_path: Path, token: str) -> None:
    ce = make_ce(tmp_path, FakeSource(token))
    with pytest.raises(CEPermanentError, match="not one token") as caught:
        await ce.load(QUEUE)
    assert caught.value.category == "auth"


async def test_a_token_file_that_cannot_be_written_is_a_temporary_error(tmp_path: Path) -> None:
    (tmp_path / "credentials").write_text("a file where the folder should be")
    fake = FakeSchedd()
    ce = make_ce(tmp_path, FakeSource("t"), Observed(fake))
    with pytest.raises(CETemporaryError, match="cannot write the CE token") as caught:
        await ce.load(QUEUE)
    assert caught.value.category == "ce_error"
    assert fake.calls == []
