"""The HTCondor-CE backend against a real HTCondor pool (tests/infra/htcondor-setup.sh).

The pool runs sid's minicondor in a chroot on loopback and is addressed like an HTCondor-CE:
collector and schedd behind port 9619, an IDTOKEN for the non-root job owner. The jobs are real
shell scripts spooled to the schedd, run by the startd, and read back through the bindings.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from director.ce.base import PilotSubmission, QueueSpec, StatusResult
from director.ce.htcondor import HTCondorCE, HTCondorCEConfig
from director.errors import CEPermanentError, CETemporaryError
from director.render import TemplateRenderer
from server.models import FINAL_STATUSES, PilotStatus
from tests.director.ce.htcondor_infra import HTCondorPool, htcondor_pool

pytestmark = pytest.mark.htcondor
__all__ = ["htcondor_pool"]  # the fixture, imported so pytest finds it

PATIENCE_S = 90.0
"""How long a job may take to reach the state a test waits for (the pool usually needs 2-6 s)."""


def pool_config(pool: HTCondorPool, **overrides: object) -> HTCondorCEConfig:
    values: dict[str, object] = {
        "host": pool.host,
        "port": pool.port,
        "schedd_name": pool.schedd_name,
        "idtoken_dir": pool.token_dir,
    }
    values.update(overrides)
    return HTCondorCEConfig.model_validate(values)


@pytest.fixture
def ce(htcondor_pool: HTCondorPool, tmp_path: Path) -> HTCondorCE:
    return HTCondorCE(pool_config(htcondor_pool), renderer=TemplateRenderer(), work_dir=tmp_path)


def a_queue(**overrides: object) -> QueueSpec:
    """A queue of its own per test, so load() and list_jobs() see only that test's jobs."""
    values: dict[str, object] = {
        "name": f"q-{uuid.uuid4().hex[:8]}",
        "site": "LCG.Test.ch",
        "ce": "127.0.0.1",
    }
    values.update(overrides)
    return QueueSpec(**values)  # type: ignore[arg-type]


def script(body: str) -> str:
    return f"#!/bin/sh\n{body}\n"


def new_stamp() -> str:
    return uuid.uuid4().hex


async def wait_until(
    ce: HTCondorCE,
    references: Sequence[str],
    done: Callable[[StatusResult], bool],
) -> list[StatusResult]:
    """Poll the real pool until every job satisfies `done` (or patience runs out)."""
    deadline = time.monotonic() + PATIENCE_S
    while True:
        results = await ce.status(references)
        if all(done(r) for r in results) or time.monotonic() > deadline:
            return results
        await asyncio.sleep(0.5)


def final(result: StatusResult) -> bool:
    return result.status in FINAL_STATUSES


async def test_pilots_run_and_end_done(ce: HTCondorCE, tmp_path: Path) -> None:
    queue = a_queue(environment={"GREETING": "hello 'pool'"}, memory_mb=64, max_runtime_s=600)
    stamps = [new_stamp() for _ in range(3)]
    pilots = [
        PilotSubmission(s, script('echo "stamp=$PILOT_STAMP greeting=$GREETING user=$(id -un)"'))
        for s in stamps
    ]

    submitted = await ce.submit(queue, pilots)

    assert [r.stamp for r in submitted] == stamps
    assert all(r.ok for r in submitted), submitted
    references = [r.reference for r in submitted if r.reference]
    clusters = {ref.rsplit("/", 1)[1].split(".")[0] for ref in references}
    assert len(clusters) == 1, "one cluster per batch"
    assert all(ref.startswith("htcondorce://127.0.0.1/") for ref in references)
    # the wrappers (and their secrets) are gone from the director's disk once spooled
    assert not list(tmp_path.glob("htcondor-spool-*"))
    assert not [p for p in tmp_path.rglob("*.sh")]

    results = await wait_until(ce, references, final)
    assert [r.status for r in results] == [PilotStatus.DONE] * 3, results
    assert all(r.exit_code == 0 for r in results)

    outputs = [await ce.output(ref) for ref in references]
    for stamp, output in zip(stamps, outputs, strict=True):
        assert f"stamp={stamp}" in output.stdout
        assert "greeting=hello 'pool'" in output.stdout
        assert "user=pilot" in output.stdout

    cleaned = await ce.clean(references)
    assert all(r.ok for r in cleaned)
    assert not [p for p in tmp_path.rglob("*.out")]
    # a job that left the queue is still known through the history
    assert [r.status for r in await ce.status(references)] == [PilotStatus.DONE] * 3


async def test_removed_pilot_is_aborted(ce: HTCondorCE) -> None:
    queue = a_queue()
    (submitted,) = await ce.submit(queue, [PilotSubmission(new_stamp(), script("sleep 300"))])
    assert submitted.reference is not None
    reference = submitted.reference

    (running,) = await wait_until(ce, [reference], lambda r: r.status is PilotStatus.RUNNING)
    assert running.status is PilotStatus.RUNNING

    (killed,) = await ce.kill([reference])
    assert killed.ok

    (result,) = await wait_until(ce, [reference], final)
    assert result.status is PilotStatus.ABORTED
    assert result.ce_state == "Removed"
    assert "removed" in result.reason
    # a removed job may linger in the queue a moment, never as a live one
    assert all(j.status is PilotStatus.ABORTED for j in await ce.list_jobs(queue))


async def test_failing_pilot_is_held_and_aborted_with_its_exit_code(ce: HTCondorCE) -> None:
    queue = a_queue()
    stamp = new_stamp()
    (submitted,) = await ce.submit(
        queue, [PilotSubmission(stamp, script("echo failing >&2; exit 3"))]
    )
    assert submitted.reference is not None

    (result,) = await wait_until(ce, [submitted.reference], final)

    assert result.status is PilotStatus.ABORTED
    assert result.ce_state == "Held(3)"
    assert result.exit_code == 3
    assert "exited with code 3" in result.reason
    output = await ce.output(submitted.reference)
    assert "failing" in output.stderr
    # held jobs are still on the CE (and found by stamp) until cleaned
    assert [(j.stamp, j.status) for j in await ce.list_jobs(queue)] == [
        (stamp, PilotStatus.ABORTED)
    ]
    assert all(r.ok for r in await ce.clean([submitted.reference]))
    (after,) = await wait_until(ce, [submitted.reference], lambda r: r.ce_state == "Removed")
    assert after.status is PilotStatus.ABORTED
    assert "exited with code 3" in after.reason


async def test_list_jobs_and_load_count_this_queue(ce: HTCondorCE) -> None:
    queue, other_queue = a_queue(), a_queue()
    stamps = [new_stamp() for _ in range(3)]
    submitted = await ce.submit(queue, [PilotSubmission(s, script("sleep 300")) for s in stamps])
    await ce.submit(other_queue, [PilotSubmission(new_stamp(), script("sleep 300"))])
    references = [r.reference for r in submitted if r.reference]
    try:
        jobs = await ce.list_jobs(queue)
        assert sorted((j.stamp, j.reference) for j in jobs) == sorted(
            zip(stamps, references, strict=True)
        )
        load = await ce.load(queue)
        assert load.running + load.waiting == 3

        await wait_until(ce, references, lambda r: r.status is PilotStatus.RUNNING)
        load = await ce.load(queue)
        assert (load.running, load.waiting) == (3, 0)
    finally:
        await ce.kill(references + [j.reference for j in await ce.list_jobs(other_queue)])
    await wait_until(ce, references, final)
    assert await ce.load(queue) == type(load)(running=0, waiting=0)


async def test_unknown_job_is_aborted(ce: HTCondorCE) -> None:
    (result,) = await ce.status(["htcondorce://127.0.0.1/999999.0"])
    assert result.status is PilotStatus.ABORTED
    assert "unknown" in result.reason


async def test_unknown_schedd_is_unreachable(htcondor_pool: HTCondorPool, tmp_path: Path) -> None:
    ce = HTCondorCE(
        pool_config(htcondor_pool, schedd_name="no-such-schedd.example"),
        renderer=TemplateRenderer(),
        work_dir=tmp_path,
    )
    with pytest.raises(CETemporaryError) as caught:
        await ce.load(a_queue())
    assert caught.value.category == "unreachable"


async def test_closed_port_is_unreachable(htcondor_pool: HTCondorPool, tmp_path: Path) -> None:
    ce = HTCondorCE(
        pool_config(htcondor_pool, port=9), renderer=TemplateRenderer(), work_dir=tmp_path
    )
    with pytest.raises(CETemporaryError) as caught:
        await ce.submit(a_queue(), [PilotSubmission(new_stamp(), script("true"))])
    assert caught.value.category == "unreachable"
    assert not list(tmp_path.glob("htcondor-spool-*"))


AUTH_PROBE = """
import asyncio, json, sys
from pathlib import Path
from director.ce.base import PilotSubmission, QueueSpec
from director.ce.htcondor import HTCondorCE, HTCondorCEConfig
from director.errors import CEError
from director.render import TemplateRenderer
config = HTCondorCEConfig.model_validate_json(sys.argv[1])
ce = HTCondorCE(config, renderer=TemplateRenderer(), work_dir=Path(sys.argv[2]))
queue = QueueSpec(name="auth-probe", site="LCG.Test.ch", ce="127.0.0.1")
try:
    asyncio.run(ce.submit(queue, [PilotSubmission("authprobe", "#!/bin/sh\\ntrue\\n")]))
    print(json.dumps({"submitted": True}))
except CEError as exc:
    print(json.dumps({"type": type(exc).__name__, "category": exc.category}))
"""


def test_refused_credential_is_a_permanent_auth_error(
    htcondor_pool: HTCondorPool, tmp_path: Path
) -> None:
    """An empty token folder: the schedd refuses the submission (in a fresh process, so no
    security session cached by the other tests can stand in for the missing token)."""
    empty = tmp_path / "tokens"
    empty.mkdir(mode=0o700)
    config = pool_config(htcondor_pool, idtoken_dir=empty)
    probe = subprocess.run(
        [sys.executable, "-c", AUTH_PROBE, config.model_dump_json(), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        cwd=Path(__file__).resolve().parents[3],
    )
    outcome = json.loads(probe.stdout.strip().splitlines()[-1])
    assert outcome == {"type": CEPermanentError.__name__, "category": "auth"}
