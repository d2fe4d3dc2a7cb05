"""One harness per CE backend for the contract suite (test_contract.py), the way APScheduler
runs one data-store suite against every store: the tests take `harness` and never ask which
backend they have.

`director_backend` (further down) does the same for the director-level case
(test_director_e2e.py): a real CE as the director's configuration names it, with the real
server its pilots report to.

Backends: the local CE (real processes), HTCondor against the test pool, ARC against the test
A-REX, and HTCondor against the FakeSchedd. The real ones skip by hand when their service is
absent and fail in CI, as their own tests do. The other fakes are not here on purpose:
FakeAREX (test_arc_fake.py) answers only the calls its failure tests need, and
tests/reliability/fake_ce.py breaks the contract by design (it hangs, errs and lies).

A harness says how its backend ends jobs (`settle`: the real ones run them; the fake is told),
what references of another CE and of no job look like, and how to make a CE of its kind fail a
whole call temporarily or permanently (None where the kind has no such failure).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from director.ce.base import ComputingElement, QueueSpec
from director.render import TemplateRenderer
from server.models import PilotStatus
from tests.conftest import LiveServer, free_port
from tests.director.ce.arc_infra import ARCInfra
from tests.director.ce.htcondor_infra import HTCondorPool, htcondor_pool

__all__ = [
    "htcondor_pool",
]  # the session fixtures, imported so pytest finds them

BACKENDS = [
    "local",
    "htcondor-fake",
    pytest.param("htcondor-pool", marks=pytest.mark.htcondor),
    pytest.param("arc", marks=[pytest.mark.arc, pytest.mark.slow]),
]


@dataclass
class Harness:
    name: str
    ce: ComputingElement
    queue: QueueSpec
    unknown_reference: str
    """Well-formed, this CE's, naming no job it has or had."""
    foreign_reference: str
    """A reference of another CE of the same kind."""
    settle: Callable[[Sequence[str], int, str], Awaitable[None]] | None = None
    """Fakes only: end these jobs with this exit code and stdout (real CEs run them)."""
    temporary_failure: Callable[[], ComputingElement] | None = None
    """A CE of this kind whose every call fails temporarily (unreachable, say)."""
    permanent_queue: QueueSpec | None = None
    """A queue whose submission this CE rejects as a whole (a description it cannot take)."""
    patience_s: float = 120.0
    closing: list[ComputingElement] = field(default_factory=list)


def _queue(ce_name: str, name: str = "") -> QueueSpec:
    return QueueSpec(
        name=name,
        site=f"LCG.Contract-{uuid.uuid4().hex[:8]}.test",  # a site per test: runs never mix
        ce=ce_name,
        environment={"PATH": "/usr/local/bin:/usr/bin:/bin"},
    )


def _bad_queue(queue: QueueSpec) -> QueueSpec:
    return QueueSpec(
        name=queue.name,
        site=queue.site,
        ce=queue.ce,
        environment=queue.environment,
        extra_attributes={"broken": "two\nlines"},
    )


async def _local(tmp_path: Path) -> Harness:
    from director.ce.local import LocalCE, LocalCEConfig

    def make(work_dir: Path) -> LocalCE:
        return LocalCE(LocalCEConfig(slots=8), renderer=TemplateRenderer(), work_dir=work_dir)

    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the CE's folder should be\n")
    return Harness(
        "local",
        make(tmp_path / "local"),
        _queue("localhost"),
        unknown_reference="local:" + uuid.uuid4().hex,
        foreign_reference="arc://elsewhere:443/abc",
        temporary_failure=lambda: make(blocked),
        patience_s=30.0,
    )


async def _htcondor_fake(tmp_path: Path) -> Harness:
    pytest.importorskip("htcondor2", reason="the htcondor bindings are absent")
    import htcondor2

    from director.ce.htcondor import HTCondorCE, HTCondorCEConfig, JobId, parse_reference
    from tests.director.ce.fake_schedd import FakeSchedd

    host = "ce.example.org"
    fake = FakeSchedd()
    down = FakeSchedd()
    for method in ("submit", "query", "history", "act", "edit", "retrieve"):
        down.fail[method] = htcondor2.HTCondorException("Failed to connect to schedd")

    def make(schedd: FakeSchedd) -> HTCondorCE:
        return HTCondorCE(
            HTCondorCEConfig(host=host),
            renderer=TemplateRenderer(),
            work_dir=tmp_path / "htcondor",
            schedd_factory=lambda: schedd,
        )

    async def settle(references: Sequence[str], exit_code: int, stdout: str) -> None:
        for reference in references:
            job = parse_reference(reference)[1]
            fake.set_job(job.cluster, job.proc, JobStatus=4, ExitCode=exit_code)
            fake.outputs[(job.cluster, job.proc)] = (stdout, "")

    return Harness(
        "htcondor-fake",
        make(fake),
        _queue(host, "grid"),
        unknown_reference=f"htcondorce://{host}/{JobId(999_999, 0)}",
        foreign_reference="htcondorce://other.example.org/1.0",
        settle=settle,
        temporary_failure=lambda: make(down),
        permanent_queue=_bad_queue(_queue(host, "grid")),
        patience_s=5.0,
    )


async def _htcondor_pool(tmp_path: Path, pool: HTCondorPool) -> Harness:
    from director.ce.htcondor import HTCondorCE, HTCondorCEConfig

    def make(**overrides: object) -> HTCondorCE:
        values: dict[str, object] = {
            "host": pool.host,
            "port": pool.port,
            "schedd_name": pool.schedd_name,
            "idtoken_dir": pool.token_dir,
            "query_timeout_s": 20.0,
            **overrides,
        }
        return HTCondorCE(
            HTCondorCEConfig.model_validate(values),
            renderer=TemplateRenderer(),
            work_dir=tmp_path / "pool",
        )

    queue = _queue("127.0.0.1", f"q-{uuid.uuid4().hex[:8]}")
    return Harness(
        "htcondor-pool",
        make(),
        queue,
        unknown_reference=f"htcondorce://{pool.host}/999999.0",
        foreign_reference="htcondorce://other.example.org/1.0",
        temporary_failure=lambda: make(pool=f"127.0.0.1:{free_port()}"),
        permanent_queue=_bad_queue(queue),
    )


async def _arc(tmp_path: Path, infra: ARCInfra) -> Harness:
    from director.ce.arc import ARCCE, ARCCEConfig, make_reference

    def make(url: str) -> ARCCE:
        config = ARCCEConfig.model_validate(
            {
                "url": url,
                "cert_file": infra.user_cert,
                "key_file": infra.user_key,
                "ca_file": infra.ca_file,
                "connect_timeout_s": 5.0,
            }
        )
        return ARCCE(config, renderer=TemplateRenderer(), work_dir=tmp_path / "arc")

    ce = make(infra.url)
    queue = _queue("localhost", infra.queue)
    return Harness(
        "arc",
        ce,
        queue,
        unknown_reference=make_reference(ce.config.netloc, uuid.uuid4().hex),
        foreign_reference="arc://other.example.org:443/abc",
        temporary_failure=lambda: make(f"https://localhost:{free_port()}/arex"),
        permanent_queue=_bad_queue(queue),
        patience_s=180.0,
    )


@pytest.fixture(params=BACKENDS)
async def harness(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Harness]:
    name = request.param
    if name == "local":
        made = await _local(tmp_path)
    elif name == "htcondor-fake":
        made = await _htcondor_fake(tmp_path)
    elif name == "htcondor-pool":
        made = await _htcondor_pool(tmp_path, request.getfixturevalue("htcondor_pool"))
    else:
        made = await _arc(tmp_path, request.getfixturevalue("arc_infra"))
    try:
        yield made
    finally:
        try:  # leave nothing running on a shared CE
            jobs = await made.ce.list_jobs(made.queue)
            if jobs:
                await made.ce.kill([j.reference for j in jobs])
                await made.ce.clean([j.reference for j in jobs])
        finally:
            for ce in (made.ce, *made.closing):
                await ce.close()


# --- the director-level case (test_director_e2e.py) --------------------------------------------

DIRECTOR_BACKENDS = [
    pytest.param("htcondor-pool", marks=[pytest.mark.htcondor, pytest.mark.slow]),
    pytest.param("arc", marks=[pytest.mark.arc, pytest.mark.slow]),
]
"""The real CEs only: the director runs real pilots that report to the real server. The local
CE is not here: its kill signals the wrapper, which reports its own end (Failed, "stopped by
signal") before the director sees the kill, so its killed pilot cannot end Aborted."""

# A-REX's fork back-end kills only the job's top process (cancel-fork-job): the wrapper and
# this pilot live on and report their own end later, after the test's checks.
SLEEPY_PILOT = """import sys, time
print("sleepy pilot: runs until someone kills it")
sys.stdout.flush()
time.sleep(150)
"""


@dataclass
class DirectorBackend:
    """One real CE as the director's configuration names it, and how its pilots end there."""

    name: str
    server: LiveServer
    """The real server over TLS that the pilots on this CE can reach."""
    ce: str
    ce_block: dict[str, Any]
    queue_options: dict[str, Any]
    """Options every queue of the test takes (the CE-side queue, say)."""
    killed_options: dict[str, Any]
    """Options of the queue whose pilot the operator kills on the CE: the job must stay on the
    CE, its wrapper unable to report first, until the director has seen the kill."""
    kill_when: PilotStatus
    """The CE status the killed pilot's job reaches before the operator kills it."""
    kill_word: str
    """What the killed pilot's StatusReason says."""
    failed_statuses: frozenset[PilotStatus]
    """What a pilot exiting non-zero ends as (the backend's documented mapping)."""
    reference_prefix: str
    grid_type: str


def _pool_backend(pool: HTCondorPool, server: LiveServer) -> DirectorBackend:
    return DirectorBackend(
        "htcondor-pool",
        server,
        ce=pool.host,
        ce_block={
            "kind": "htcondor",
            "host": pool.host,
            "port": pool.port,
            "schedd_name": pool.schedd_name,
            "idtoken_dir": str(pool.token_dir),
        },
        queue_options={},
        # matches no slot: the job stays idle until removed (a running one's wrapper would
        # report its own end on the signal, before the director sees the removal)
        killed_options={"extra_attributes": {"requirements": "False"}},
        kill_when=PilotStatus.WAITING,
        kill_word="removed",
        # the wrapper reports Failed, then exits 2; the CE holds the job (Held(3) -> Aborted,
        # director/ce/htcondor.py): whichever the server hears first stays
        failed_statuses=frozenset({PilotStatus.FAILED, PilotStatus.ABORTED}),
        reference_prefix="htcondorce://",
        grid_type="HTCondorCE",
    )


def _arc_backend(infra: ARCInfra, server: LiveServer, tmp_path: Path) -> DirectorBackend:
    sleepy = tmp_path / "sleepy-pilot.py"
    sleepy.write_text(SLEEPY_PILOT)
    return DirectorBackend(
        "arc",
        server,
        ce="localhost",
        ce_block={
            "kind": "arc",
            "url": infra.url,
            "ca_file": str(infra.ca_file),
            "cert_file": str(infra.user_cert),
            "key_file": str(infra.user_key),
        },
        # GLUE2 counts every job on the shared queue, leftovers of other tests too: limits
        # they cannot exhaust, pilots_per_cycle says how many
        queue_options={
            "ce_queue": infra.queue,
            "max_total_pilots": 10_000,
            "max_waiting_pilots": 10_000,
        },
        killed_options={"pilot": {"files": [{"name": "dirac-pilot.py", "path": str(sleepy)}]}},
        kill_when=PilotStatus.RUNNING,
        kill_word="killed",
        failed_statuses=frozenset({PilotStatus.FAILED}),
        reference_prefix="arc://",
        grid_type="ARC",
    )


@pytest.fixture(params=DIRECTOR_BACKENDS)
def director_backend(request: pytest.FixtureRequest, tmp_path: Path) -> DirectorBackend:
    if request.param == "htcondor-pool":
        return _pool_backend(
            request.getfixturevalue("htcondor_pool"), request.getfixturevalue("live_server_tls")
        )
    return _arc_backend(
        request.getfixturevalue("arc_infra"), request.getfixturevalue("arc_issuer"), tmp_path
    )
