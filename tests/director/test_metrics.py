"""The per-queue metric families (`director.metrics._LabelledValues`) expose what
prometheus_client's own Counter and Gauge would: same names, types, help, labels and samples."""

from __future__ import annotations

import re
import threading

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from director.metrics import Metrics


def _exposition(registry: CollectorRegistry) -> str:
    """The text exposition with the `_created` timestamps (made at different instants) out."""
    text = generate_latest(registry).decode()
    return re.sub(r"(_created(\{[^}]*\})?) \S+", r"\1 T", text)


def test_per_queue_families_expose_what_prometheus_client_would() -> None:
    metrics = Metrics()
    metrics.submitted.labels("S/ce/q").inc(3)
    metrics.submitted.labels("S/ce/q").inc(2)
    metrics.failed.labels("S/ce/q").inc(0)
    metrics.aborted.labels("S/ce/q2").inc()
    metrics.backoff_seconds.labels("S/ce/q").set(12.5)
    metrics.live_pilots.labels("S/ce/q", "Waiting").set(4)

    reference = CollectorRegistry()
    submitted = Counter(
        "site_director_pilots_submitted_total", "pilots submitted to a CE", ["queue"],
        registry=reference,
    )  # fmt: skip
    failed = Counter(
        "site_director_pilots_failed_total", "pilots whose submission failed", ["queue"],
        registry=reference,
    )  # fmt: skip
    aborted = Counter(
        "site_director_pilots_aborted_total",
        "pilots the director marked Aborted (stuck, lost, never submitted)",
        ["queue"],
        registry=reference,
    )
    backoff = Gauge(
        "site_director_queue_backoff_seconds", "seconds a queue still rests", ["queue"],
        registry=reference,
    )  # fmt: skip
    live = Gauge(
        "site_director_live_pilots", "pilots not yet final, by status", ["queue", "status"],
        registry=reference,
    )  # fmt: skip
    submitted.labels("S/ce/q").inc(5)
    failed.labels("S/ce/q").inc(0)
    aborted.labels("S/ce/q2").inc()
    backoff.labels("S/ce/q").set(12.5)
    live.labels("S/ce/q", "Waiting").set(4)

    ours = [
        block
        for block in _exposition(metrics.registry).split("# HELP ")
        if not block.startswith(
            ("site_director_cycle", "site_director_token", "site_director_last")
        )
    ]
    assert ours == _exposition(reference).split("# HELP ")
    registry = metrics.registry
    assert (
        registry.get_sample_value("site_director_pilots_submitted_total", {"queue": "S/ce/q"}) == 5
    )
    created = registry.get_sample_value(
        "site_director_pilots_submitted_created", {"queue": "S/ce/q"}
    )
    assert created is not None
    assert created > 0


def test_counters_refuse_to_go_down_and_labels_are_counted() -> None:
    metrics = Metrics()
    with pytest.raises(ValueError, match="non-negative"):
        metrics.submitted.labels("S/ce/q").inc(-1)
    with pytest.raises(AttributeError):
        metrics.submitted.labels("S/ce/q").set(3)
    with pytest.raises(ValueError, match="labels"):
        metrics.live_pilots.labels("S/ce/q")
    assert metrics.registry.get_sample_value(
        "site_director_pilots_submitted_total", {"queue": "S/ce/q"}
    ) is None  # fmt: skip


def test_a_scrape_while_queues_are_added_sees_a_consistent_family() -> None:
    """The metrics server scrapes from its own thread while the cycle adds queues."""
    metrics = Metrics()
    done = threading.Event()

    def add() -> None:
        for n in range(20_000):
            metrics.submitted.labels(f"S/ce/q{n}").inc()
        done.set()

    writer = threading.Thread(target=add)
    writer.start()
    try:
        while not done.is_set():  # raised "dictionary changed size" without the lock
            generate_latest(metrics.registry)
    finally:
        writer.join()
    text = generate_latest(metrics.registry).decode()
    assert text.count("site_director_pilots_submitted_total{") == 20_000
