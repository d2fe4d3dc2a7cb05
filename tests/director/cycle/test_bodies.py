"""The bodies of a cycle's bulk calls, written without a model per pilot or per queue
(`registration_body`, `record_body`, `report_body`): each reads back, through the server's own
models, as what the models would have made, and refuses what the models refused. Pure: no
server, no CE."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import pytest
from pydantic import TypeAdapter, ValidationError

from director.backoff import Backoff
from director.cycle.outcomes import QueueOutcome
from director.cycle.registration import Batch, _Row, record_body, registration_body
from director.queue_report import MAX_QUEUES, build_report, report_body
from server.models import BulkRegistration, PilotMetadata, SecretConstraints, Stamp
from tests.director.conftest import ManualClock
from tests.director.test_queue_report import ref

UPDATES: TypeAdapter[dict[Stamp, PilotMetadata]] = TypeAdapter(dict[Stamp, PilotMetadata])


def batch(site: str, ce: str, queue: str, kind: str = "htcondor") -> Batch:
    outcome = QueueOutcome(queue=f"{site}/{ce}/{queue}", ce=ce, kind=kind)
    queue_ref = SimpleNamespace(site=site, ce=ce, ce_queue=queue)
    unused = cast(Any, None)
    return Batch(cast(Any, queue_ref), outcome, unused, unused, unused, 0)


def test_a_registration_reads_back_as_the_model_would_have_made_it() -> None:
    a, b = batch("LCG.A.ch", "ce-a.ch", "long"), batch("ARC.B.de", "arc.b.de", "q", kind="arc")
    pilots = [(a, "a1"), (a, "a-2_x"), (b, "b1"), (a, "A" * 32)]
    constraints = SecretConstraints(expiration_minutes=30, pilot_secret_use_count_max=28)
    body = registration_body("lhcb", pilots, constraints)
    expected = BulkRegistration.model_validate(
        {
            "vo": "lhcb",
            "pilots": [
                {
                    "pilot_stamp": stamp,
                    "grid_type": {"htcondor": "HTCondorCE", "arc": "ARC"}[one.outcome.kind],
                    "grid_site": one.ref.site,
                    "destination_site": one.ref.ce,
                    "queue": one.ref.ce_queue,
                }
                for one, stamp in pilots
            ],
            "mint_secrets": True,
            "secret_constraints": constraints,
        }
    )
    assert BulkRegistration.model_validate_json(body) == expected


@pytest.mark.parametrize("stamp", ["", "a" * 33, 'a"b', "a\nb", "a b", "é"])
def test_a_registration_refuses_what_is_not_a_stamp(stamp: str) -> None:
    with pytest.raises(ValueError, match="pilot stamp"):
        registration_body("lhcb", [(batch("S", "ce", "q"), "ok"), (batch("S", "ce", "q"), stamp)],
                          SecretConstraints())  # fmt: skip


def test_a_registration_refuses_a_queue_the_model_refuses() -> None:
    with pytest.raises(ValidationError):  # grid_site: at most 128 characters
        registration_body("lhcb", [(batch("S" * 129, "ce", "q"), "s1")], SecretConstraints())
    with pytest.raises(ValidationError):  # the VO
        registration_body("", [(batch("S", "ce", "q"), "s1")], SecretConstraints())
    with pytest.raises(ValueError, match="at least one"):
        registration_body("lhcb", [], SecretConstraints())


def test_a_record_reads_back_as_references_and_aborted_pilots() -> None:
    a = batch("S", "ce", "q")
    odd = 'https://ce.example.org:8443/arex/rest/1.0/jobs/x"\\\n\u00e9\u2603'
    rows = [
        _Row(a, "p1", "htcondor://ce:9619/1.0", None),
        _Row(a, "p2", odd, None),
        _Row(a, "p3", None, 'CE said: "no" \\ \u00e9'),
        _Row(a, "p4", "r" * 255, None),
    ]
    assert UPDATES.validate_json(record_body(rows)) == {
        "p1": PilotMetadata(pilot_job_reference="htcondor://ce:9619/1.0"),
        "p2": PilotMetadata(pilot_job_reference=odd),
        "p3": PilotMetadata(status="Aborted", status_reason='CE said: "no" \\ \u00e9'),
        "p4": PilotMetadata(pilot_job_reference="r" * 255),
    }
    assert UPDATES.validate_json(record_body([])) == {}


def test_a_record_refuses_what_the_model_refuses() -> None:
    a = batch("S", "ce", "q")
    with pytest.raises(ValueError, match="PilotJobReference over 255"):
        record_body([_Row(a, "p1", "r" * 256, None)])
    with pytest.raises(ValueError, match="StatusReason over 255"):
        record_body([_Row(a, "p1", None, "x" * 256)])
    with pytest.raises(ValueError, match="pilot stamp"):
        record_body([_Row(a, 'p"1', "ref", None)])


def test_a_report_refuses_more_queues_than_the_server_takes_and_a_queue_twice() -> None:
    clock = ManualClock()
    one = ref("a")
    with pytest.raises(ValueError, match="reported twice"):
        report_body([one, ref("a")], Backoff(clock=clock), {}, clock())
    with pytest.raises(ValueError, match=f"at most {MAX_QUEUES}"):
        report_body([one] * (MAX_QUEUES + 1), Backoff(clock=clock), {}, clock())
    assert len(build_report([ref(f"q{i}") for i in range(3)], Backoff(clock=clock), {}, clock())
               .queues) == 3  # fmt: skip
