"""The queue report's body, from config, back-off and last cycle: no server, no CE, no files."""

from __future__ import annotations

from datetime import UTC, datetime

from director.backoff import Backoff
from director.config import CEEntry, PilotOptions, QueueConfig, QueueRef
from director.queue_report import LastCycle, build_report, short_error
from server.models import QueuesReport
from tests.director.conftest import ManualClock


def ref(queue: str = "default", *, enabled: bool = True, **config: object) -> QueueRef:
    q = QueueConfig.model_validate(
        {"max_total_pilots": 10, "max_waiting_pilots": 4, "pilots_per_cycle": 2, **config}
    )
    entry = CEEntry.model_validate({"ce": {"kind": "local"}, "queues": {queue: q}})
    return QueueRef(
        site="Site.example.org",
        ce="ce.example.org",
        queue=queue,
        vo="lhcb",
        config=q,
        entry=entry,
        enabled=enabled,
        pilot=PilotOptions(),
    )


def utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def test_every_queue_with_its_limits_enabled_or_not() -> None:
    clock = ManualClock()
    refs = [ref("a"), ref("b", enabled=False, ce_queue="long", max_total_pilots=0)]
    report = build_report(refs, Backoff(clock=clock), {}, clock())
    a, b = report.queues
    assert a.queue_key == "Site.example.org/ce.example.org/a"
    assert (a.vo, a.site, a.ce, a.queue, a.ce_kind) == (
        "lhcb",
        "Site.example.org",
        "ce.example.org",
        "a",
        "local",
    )
    assert (a.max_total_pilots, a.max_waiting_pilots, a.pilots_per_cycle) == (10, 4, 2)
    assert a.enabled
    assert (a.failures, a.backoff_until, a.last_error) == (0, None, None)
    assert (a.last_cycle_at, a.last_submitted, a.last_waiting, a.last_running) == (
        None,
        None,
        None,
        None,
    )
    assert b.queue == "long"  # the CE-side name, as pilot records have it
    assert b.queue_key.endswith("/b")
    assert not b.enabled
    assert b.max_total_pilots == 0


def test_back_off_is_failures_and_an_absolute_until() -> None:
    clock = ManualClock()
    backoff = Backoff(initial=60, maximum=600, clock=clock)
    r = ref()
    backoff.failure(r.key, "CE unreachable")
    backoff.failure(r.key, "CE unreachable again")  # rests 120 s from now
    clock.advance(20)
    [q] = build_report([r], backoff, {}, clock()).queues
    assert q.failures == 2
    assert q.backoff_until == utc(clock() + 100)
    assert q.last_error == "CE unreachable again"
    clock.advance(100)  # the rest is over; the failures still count until a success
    [q] = build_report([r], backoff, {}, clock()).queues
    assert (q.failures, q.backoff_until) == (2, None)
    backoff.success(r.key)
    [q] = build_report([r], backoff, {}, clock()).queues
    assert (q.failures, q.backoff_until, q.last_error) == (0, None, None)


def test_last_cycle_with_and_without_counts() -> None:
    clock = ManualClock()
    a, b = ref("a"), ref("b")
    last = {
        a.key: LastCycle(at=clock() - 5, submitted=3, waiting=1, running=2, error=None),
        b.key: LastCycle(
            at=clock() - 5, submitted=0, waiting=None, running=None, error="ServerError: 503"
        ),
    }
    qa, qb = build_report([a, b], Backoff(clock=clock), last, clock()).queues
    assert qa.last_cycle_at == utc(clock() - 5)
    assert (qa.last_submitted, qa.last_waiting, qa.last_running, qa.last_error) == (3, 1, 2, None)
    assert (qb.last_submitted, qb.last_waiting, qb.last_running) == (0, None, None)
    assert qb.last_error == "ServerError: 503"


def test_error_text_is_one_short_line_without_secrets() -> None:
    secret = "ab" * 32
    jwt = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
    text = short_error(f"submit failed:\n  --pilotSecret {secret} Bearer {jwt}\n" + "x" * 500)
    assert text is not None
    assert secret not in text
    assert jwt not in text
    assert "\n" not in text
    assert len(text) == 255
    assert text.startswith("submit failed: --pilotSecret <redacted> Bearer <redacted>")
    assert short_error("") is None
    assert short_error(None) is None
    stamp = "0123456789abcdef" * 2  # a 32-hex pilot stamp is not a secret
    assert short_error(f"pilot {stamp} aborted") == f"pilot {stamp} aborted"


def test_the_body_passes_the_servers_model() -> None:
    """Extreme config values are clamped or cut to what the server's model accepts."""
    clock = ManualClock()
    r = ref("q" * 128, ce_queue="c" * 200, max_total_pilots=2**40, max_waiting_pilots=2**40)
    backoff = Backoff(clock=clock)
    backoff.failure(r.key, "z" * 1000)
    last = {r.key: LastCycle(at=clock(), submitted=2**40, waiting=2**40, running=0, error=None)}
    body = build_report([r], backoff, last, clock())
    again = QueuesReport.model_validate(body.model_dump(mode="json"))
    [q] = again.queues
    assert q.max_total_pilots == 2**31 - 1
    assert len(q.queue) == 128
    assert q.last_error is not None
    assert len(q.last_error) == 255
