"""Prometheus metrics of the director, on a registry of their own (tests make as many as they
like; the daemon serves its registry over HTTP when `director.metrics_port` is set)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.submitted = Counter(
            "site_director_pilots_submitted_total",
            "pilots submitted to a CE",
            ["queue"],
            registry=self.registry,
        )
        self.failed = Counter(
            "site_director_pilots_failed_total",
            "pilots whose submission failed",
            ["queue"],
            registry=self.registry,
        )
        self.aborted = Counter(
            "site_director_pilots_aborted_total",
            "pilots the director marked Aborted (stuck, lost, never submitted)",
            ["queue"],
            registry=self.registry,
        )
        self.cycle_seconds = Histogram(
            "site_director_cycle_seconds",
            "duration of a cycle",
            ["cycle"],
            registry=self.registry,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
        )
        self.backoff_seconds = Gauge(
            "site_director_queue_backoff_seconds",
            "seconds a queue still rests",
            ["queue"],
            registry=self.registry,
        )
        self.live_pilots = Gauge(
            "site_director_live_pilots",
            "pilots not yet final, by status",
            ["queue", "status"],
            registry=self.registry,
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
