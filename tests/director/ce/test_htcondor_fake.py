"""The HTCondor-CE backend where the real pool cannot go: a FakeSchedd plays the CE.

Covered here: job router states, refused credentials, rejected submissions, a schedd that stops
answering, refused removals, the submit description's content, and the pure helpers. The normal
life of jobs is tested against the real pool in test_htcondor_live.py.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from director.ce.base import PilotSubmission, QueueSpec
from director.ce.htcondor import (
    HTCondorCE,
    HTCondorCEConfig,
    JobId,
    auth_parameters,
    classify_error,
    condor_environment,
    job_constraint,
    make_reference,
    parse_reference,
)
from director.errors import CEPermanentError, CETemporaryError
from director.render import TemplateRenderer
from server.models import PilotStatus

htcondor2 = pytest.importorskip("htcondor2", reason="the htcondor bindings are absent")
classad2 = pytest.importorskip("classad2", reason="the htcondor bindings are absent")

from tests.director.ce.fake_schedd import FakeSchedd  # noqa: E402

HOST = "ce.example.org"
QUEUE = QueueSpec(name="grid", site="LCG.Example.org", ce=HOST)


def make_ce(fake: FakeSchedd, work_dir: Path, **config: object) -> HTCondorCE:
    settings: dict[str, object] = {"host": HOST}
    settings.update(config)
    return HTCondorCE(
        HTCondorCEConfig.model_validate(settings),
        renderer=TemplateRenderer(),
        work_dir=work_dir,
        schedd_factory=lambda: fake,
    )


@pytest.fixture
def fake() -> FakeSchedd:
    return FakeSchedd()


@pytest.fixture
def ce(fake: FakeSchedd, tmp_path: Path) -> HTCondorCE:
    return make_ce(fake, tmp_path)


def pilots(*stamps: str) -> list[PilotSubmission]:
    return [PilotSubmission(s, f"#!/bin/sh\n# secret for {s}\necho {s}\n") for s in stamps]


# ----------------------------------------------------------------------------- submission


async def test_one_cluster_per_batch_with_the_queue_options(
    fake: FakeSchedd, tmp_path: Path
) -> None:
    ce = make_ce(fake, tmp_path, extra_attributes={"+Site": '"from-ce"', "+Owner2": '"ce"'})
    queue = QueueSpec(
        name="grid",
        site="LCG.Example.org",
        ce=HOST,
        processors=8,
        memory_mb=16000,
        max_runtime_s=172800,
        tags=("MultiProcessor", "GPU"),
        required_tags=("GPU",),
        platform="x86_64-el9",
        environment={"VO": "lhcb", "MSG": 'it\'s "quoted"'},
        extra_attributes={"+Site": '"from-queue"', "+xcount": "8"},
    )

    results = await ce.submit(queue, pilots("s0", "s1", "s2"))

    assert [r.reference for r in results] == [
        f"htcondorce://{HOST}/100.0",
        f"htcondorce://{HOST}/100.1",
        f"htcondorce://{HOST}/100.2",
    ]
    (commands,) = fake.descriptions
    assert commands["request_cpus"] == "8"
    assert commands["request_memory"] == "16000"
    assert commands["MY.MaxRuntime"] == "172800"
    assert commands["MY.maxWallTime"] == "2880"
    # the DIRAC tags and platform, for the CE's job routes
    assert commands["MY.SiteDirectorTags"] == '"MultiProcessor,GPU"'
    assert commands["MY.SiteDirectorRequiredTags"] == '"GPU"'
    assert commands["MY.SiteDirectorPlatform"] == '"x86_64-el9"'
    assert commands["MY.xcount"] == "8"
    assert commands["should_transfer_files"] == "YES"
    assert "ExitCode =!= 0" in commands["on_exit_hold"]
    assert "periodic_remove" in commands
    # the queue's attributes come after the CE's, so they win
    assert commands["MY.Site"] == '"from-queue"'
    assert commands["MY.Owner2"] == '"ce"'
    ads = [fake.queue[(100, p)] for p in range(3)]
    assert [ad["SiteDirectorStamp"] for ad in ads] == ["s0", "s1", "s2"]
    assert {ad["SiteDirectorQueue"] for ad in ads} == {f"LCG.Example.org/{HOST}/grid"}
    assert "PILOT_STAMP=s1" in ads[1]["Environment"]
    assert "VO=lhcb" in ads[1]["Environment"]


async def test_wrappers_are_private_spooled_and_removed(
    ce: HTCondorCE, fake: FakeSchedd, tmp_path: Path
) -> None:
    batch = pilots("a1", "a2")

    results = await ce.submit(QUEUE, batch)

    assert all(r.ok for r in results)
    assert sorted(fake.wrapper_modes.values()) == [0o600, 0o600]
    assert [fake.spooled[(100, 0)], fake.spooled[(100, 1)]] == [p.wrapper for p in batch]
    assert not [Path(w) for w in fake.wrapper_modes if Path(w).exists()]
    assert not list(tmp_path.glob("htcondor-spool-*"))
    (status_a1, status_a2) = await ce.status([r.reference or "" for r in results])
    assert status_a1.status is status_a2.status is PilotStatus.WAITING


async def test_failed_spool_removes_the_cluster(
    ce: HTCondorCE, fake: FakeSchedd, tmp_path: Path
) -> None:
    fake.fail["spool"] = htcondor2.HTCondorException(
        "Failed to spool job files, errmsg=CEDAR:6001:Failed to connect to <127.0.0.1:9619>"
    )

    with pytest.raises(CETemporaryError) as caught:
        await ce.submit(QUEUE, pilots("b1", "b2"))

    assert caught.value.category == "unreachable"
    assert fake.queue == {}, "jobs held for spooling forever would fill the CE"
    assert not list(tmp_path.glob("htcondor-spool-*"))


@pytest.mark.parametrize(
    ("message", "error", "category"),
    [
        (
            "Failed to connect to schedd, errmsg=AUTHENTICATE:1003:Failed to authenticate with "
            "any method|AUTHENTICATE:1004:Failed to authenticate using SCITOKENS",
            CEPermanentError,
            "auth",
        ),
        (
            "Failed to create job ad, errmsg=Submit:-1:Parse error in expression: x = (",
            CEPermanentError,
            "rejected",
        ),
        (
            "Failed to commit job submission, errmsg=SCHEDD:2:Submit requirement "
            "OnlyPilots evaluated to false",
            CEPermanentError,
            "rejected",
        ),
        (
            "Failed to connect to schedd, errmsg=CEDAR:6001:Failed to connect to <10.0.0.1:9619>",
            CETemporaryError,
            "unreachable",
        ),
        ("Job queue transaction failed", CETemporaryError, "ce_error"),
    ],
    ids=["auth", "parse", "submit-requirement", "unreachable", "ce-side"],
)
async def test_submit_errors_are_classified(
    ce: HTCondorCE,
    fake: FakeSchedd,
    message: str,
    error: type[Exception],
    category: str,
) -> None:
    fake.fail["submit"] = htcondor2.HTCondorException(message)

    with pytest.raises(error) as caught:
        await ce.submit(QUEUE, pilots("c1"))

    assert getattr(caught.value, "category", None) == category
    assert isinstance(caught.value.__cause__, htcondor2.HTCondorException)
    assert "ce.example.org" in str(caught.value)


async def test_bad_stamp_is_refused_alone(ce: HTCondorCE, fake: FakeSchedd) -> None:
    results = await ce.submit(QUEUE, pilots("good1", "bad stamp;", "good2"))

    assert [r.ok for r in results] == [True, False, True]
    assert results[1].error == "invalid pilot stamp"
    assert not results[1].temporary
    assert len(fake.queue) == 2


async def test_bad_queue_attribute_is_rejected_before_the_ce(
    ce: HTCondorCE, fake: FakeSchedd
) -> None:
    queue = QueueSpec(name="q", site="S", ce=HOST, extra_attributes={"+X": "1\nqueue 1000"})

    with pytest.raises(CEPermanentError) as caught:
        await ce.submit(queue, pilots("d1"))

    assert caught.value.category == "rejected"
    assert fake.calls == []


async def test_empty_batch_does_nothing(ce: HTCondorCE, fake: FakeSchedd) -> None:
    assert await ce.submit(QUEUE, []) == []
    assert fake.calls == []


# ----------------------------------------------------------------------------- status


@pytest.mark.parametrize(
    ("attributes", "status", "state", "reason"),
    [
        ({"JobStatus": 1}, PilotStatus.WAITING, "Idle", ""),
        (
            {"JobStatus": 5, "HoldReasonCode": 16, "HoldReason": "Spooling input data files"},
            PilotStatus.WAITING,
            "Held(16)",
            "Spooling",
        ),
        (  # a transient hold is released instead: test_htcondor_holds_fake.py
            {"JobStatus": 5, "HoldReasonCode": 34, "HoldReason": "Memory usage exceeds a limit"},
            PilotStatus.ABORTED,
            "Held(34)",
            "held: Memory usage exceeds a limit",
        ),
        ({"JobStatus": 2}, PilotStatus.RUNNING, "Running", ""),
        ({"JobStatus": 6}, PilotStatus.RUNNING, "TransferringOutput", ""),
        ({"JobStatus": 7}, PilotStatus.RUNNING, "Suspended", ""),
        ({"JobStatus": 4, "ExitCode": 0}, PilotStatus.DONE, "Completed", ""),
        (
            {"JobStatus": 3, "RemoveReason": "via condor_rm"},
            PilotStatus.ABORTED,
            "Removed",
            "removed: via condor_rm",
        ),
        ({"JobStatus": 9}, PilotStatus.UNKNOWN, "JobStatus=9", ""),
    ],
    ids=[
        "idle",
        "spooling",
        "held",
        "running",
        "transferring",
        "suspended",
        "completed",
        "removed",
        "unheard-of",
    ],
)
async def test_router_states_map_to_pilot_statuses(
    ce: HTCondorCE,
    fake: FakeSchedd,
    attributes: dict[str, object],
    status: PilotStatus,
    state: str,
    reason: str,
) -> None:
    fake.set_job(7, 0, **attributes)

    (result,) = await ce.status([make_reference(HOST, JobId(7, 0))])

    assert (result.status, result.ce_state) == (status, state)
    assert reason in result.reason


async def test_status_in_bulk_from_queue_history_and_nowhere(
    ce: HTCondorCE, fake: FakeSchedd
) -> None:
    fake.set_job(5, 0, JobStatus=2)
    fake.to_history(5, 1, JobStatus=4, ExitCode=0)
    fake.to_history(
        6, 0, JobStatus=3, LastHoldReason="pilot exited with code 2", LastHoldReasonCode=3
    )
    references = [make_reference(HOST, JobId(c, p)) for c, p in [(5, 0), (5, 1), (6, 0), (8, 0)]]

    results = await ce.status(references)

    assert [r.status for r in results] == [
        PilotStatus.RUNNING,
        PilotStatus.DONE,
        PilotStatus.ABORTED,
        PilotStatus.ABORTED,
    ]
    assert "pilot exited with code 2" in results[2].reason
    assert "unknown" in results[3].reason
    assert fake.calls == ["query", "history"], "one queue query, one history query"


async def test_foreign_or_malformed_references_never_reach_the_ce(
    ce: HTCondorCE, fake: FakeSchedd
) -> None:
    references = ["htcondorce://other.example.org/1.0", "arc://x/1", "htcondorce://ce/1"]

    results = await ce.status(references)
    actions = await ce.kill(references)

    assert [r.status for r in results] == [None, None, None]
    assert all(r.error for r in results)
    assert all(not a.ok for a in actions)
    assert fake.calls == []


async def test_query_failure_is_temporary(ce: HTCondorCE, fake: FakeSchedd) -> None:
    fake.fail["query"] = htcondor2.HTCondorException(
        "Failed to fetch ads from schedd, errmsg=CEDAR:6001:Failed to connect"
    )

    with pytest.raises(CETemporaryError) as caught:
        await ce.status([make_reference(HOST, JobId(1, 0))])
    assert caught.value.category == "unreachable"


async def test_silent_schedd_times_out(fake: FakeSchedd, tmp_path: Path) -> None:
    ce = make_ce(fake, tmp_path, query_timeout_s=0.2)
    fake.hang = threading.Event()
    try:
        with pytest.raises(CETemporaryError) as caught:
            await ce.load(QUEUE)
        assert caught.value.category == "unreachable"
    finally:
        fake.hang.set()


# ----------------------------------------------------------------------------- kill, clean, output


async def test_refused_removal_is_reported_per_job(ce: HTCondorCE, fake: FakeSchedd) -> None:
    for proc in range(3):
        fake.set_job(9, proc, JobStatus=2)
    fake.permission_denied.add((9, 1))
    references = [make_reference(HOST, JobId(9, p)) for p in range(3)]

    results = await ce.kill([*references, make_reference(HOST, JobId(9, 7))])

    assert [r.ok for r in results] == [True, False, True, True]
    assert results[1].error is not None
    assert "PermissionDenied=1" in results[1].error
    assert not results[1].temporary


async def test_output_clean_and_completed_jobs_leaving(
    ce: HTCondorCE, fake: FakeSchedd, tmp_path: Path
) -> None:
    (submitted,) = await ce.submit(QUEUE, pilots("o1"))
    reference = submitted.reference or ""
    fake.set_job(100, 0, JobStatus=4, ExitCode=0)
    fake.outputs[(100, 0)] = ("pilot says hi\n", "a warning\n")

    output = await ce.output(reference)

    assert (output.stdout, output.stderr) == ("pilot says hi\n", "a warning\n")
    assert list(tmp_path.rglob("o1.out"))

    (cleaned,) = await ce.clean([reference])

    assert cleaned.ok
    assert fake.queue == {}, "a completed spooled job leaves the queue once cleaned"
    assert not list(tmp_path.rglob("o1.*"))
    (after,) = await ce.status([reference])
    assert after.status is PilotStatus.DONE


async def test_clean_removes_held_jobs(ce: HTCondorCE, fake: FakeSchedd) -> None:
    fake.set_job(11, 0, JobStatus=5, HoldReasonCode=3, HoldReason="pilot exited with code 1")

    (cleaned,) = await ce.clean([make_reference(HOST, JobId(11, 0))])

    assert cleaned.ok
    assert fake.queue == {}
    assert fake.history_ads[0]["JobStatus"] == 3


# ----------------------------------------------------------------------------- load, list_jobs


async def test_load_counts_spooling_as_waiting_and_only_this_queue(
    ce: HTCondorCE, fake: FakeSchedd
) -> None:
    mine = f"LCG.Example.org/{HOST}/grid"
    states = [
        {"JobStatus": 1},
        {"JobStatus": 5, "HoldReasonCode": 16},
        {"JobStatus": 2},
        {"JobStatus": 6},
        {"JobStatus": 5, "HoldReasonCode": 3},
        {"JobStatus": 4},
    ]
    for proc, attributes in enumerate(states):
        fake.set_job(20, proc, SiteDirectorQueue=mine, **attributes)
    fake.set_job(21, 0, SiteDirectorQueue="LCG.Example.org/other/grid", JobStatus=1)

    load = await ce.load(QUEUE)

    assert (load.waiting, load.running) == (2, 2)


async def test_list_jobs_finds_stamps_even_without_the_custom_attribute(
    ce: HTCondorCE, fake: FakeSchedd
) -> None:
    mine = f"LCG.Example.org/{HOST}/grid"
    fake.set_job(30, 0, SiteDirectorQueue=mine, JobStatus=2, SiteDirectorStamp="st0")
    # a job router that rewrote the ad and kept only the environment
    fake.set_job(30, 1, SiteDirectorQueue=mine, JobStatus=1, Environment="A=b PILOT_STAMP=st1")
    fake.set_job(30, 2, SiteDirectorQueue=mine, JobStatus=1)

    jobs = await ce.list_jobs(QUEUE)

    assert [(j.reference, j.stamp, j.status) for j in jobs] == [
        (f"htcondorce://{HOST}/30.0", "st0", PilotStatus.RUNNING),
        (f"htcondorce://{HOST}/30.1", "st1", PilotStatus.WAITING),
    ]


# ----------------------------------------------------------------------------- configuration


def test_config_defaults_address_the_ce_like_htcondor_ce() -> None:
    config = HTCondorCEConfig(host="ce1.example.org")
    assert (config.collector, config.schedd) == ("ce1.example.org:9619", "ce1.example.org")
    assert HTCondorCEConfig(host="h", pool="127.0.0.1:9619").collector == "127.0.0.1:9619"


def test_config_takes_one_credential_and_no_unknown_keys() -> None:
    with pytest.raises(ValidationError, match="at most one"):
        HTCondorCEConfig(host="h", scitoken_file=Path("/t"), x509_proxy=Path("/p"))
    with pytest.raises(ValidationError):
        HTCondorCEConfig.model_validate({"host": "h", "colector": "x"})
    with pytest.raises(ValidationError):
        HTCondorCEConfig.model_validate({"host": "h", "extra_attributes": {"bad name": "1"}})


@pytest.mark.parametrize(
    ("credential", "expected"),
    [
        (
            {"scitoken_file": Path("/etc/tok")},
            {"SEC_CLIENT_AUTHENTICATION_METHODS": "SCITOKENS", "SCITOKENS_FILE": "/etc/tok"},
        ),
        (
            {"idtoken_dir": Path("/etc/toks")},
            {"SEC_CLIENT_AUTHENTICATION_METHODS": "IDTOKENS", "SEC_TOKEN_DIRECTORY": "/etc/toks"},
        ),
        (
            {"x509_proxy": Path("/tmp/x509up")},
            {"SEC_CLIENT_AUTHENTICATION_METHODS": "SSL", "X509_USER_PROXY": "/tmp/x509up"},
        ),
        ({}, {}),
    ],
    ids=["scitoken", "idtoken", "x509", "none"],
)
def test_credentials_become_client_settings(
    credential: dict[str, Path], expected: dict[str, str]
) -> None:
    params = auth_parameters(HTCondorCEConfig(host="h", **credential))  # type: ignore[arg-type]
    assert expected.items() <= params.items()


# ----------------------------------------------------------------------------- pure helpers


def test_references_round_trip() -> None:
    assert parse_reference("htcondorce://ce.example.org/12.3") == ("ce.example.org", JobId(12, 3))
    assert make_reference("ce.example.org", JobId(12, 3)) == "htcondorce://ce.example.org/12.3"
    with pytest.raises(ValueError, match="not an HTCondor-CE job reference"):
        parse_reference("htcondorce://ce.example.org/12")


def test_environment_quoting_follows_htcondor_new_syntax() -> None:
    assert condor_environment({"A": "1", "B": "two words"}) == "A=1 B='two words'"
    assert condor_environment({"Q": "it's"}) == "Q='it''s'"
    assert condor_environment({"D": 'say "hi"'}) == 'D=\'say ""hi""\''
    with pytest.raises(ValueError, match="invalid environment variable name"):
        condor_environment({"1A": "x"})
    with pytest.raises(ValueError, match="several lines"):
        condor_environment({"A": "x\ny"})


def test_error_messages_are_classified() -> None:
    assert classify_error("AUTHENTICATE:1003:Failed to authenticate") == "auth"
    assert classify_error("Failed communication with collector.") == "unreachable"
    assert classify_error("Failed to create job ad, errmsg=...") == "rejected"
    assert classify_error("something else") == "ce_error"


job_ids = st.builds(JobId, st.integers(1, 40), st.integers(0, 6))


@settings(deadline=None, max_examples=60)  # a shared 2-core machine: no per-example deadline
@given(wanted=st.sets(job_ids, max_size=25), others=st.sets(job_ids, max_size=25))
def test_job_constraint_matches_exactly_the_jobs_asked_for(
    wanted: set[JobId], others: set[JobId]
) -> None:
    expression = classad2.ExprTree(job_constraint(wanted))
    for job in wanted | others:
        ad = classad2.ClassAd({"ClusterId": job.cluster, "ProcId": job.proc})
        assert (expression.eval(ad) is True) == (job in wanted)


def test_dry_run_description_is_a_complete_submit_file(ce: HTCondorCE) -> None:
    files = ce.describe(QUEUE, pilots("dry1", "dry2"))

    text = files["htcondor.sub"]
    submit = htcondor2.Submit(text)  # HTCondor's own parser reads the queue statement
    assert list(submit.itemdata()) == [
        {"Stamp": "dry1", "Wrapper": "dry1.sh"},
        {"Stamp": "dry2", "Wrapper": "dry2.sh"},
    ]
    assert submit["executable"] == "$(Wrapper)"
    assert submit["request_cpus"] == "1"


def test_the_htcondor_state_map_is_the_backends_own() -> None:
    from director.ce.htcondor import HTCONDOR_HELD, HTCONDOR_HOLD_SPOOLING, htcondor_status

    assert htcondor_status(1) is PilotStatus.WAITING
    assert htcondor_status(4) is PilotStatus.DONE
    assert htcondor_status(HTCONDOR_HELD, 3) is PilotStatus.ABORTED
    assert htcondor_status(HTCONDOR_HELD, HTCONDOR_HOLD_SPOOLING) is PilotStatus.WAITING
    assert htcondor_status(99) is PilotStatus.UNKNOWN
