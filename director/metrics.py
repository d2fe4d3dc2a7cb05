"""Prometheus metrics of the director, on a registry of their own (tests make as many as they
like; the daemon serves its registry over HTTP when `director.metrics_port` is set).

The per-queue families (submitted, failed, aborted, back-off, live pilots) are `_LabelledValues`:
one float per label set in a dictionary, turned into samples when scraped. prometheus_client's
own labelled child is an object with a lock and a value object per series, ~600 bytes: 18 MB
for 10,000 queues' three families, against ~2 MB here. Names, types, labels and samples
(`_total` and `_created` of a counter) are the same as those of prometheus_client's Counter and
Gauge; the cycle-wide families stay prometheus_client's own.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from typing import Literal

from prometheus_client import CollectorRegistry, Gauge, Histogram, start_http_server
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric


class _Series:
    """One label set of a `_LabelledValues`, made per call and not kept: what `.labels(...)`
    returns, with the `inc`/`set` of prometheus_client's children."""

    __slots__ = ("_family", "_key")

    def __init__(self, family: _LabelledValues, key: str | tuple[str, ...]) -> None:
        self._family = family
        self._key = key

    def inc(self, amount: float = 1) -> None:
        self._family.add(self._key, amount)

    def set(self, value: float) -> None:
        self._family.put(self._key, value)


class _LabelledValues:
    """A counter or gauge family with labels, its values in a dictionary keyed by the label
    values (the one string itself for a single label, so a queue's key is shared, not copied).
    Registered on the registry as a collector; the scrape runs in the metrics server's thread,
    hence the lock."""

    def __init__(
        self,
        kind: Literal["counter", "gauge"],
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        registry: CollectorRegistry,
    ) -> None:
        self._kind = kind
        # prometheus_client drops a counter's `_total` from the family name and adds it back
        # to the sample; so does CounterMetricFamily
        self._name = name
        self._documentation = documentation
        self._labelnames = tuple(labelnames)
        self._values: dict[str | tuple[str, ...], float] = {}
        self._created: dict[str | tuple[str, ...], float] = {}
        self._lock = threading.Lock()
        registry.register(self)

    def labels(self, *values: str) -> _Series:
        if len(values) != len(self._labelnames):
            raise ValueError(f"{self._name}: labels {self._labelnames}, got {values!r}")
        key: str | tuple[str, ...] = str(values[0]) if len(values) == 1 else tuple(map(str, values))
        return _Series(self, key)

    def add(self, key: str | tuple[str, ...], amount: float) -> None:
        if self._kind == "counter" and amount < 0:
            raise ValueError("Counters can only be incremented by non-negative amounts.")
        with self._lock:
            if key not in self._values:
                self._created[key] = time.time() if self._kind == "counter" else 0.0
            self._values[key] = self._values.get(key, 0.0) + amount

    def put(self, key: str | tuple[str, ...], value: float) -> None:
        if self._kind == "counter":
            raise AttributeError("a counter has no set()")
        with self._lock:
            self._values[key] = float(value)

    def describe(self) -> list[Metric]:
        """The family without samples: lets the registry check names without collecting."""
        return [self._family()]

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            items = list(self._values.items())
            created = dict(self._created) if self._kind == "counter" else {}
        family = self._family()
        for key, value in items:
            labels = [key] if isinstance(key, str) else list(key)
            if isinstance(family, CounterMetricFamily):
                family.add_metric(labels, value, created=created.get(key))
            else:
                family.add_metric(labels, value)
        yield family

    def _family(self) -> CounterMetricFamily | GaugeMetricFamily:
        if self._kind == "counter":
            return CounterMetricFamily(self._name, self._documentation, labels=self._labelnames)
        return GaugeMetricFamily(self._name, self._documentation, labels=self._labelnames)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.submitted = _LabelledValues(
            "counter",
            "site_director_pilots_submitted_total",
            "pilots submitted to a CE",
            ["queue"],
            self.registry,
        )
        self.failed = _LabelledValues(
            "counter",
            "site_director_pilots_failed_total",
            "pilots whose submission failed",
            ["queue"],
            self.registry,
        )
        self.aborted = _LabelledValues(
            "counter",
            "site_director_pilots_aborted_total",
            "pilots the director marked Aborted (stuck, lost, never submitted)",
            ["queue"],
            self.registry,
        )
        self.cycle_seconds = Histogram(
            "site_director_cycle_seconds",
            "duration of a cycle",
            ["cycle"],
            registry=self.registry,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
        )
        self.backoff_seconds = _LabelledValues(
            "gauge",
            "site_director_queue_backoff_seconds",
            "seconds a queue still rests",
            ["queue"],
            self.registry,
        )
        self.live_pilots = _LabelledValues(
            "gauge",
            "site_director_live_pilots",
            "pilots not yet final, by status",
            ["queue", "status"],
            self.registry,
        )

        self.token_expiry = Gauge(
            "site_director_token_expiry_timestamp_seconds",
            "expiry (Unix time, the token's exp claim) of the director's token last read",
            registry=self.registry,
        )
        self.last_success = Gauge(
            "site_director_last_successful_cycle_timestamp_seconds",
            "end (Unix time) of the last cycle in which no queue failed",
            ["cycle"],
            registry=self.registry,
        )

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        """Serve /metrics from a background thread (prometheus_client's own server)."""
        start_http_server(port, addr=host, registry=self.registry)
