"""One HTCondor-CE backend session whose only credential is the CE token the backend gets from
our server itself (`ce_token`, through the director's `ServerCredentials` and `ServerClient`),
run as a process of its own by test_htcondor_ce_token_live.

Its own process, because the HTCondor client caches one authenticated session per schedd per
process: in the pytest process, a session made with the pool's IDTOKEN would stand in for the
token.

What it does: submit a pilot (the backend fetches a token and writes it to its file), read the
job's ad, list and check it; then move the credential source's clock past the renewal point,
submit a second pilot (a new token is fetched and written; the session made with the first one
is still in use), remove both and wait until they are Aborted.

Usage: python -m tests.director.ce.ce_token_client '<json>', the JSON holding `config` (an
HTCondorCEConfig with `ce_token`), `work_dir`, `queue`, `stamps` (two), `server_url`,
`ca_file` and `director_token`. Prints one JSON object: `error` and `category` when a step was
refused, else what the pool recorded and did and the tokens the server issued.
"""

from __future__ import annotations

import asyncio
import json
import stat
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from director.ce.base import PilotSubmission, QueueSpec
from director.ce.credentials import ServerCredentials
from director.ce.htcondor import HTCondorCE, HTCondorCEConfig, job_constraint, parse_reference
from director.client import ServerClient, TokenSource
from director.errors import CEError
from director.render import TemplateRenderer
from server.models import PilotStatus, TokenResponse

PATIENCE_S = 90.0
SLEEPER = "#!/bin/sh\nsleep 300\n"
AD_ATTRIBUTES = ["Owner", "AuthTokenIssuer", "AuthTokenSubject", "AuthTokenScopes", "AuthTokenId"]


class Recording:
    """The director's ServerClient, remembering the tokens the server issued."""

    def __init__(self, client: ServerClient) -> None:
        self.client = client
        self.issued: list[str] = []

    async def ce_token(self, audience: str, lifetime_s: int | None = None) -> TokenResponse:
        response = await self.client.ce_token(audience, lifetime_s)
        self.issued.append(response.access_token)
        return response


def _job_ad(ce: HTCondorCE, reference: str) -> dict[str, str]:
    """Who the schedd says owns the job, and from which token (AuthToken* attributes)."""
    import htcondor2

    _, job = parse_reference(reference)
    location = htcondor2.Collector(ce.config.collector).locate(
        htcondor2.DaemonTypes.Schedd, ce.config.schedd
    )
    ads = htcondor2.Schedd(location).query(job_constraint([job]), AD_ATTRIBUTES)
    return {name: str(ads[0].get(name, "")) for name in AD_ATTRIBUTES} if ads else {}


def _token_file(ce: HTCondorCE) -> dict[str, Any]:
    assert ce.token_file is not None
    info = ce.token_file.stat()
    return {
        "text": ce.token_file.read_text(),
        "mode": stat.S_IMODE(info.st_mode),
        "folder_mode": stat.S_IMODE(ce.token_file.parent.stat().st_mode),
        "folder": sorted(p.name for p in ce.token_file.parent.iterdir()),
    }


async def _submit(ce: HTCondorCE, queue: QueueSpec, stamp: str) -> str:
    (result,) = await ce.submit(queue, [PilotSubmission(stamp, SLEEPER)])
    if result.reference is None:
        raise CEError(f"submit result: {result.error}")
    return result.reference


async def session(args: dict[str, Any]) -> dict[str, Any]:
    config = HTCondorCEConfig.model_validate(args["config"])
    queue = QueueSpec(name=args["queue"], site="LCG.CEToken.test", ce=config.host)
    first_stamp, second_stamp = args["stamps"]
    now = [time.time()]
    client = ServerClient(
        args["server_url"],
        TokenSource(value=SecretStr(args["director_token"])),
        ca_bundle=Path(args["ca_file"]),
    )
    issuer = Recording(client)
    ce = HTCondorCE(
        config,
        renderer=TemplateRenderer(),
        work_dir=Path(args["work_dir"]),
        credentials=ServerCredentials(issuer, clock=lambda: now[0]),
    )
    out: dict[str, Any] = {"issued": issuer.issued}
    try:
        first = await _submit(ce, queue, first_stamp)
        out["first_file"] = _token_file(ce)
        out["first_ad"] = await asyncio.to_thread(_job_ad, ce, first)
        out["listed"] = [job.stamp for job in await ce.list_jobs(queue)]
        status = (await ce.status([first]))[0].status
        out["first_status"] = status.value if status else None

        assert config.ce_token is not None
        now[0] += config.ce_token.lifetime_s  # past renewal: the next call gets a new token
        second = await _submit(ce, queue, second_stamp)
        out["second_file"] = _token_file(ce)
        out["second_ad"] = await asyncio.to_thread(_job_ad, ce, second)

        out["kill_errors"] = [r.error for r in await ce.kill([first, second])]
        deadline = time.monotonic() + PATIENCE_S
        final = await ce.status([first, second])
        while time.monotonic() < deadline and any(
            r.status is not PilotStatus.ABORTED for r in final
        ):
            await asyncio.sleep(1)
            final = await ce.status([first, second])
        out["final_statuses"] = [r.status.value if r.status else None for r in final]
    except CEError as exc:
        out.update(error=str(exc), category=exc.category)
    finally:
        await client.aclose()
    return out


def main() -> None:
    print(json.dumps(asyncio.run(session(json.loads(sys.argv[1])))))


if __name__ == "__main__":
    main()
