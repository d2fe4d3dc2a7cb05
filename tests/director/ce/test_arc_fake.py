"""What a real A-REX cannot be made to do on demand, against a fake one behind httpx's
transport: CE-side errors (5xx), a failed wrapper upload, an answer for fewer jobs than asked,
timeouts. The fake mirrors the REST calls the backend makes (`/arex/rest/1.0/jobs?action=...`,
`PUT /jobs/<id>/session/<file>`) with the answer shapes the real one gives (see
test_arc_live.py for the real thing)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path

import httpx
import pytest

from director.ce.arc import ARCCE, ARCCEConfig
from director.ce.base import PilotSubmission, QueueSpec
from director.errors import CEPermanentError, CETemporaryError
from director.render import TemplateRenderer

QUEUE = QueueSpec(name="grid", site="LCG.Fake.test", ce="arc.example.org")


@dataclass
class FakeAREX:
    """A-REX's REST interface as far as the backend uses it, with knobs for failures."""

    submit_status: int = HTTPStatus.CREATED
    answer_fewer: bool = False
    failing_uploads: set[str] = field(default_factory=set)
    timeout: bool = False
    jobs: dict[str, str] = field(default_factory=dict)  # id -> state
    uploads: dict[str, bytes] = field(default_factory=dict)
    actions: list[tuple[str, list[str]]] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.tokens.append(request.headers.get("authorization", ""))
        if self.timeout:
            raise httpx.ReadTimeout("fake timeout", request=request)
        path = request.url.path.removeprefix("/arex/rest/1.0")
        action = request.url.params.get("action")
        if request.method == "POST" and path == "/jobs" and action == "new":
            if self.submit_status != HTTPStatus.CREATED:
                return httpx.Response(self.submit_status)
            count = request.content.decode().count("(&(executable=") or 1
            made = []
            for _ in range(count - 1 if self.answer_fewer else count):
                job_id = f"job{len(self.jobs)}"
                self.jobs[job_id] = "ACCEPTING"
                made.append({"status-code": "201", "reason": "Created", "id": job_id})
            return httpx.Response(HTTPStatus.CREATED, json={"job": made})
        if request.method == "PUT" and path.startswith("/jobs/"):
            job_id = path.split("/")[2]
            if job_id in self.failing_uploads:
                return httpx.Response(HTTPStatus.INTERNAL_SERVER_ERROR)
            self.uploads[job_id] = request.content
            return httpx.Response(HTTPStatus.OK)
        if request.method == "POST" and path == "/jobs" and action in ("kill", "clean", "status"):
            ids = [item["id"] for item in json.loads(request.content)["job"]]
            self.actions.append((action, ids))
            items = [
                {"status-code": "202" if action != "status" else "200", "id": i}
                | ({"state": self.jobs.get(i, "None")} if action == "status" else {})
                for i in ids
            ]
            return httpx.Response(HTTPStatus.OK, json={"job": items})
        return httpx.Response(HTTPStatus.NOT_FOUND)


def make(tmp_path: Path, fake: FakeAREX, token: str = "tok-1") -> tuple[ARCCE, Path]:  # noqa: S107
    token_file = tmp_path / "ce.token"
    token_file.write_text(token)
    ce = ARCCE(
        ARCCEConfig(host="arc.example.org", token_file=token_file),
        renderer=TemplateRenderer(),
        work_dir=tmp_path,
    )
    ce.transport = httpx.MockTransport(fake)
    return ce, token_file


def pilots(n: int) -> list[PilotSubmission]:
    return [PilotSubmission(f"stamp{i}", f"#!/bin/sh\n# secret {i}\n") for i in range(n)]


async def test_a_failed_upload_fails_that_pilot_only_and_its_job_is_discarded(
    tmp_path: Path,
) -> None:
    fake = FakeAREX(failing_uploads={"job1"})
    ce, _ = make(tmp_path, fake)
    results = await ce.submit(QUEUE, pilots(3))
    assert [r.ok for r in results] == [True, False, True]
    assert results[1].temporary
    assert "upload" in (results[1].error or "")
    assert results[0].reference == "arc://arc.example.org:443/job0"
    assert fake.uploads["job2"] == b"#!/bin/sh\n# secret 2\n"
    assert ("kill", ["job1"]) in fake.actions
    assert ("clean", ["job1"]) in fake.actions
    await ce.close()


async def test_an_answer_for_fewer_jobs_discards_them_all(tmp_path: Path) -> None:
    fake = FakeAREX(answer_fewer=True)
    ce, _ = make(tmp_path, fake)
    with pytest.raises(CETemporaryError) as failed:
        await ce.submit(QUEUE, pilots(3))
    assert failed.value.category == "ce_error"
    assert ("kill", ["job0", "job1"]) in fake.actions
    assert fake.uploads == {}
    await ce.close()


@pytest.mark.parametrize(
    ("status", "error", "category"),
    [
        (HTTPStatus.SERVICE_UNAVAILABLE, CETemporaryError, "ce_error"),
        (HTTPStatus.INTERNAL_SERVER_ERROR, CETemporaryError, "ce_error"),
        (HTTPStatus.BAD_REQUEST, CEPermanentError, "rejected"),
        (HTTPStatus.UNAUTHORIZED, CEPermanentError, "auth"),
    ],
)
async def test_submit_errors_are_classified(
    tmp_path: Path, status: int, error: type[Exception], category: str
) -> None:
    ce, _ = make(tmp_path, FakeAREX(submit_status=status))
    with pytest.raises(error) as failed:
        await ce.submit(QUEUE, pilots(2))
    assert getattr(failed.value, "category", None) == category
    await ce.close()


async def test_a_timeout_is_unreachable(tmp_path: Path) -> None:
    ce, _ = make(tmp_path, FakeAREX(timeout=True))
    with pytest.raises(CETemporaryError) as failed:
        await ce.status(["arc://arc.example.org:443/job0"])
    assert failed.value.category == "unreachable"
    await ce.close()


async def test_the_token_file_is_reread_and_foreign_references_refused(tmp_path: Path) -> None:
    fake = FakeAREX()
    ce, token_file = make(tmp_path, fake, "tok-1")
    await ce.submit(QUEUE, pilots(1))
    token_file.write_text("tok-two\n")
    statuses = await ce.status(["arc://arc.example.org:443/job0", "arc://other:443/x", "nonsense"])
    assert fake.tokens[0] == "Bearer tok-1"
    assert fake.tokens[-1] == "Bearer tok-two"
    assert statuses[0].ce_state == "ACCEPTING"
    assert statuses[1].error is not None
    assert "another CE" in statuses[1].error
    assert statuses[2].error is not None
    await ce.close()


@dataclass
class NamelessAREX(FakeAREX):
    """An A-REX that has accepted its jobs but does not show their names (nor states) yet, as
    the real one does for a moment after a submission; and one job of somebody else's."""

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix("/arex/rest/1.0")
        action = request.url.params.get("action")
        if request.method == "GET" and path == "/jobs":
            ids = [*self.jobs, "foreign"]
            return httpx.Response(HTTPStatus.OK, json={"job": [{"id": i} for i in ids]})
        if request.method == "POST" and path == "/jobs" and action == "info":
            ids = [item["id"] for item in json.loads(request.content)["job"]]
            items = [
                {"status-code": "200", "id": i, "info_document": {"ComputingActivity": {}}}
                for i in ids
            ]
            return httpx.Response(HTTPStatus.OK, json={"job": items})
        return super().__call__(request)


async def test_fresh_jobs_without_a_name_yet_are_listed_as_this_directors_own(
    tmp_path: Path,
) -> None:
    """Right after a submission A-REX may not show a job's name: the director still lists
    (and so counts) the jobs it has just submitted, as waiting, and not another's job."""
    fake = NamelessAREX()
    ce, _ = make(tmp_path, fake)
    batch = pilots(2)
    results = await ce.submit(QUEUE, batch)
    assert all(r.ok for r in results), results
    listed = {j.reference: j for j in await ce.list_jobs(QUEUE)}
    assert {j.stamp for j in listed.values()} == {p.stamp for p in batch}
    assert {r.reference for r in results} == set(listed)
    assert {j.status.value for j in listed.values()} == {"Waiting"}
    await ce.close()
