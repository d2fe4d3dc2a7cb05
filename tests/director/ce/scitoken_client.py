"""One HTCondor-CE backend session with a SciToken file as its only credential, run as a
process of its own by test_htcondor_scitokens_live.

Its own process, because the HTCondor client caches security sessions per process: once any
test of the pytest process has authenticated to the pool's schedd (with the pool's IDTOKEN),
later calls reuse that session whatever credential they are configured with, so a refused token
would look accepted.

Usage: python -m tests.director.ce.scitoken_client '<json>', the JSON holding `config` (an
HTCondorCEConfig), `work_dir`, `queue` and `stamp`. Prints one JSON object: either `error` and
`category` (the submission was refused), or what the pool recorded and did.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from director.ce.base import PilotSubmission, QueueSpec
from director.ce.htcondor import HTCondorCE, HTCondorCEConfig, job_constraint, parse_reference
from director.errors import CEError
from director.render import TemplateRenderer
from server.models import PilotStatus

PATIENCE_S = 90.0
SLEEPER = "#!/bin/sh\nsleep 300\n"


def _job_ad(ce: HTCondorCE, reference: str) -> dict[str, Any]:
    """Who the schedd says owns the job, and from which token (AuthToken* attributes)."""
    import htcondor2

    _, job = parse_reference(reference)
    location = htcondor2.Collector(ce.config.collector).locate(
        htcondor2.DaemonTypes.Schedd, ce.config.schedd
    )
    attributes = ["Owner", "AuthTokenIssuer", "AuthTokenSubject", "AuthTokenScopes"]
    ads = htcondor2.Schedd(location).query(job_constraint([job]), attributes)
    return {name: str(ads[0].get(name, "")) for name in attributes} if ads else {}


async def session(ce: HTCondorCE, queue: QueueSpec, stamp: str) -> dict[str, Any]:
    try:
        submitted = await ce.submit(queue, [PilotSubmission(stamp, SLEEPER)])
    except CEError as exc:
        return {"error": str(exc), "category": exc.category}
    reference = submitted[0].reference
    if reference is None:
        return {"error": submitted[0].error, "category": "submit result"}
    ad = await asyncio.to_thread(_job_ad, ce, reference)
    listed = [job.stamp for job in await ce.list_jobs(queue)]
    first = (await ce.status([reference]))[0]
    killed = (await ce.kill([reference]))[0]
    final = first
    deadline = time.monotonic() + PATIENCE_S
    while time.monotonic() < deadline:
        final = (await ce.status([reference]))[0]
        if final.status is PilotStatus.ABORTED:
            break
        await asyncio.sleep(1)
    return {
        "reference": reference,
        "ad": ad,
        "listed": listed,
        "first_status": first.status.value if first.status else None,
        "kill_error": killed.error,
        "final_status": final.status.value if final.status else None,
        "final_state": final.ce_state,
    }


def main() -> None:
    args = json.loads(sys.argv[1])
    config = HTCondorCEConfig.model_validate(args["config"])
    ce = HTCondorCE(config, renderer=TemplateRenderer(), work_dir=Path(args["work_dir"]))
    queue = QueueSpec(name=args["queue"], site="LCG.SciTokens.test", ce=config.host)
    print(json.dumps(asyncio.run(session(ce, queue, args["stamp"]))))


if __name__ == "__main__":
    main()
