"""The server's Prometheus figures, served at `/metrics` (`server.routers.wellknown`)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

REQUESTS = Counter(
    "site_director_server_requests_total", "HTTP requests served", ["method", "route", "status"]
)
LATENCY = Histogram(
    "site_director_server_request_seconds",
    "HTTP request latency",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
