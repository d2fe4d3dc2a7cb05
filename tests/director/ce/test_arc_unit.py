"""The ARC backend's pure parts: references, job names, xRSL quoting and rendering, GLUE2
load arithmetic, error classification and configuration checks. No CE needed."""

from __future__ import annotations

from http import HTTPStatus
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from director.ce.arc import (
    ARCCE,
    ARCCEConfig,
    classify_status,
    job_name,
    load_from_glue2,
    make_reference,
    parse_job_name,
    parse_reference,
    xrsl_string,
)
from director.ce.base import PilotSubmission, QueueSpec
from director.errors import CEPermanentError, CETemporaryError
from director.render import TemplateRenderer
from server.models import PilotStatus

QUEUE = QueueSpec(
    name="grid",
    site="LCG.Example.org",
    ce="arc.example.org",
    processors=8,
    memory_mb=16000,
    max_runtime_s=3601,
    environment={"A": 'x "y" z'},
)


def test_reference_round_trip_and_refusals() -> None:
    ref = make_reference("arc.example.org:443", "abcDEF123")
    assert ref == "arc://arc.example.org:443/abcDEF123"
    assert parse_reference(ref) == ("arc.example.org:443", "abcDEF123")
    for bad in ("htcondorce://h/1.0", "arc://host:1/", "arc:///id", "arc://h:1/a/b", "id"):
        with pytest.raises(ValueError, match="not an ARC job reference"):
            parse_reference(bad)


@given(st.text(alphabet=st.characters(blacklist_characters="\r\n"), max_size=50))
def test_xrsl_string_doubles_quotes(value: str) -> None:
    literal = xrsl_string(value)
    assert literal.startswith('"')
    assert literal.endswith('"')
    assert literal[1:-1].replace('""', "").count('"') == 0
    assert literal[1:-1].replace('""', '"') == value


def test_xrsl_string_refuses_newlines() -> None:
    with pytest.raises(ValueError, match="span"):
        xrsl_string("a\nb")


def test_job_name_carries_stamp_and_queue() -> None:
    name = job_name("0123abcd", QUEUE)
    assert parse_job_name(name) == ("0123abcd", "LCG.Example.org/arc.example.org/grid")
    assert parse_job_name("someone-elses-job") is None
    assert parse_job_name("sitedirector:") is None


def _share(name: str, **counts: int) -> dict[str, Any]:
    return {"Name": name, "MappingQueue": name, **{k: str(v) for k, v in counts.items()}}


def test_glue2_load_counts_staging_and_pre_lrms_as_waiting() -> None:
    info = {
        "Domains": {
            "AdminDomain": {
                "Services": {
                    "ComputingService": {
                        "ComputingShare": [
                            _share(
                                "grid",
                                RunningJobs=5,
                                WaitingJobs=2,
                                StagingJobs=3,
                                PreLRMSWaitingJobs=4,
                                FreeSlots=7,
                            ),
                            _share("other", RunningJobs=100, WaitingJobs=100),
                        ]
                    }
                }
            }
        }
    }
    load = load_from_glue2(info, "grid")
    assert (load.running, load.waiting, load.free_slots) == (5, 9, 7)
    everything = load_from_glue2(info, None)
    assert (everything.running, everything.waiting) == (105, 109)
    assert load_from_glue2({}, "grid").running == 0


def test_error_classes() -> None:
    assert isinstance(classify_status(HTTPStatus.FORBIDDEN), CEPermanentError)
    assert classify_status(HTTPStatus.UNAUTHORIZED).category == "auth"
    server_side = classify_status(HTTPStatus.BAD_GATEWAY, submitting=True)
    assert isinstance(server_side, CETemporaryError)
    assert server_side.category == "ce_error"
    rejected = classify_status(HTTPStatus.BAD_REQUEST, submitting=True)
    assert (type(rejected), rejected.category) == (CEPermanentError, "rejected")


def test_config_needs_one_place_and_one_credential(tmp_path: Path) -> None:
    token = tmp_path / "t"
    ok = ARCCEConfig(host="arc.example.org", port=8443, token_file=token)
    assert ok.endpoint == "https://arc.example.org:8443/arex"
    assert ok.netloc == "arc.example.org:8443"
    assert ok.audience == ok.endpoint
    url = ARCCEConfig(url="https://arc.example.org/arex/", token_file=token)
    assert url.netloc == "arc.example.org:443"
    for bad in (
        {"token_file": token},
        {"host": "h", "url": "https://h/arex", "token_file": token},
        {"host": "h"},
        {"host": "h", "token_file": token, "cert_file": token},
        {"host": "h", "token_file": token, "key_file": token},
        {"host": "h", "token_file": token, "extra_attributes": {"bad name": "1"}},
        {"host": "h", "token_file": token, "extra_attributes": {"rerun": "1)(x=(2"}},
        {"host": "h", "token_file": token, "typo": 1},
        {"host": "h", "token_file": token, "runtime_environments": ["ENV/X\n(x=1)"]},
    ):
        with pytest.raises(ValidationError):
            ARCCEConfig.model_validate(bad)


def test_batch_rendering(tmp_path: Path) -> None:
    config = ARCCEConfig(
        host="arc.example.org",
        token_file=tmp_path / "t",
        extra_attributes={"rerun": "2"},
        runtime_environments=["ENV/PROXY", "APPS/HEP/LHCB"],
    )
    ce = ARCCE(config, renderer=TemplateRenderer(), work_dir=tmp_path)
    text = ce.describe(QUEUE, [PilotSubmission("s1", "#!"), PilotSubmission("s2", "#!")])[
        "arc.xrsl"
    ]
    assert text.startswith("+(&")
    assert text.count("(&(executable=") == 2
    assert '(jobname="sitedirector:s1:LCG.Example.org/arc.example.org/grid")' in text
    assert '("PILOT_STAMP" "s2")' in text
    assert '("A" "x ""y"" z")' in text
    assert "(count=8)" in text
    assert "(memory=2000)" in text
    assert "(walltime=61)" in text
    assert '(queue="grid")' in text
    assert "(rerun=2)" in text
    assert '(runtimeenvironment="ENV/PROXY")' in text
    assert '(runtimeenvironment="APPS/HEP/LHCB")' in text
    assert '(inputfiles=("pilot-wrapper.sh" "s1.sh"))' in text  # dry run: arcsub sends them
    assert '(inputfiles=("pilot-wrapper.sh" ""))' in ce.render_batch(QUEUE, ["s1"])  # REST PUT
    single = ce.render_batch(QueueSpec(name="", site="S", ce="C"), ["s3"])
    assert single.startswith("&(")
    assert "(queue=" not in single
    assert "(count=" not in single


def test_item_status_mapping() -> None:
    ref = "arc://h:1/x"
    gone = ARCCE._status_of(ref, {"status-code": "404", "state": "None"}, None)
    assert gone.status is PilotStatus.ABORTED
    assert "no longer knows" in gone.reason
    info = {
        "info_document": {
            "ComputingActivity": {
                "ExitCode": "3",
                "Error": ["LRMS error: (3) Job finished with wrong exit code"],
            }
        }
    }
    failed = ARCCE._status_of(ref, {"status-code": "200", "state": "FAILED"}, info)
    assert (failed.status, failed.exit_code) == (PilotStatus.FAILED, 3)
    assert "wrong exit code" in failed.reason
    killed = ARCCE._status_of(ref, {"status-code": "200", "state": "KILLED"}, None)
    assert (killed.status, killed.reason) == (PilotStatus.ABORTED, "killed on the CE")
    odd = ARCCE._status_of(ref, {"status-code": "500", "reason": "boom"}, None)
    assert odd.status is None
    assert odd.temporary


def test_the_arc_state_map_is_the_backends_own() -> None:
    from director.ce.arc import arc_status

    assert arc_status("Queuing") is PilotStatus.WAITING
    assert arc_status("FINISHED") is PilotStatus.DONE
    assert arc_status("KILLED") is PilotStatus.ABORTED
    assert arc_status("SOMETHING-NEW") is PilotStatus.UNKNOWN
    assert arc_status(None) is PilotStatus.ABORTED  # A-REX no longer knows the job


def test_ce_token_names_no_server_of_its_own() -> None:
    """CE tokens come from the director's server through its credential source; the keys that
    once named another server are refused with where they went."""
    from pydantic import ValidationError

    from director.ce.arc import ARCCEConfig

    assert ARCCEConfig(url="https://ce/arex", ce_token={}).ce_token.lifetime_s == 1200  # type: ignore[arg-type,union-attr]
    with pytest.raises(ValidationError, match=r"server\.url"):
        ARCCEConfig(url="https://ce/arex", ce_token={"server_url": "https://s"})  # type: ignore[arg-type]
