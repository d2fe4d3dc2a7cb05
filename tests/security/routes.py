"""The app's route table as the security tests see it: each route, its policy, a body for it.

Every test here walks `app.routes`, so a route added later is covered without editing the
tests; but a route needs an entry in `REQUESTS` (a plausible request aimed at a target pilot),
and a route without one fails the walk loudly instead of escaping it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute

from server.http import policies
from server.http.policies import Policy

#: Policies a pilot token (from the secret exchange) must never pass.
OPERATOR_POLICIES = {
    policies.READER,
    policies.PILOT_MANAGER,
    policies.LEGACY_PILOT,
    policies.ADMIN_ONLY,
    policies.DIRECTOR,
    policies.SITE_MANAGER_ONLY,
    policies.PILOT_OPERATOR,
}
KNOWN_POLICIES = {*OPERATOR_POLICIES, policies.PUBLIC, policies.PILOT_SELF, policies.PILOT_ONLY}


@dataclass(frozen=True)
class Target:
    """What a request is aimed at: a pilot of `vo`, its secrets, its queue lease."""

    vo: str
    stamp: str
    secret_ids: list[int] = field(default_factory=list)
    queue: str = "ce.example.org/queue"
    lease_holder: str = "holder"
    job_id: int = 4242


@dataclass(frozen=True)
class Req:
    path: str
    json: Any = None
    params: dict[str, Any] | None = None


def new_stamp() -> str:
    return uuid.uuid4().hex


def log_lines(marker: str = "security-test line") -> list[dict[str, str]]:
    return [
        {
            "timestamp": "2026-01-01T00:00:00Z",
            "severity": "INFO",
            "message": marker,
            "scope": "Pilot",
        }
    ]


def _search_vo(t: Target) -> list[dict[str, Any]]:
    return [{"parameter": "VO", "operator": "eq", "value": t.vo}]


Factory = Callable[[Target], Req]

#: (method, path template) -> a plausible request aimed at `Target`.
REQUESTS: dict[tuple[str, str], Factory] = {
    # the home page and discovery (public)
    ("GET", "/"): lambda t: Req("/"),
    ("GET", "/.well-known/openid-configuration"): lambda t: Req(
        "/.well-known/openid-configuration"
    ),
    ("GET", "/.well-known/jwks.json"): lambda t: Req("/.well-known/jwks.json"),
    ("GET", "/api/health"): lambda t: Req("/api/health"),
    ("GET", "/metrics"): lambda t: Req("/metrics"),
    # pilots (DiracX 0.7.0 and ours)
    ("POST", "/api/pilots/"): lambda t: Req(
        "/api/pilots/", {"pilot_stamp": new_stamp(), "vo": t.vo}
    ),
    ("POST", "/api/pilots/bulk"): lambda t: Req(
        "/api/pilots/bulk",
        {"vo": t.vo, "pilots": [{"pilot_stamp": new_stamp()}], "mint_secrets": True},
    ),
    ("PATCH", "/api/pilots/metadata"): lambda t: Req(
        "/api/pilots/metadata", {t.stamp: {"Status": "Failed", "StatusReason": "intruder"}}
    ),
    ("POST", "/api/pilots/search"): lambda t: Req("/api/pilots/search", {"search": _search_vo(t)}),
    ("POST", "/api/pilots/summary"): lambda t: Req(
        "/api/pilots/summary", {"grouping": ["VO", "PilotStamp"], "search": _search_vo(t)}
    ),
    ("DELETE", "/api/pilots/"): lambda t: Req("/api/pilots/", {"pilot_stamps": [t.stamp]}),
    ("PATCH", "/api/pilots/jobs"): lambda t: Req(
        "/api/pilots/jobs", {"pilot_stamp": t.stamp, "job_ids": [t.job_id + 1]}
    ),
    ("GET", "/api/pilots/jobs"): lambda t: Req("/api/pilots/jobs", params={"pilot_stamp": t.stamp}),
    # secrets
    ("POST", "/api/pilots/secrets"): lambda t: Req(
        "/api/pilots/secrets", {"vo": t.vo, "pilot_stamps": [t.stamp]}
    ),
    ("GET", "/api/pilots/secrets"): lambda t: Req(
        "/api/pilots/secrets", params={"pilot_stamp": t.stamp}
    ),
    ("PATCH", "/api/pilots/secrets/{secret_id}"): lambda t: Req(
        f"/api/pilots/secrets/{t.secret_ids[0] if t.secret_ids else 1}",
        {"pilot_secret_use_count_max": 1000, "expiration_minutes": 100_000},
    ),
    ("POST", "/api/pilots/secrets/revoke"): lambda t: Req(
        "/api/pilots/secrets/revoke", {"secret_ids": t.secret_ids, "pilot_stamps": [t.stamp]}
    ),
    # auth (public: the credentials are in the body)
    ("POST", "/api/auth/secret-exchange"): lambda t: Req(
        "/api/auth/secret-exchange", {"pilot_stamp": t.stamp, "pilot_secret": "0" * 64}
    ),
    ("POST", "/api/auth/pilot-token"): lambda t: Req(
        "/api/auth/pilot-token", {"pilot_stamp": t.stamp, "refresh_token": "x.y.z"}
    ),
    ("POST", "/api/auth/revoke"): lambda t: Req(
        "/api/auth/revoke", params={"refresh_token": "x.y.z", "client_id": "pilot"}
    ),
    ("POST", "/api/auth/ce-token"): lambda t: Req(
        "/api/auth/ce-token", {"audience": "https://ce.example.org:8443/arex", "lifetime": 600}
    ),
    # logs
    ("POST", "/api/pilots/internal/message"): lambda t: Req(
        "/api/pilots/internal/message", {"pilot_stamp": t.stamp, "lines": log_lines()}
    ),
    ("POST", "/api/pilots/legacy/message"): lambda t: Req(
        "/api/pilots/legacy/message", {"pilot_stamp": t.stamp, "lines": log_lines()}
    ),
    ("POST", "/api/pilots/search/logs"): lambda t: Req(
        "/api/pilots/search/logs",
        {"search": [{"parameter": "PilotStamp", "operator": "eq", "value": t.stamp}]},
    ),
    # director
    ("POST", "/api/director/leases"): lambda t: Req(
        "/api/director/leases", {"holder": "intruder", "queues": [t.queue], "ttl_seconds": 600}
    ),
    ("DELETE", "/api/director/leases"): lambda t: Req(
        "/api/director/leases", {"holder": t.lease_holder, "queues": [t.queue]}
    ),
    ("PUT", "/api/director/queues"): lambda t: Req(
        "/api/director/queues",
        {
            "queues": [
                {
                    "queue_key": f"Site.{t.vo}.org/{t.queue}",
                    "vo": t.vo,
                    "site": f"Site.{t.vo}.org",
                    "ce": t.queue.split("/")[0],
                    "queue": t.queue.split("/")[-1],
                    "ce_kind": "local",
                    "max_total_pilots": 10,
                    "max_waiting_pilots": 5,
                    "pilots_per_cycle": 5,
                    "enabled": True,
                }
            ]
        },
    ),
    ("GET", "/api/director/queues"): lambda t: Req("/api/director/queues"),
    ("GET", "/api/director/queues/empty-pilots"): lambda t: Req(
        "/api/director/queues/empty-pilots"
    ),
    # bans
    ("GET", "/api/bans"): lambda t: Req("/api/bans", params={"vo": t.vo, "history": "true"}),
    ("POST", "/api/bans"): lambda t: Req(
        "/api/bans",
        {"vo": t.vo, "site": f"Site.{t.vo}.org", "ce": t.queue.split("/")[0], "reason": "test"},
    ),
    ("POST", "/api/bans/allow"): lambda t: Req(
        "/api/bans/allow", {"vo": t.vo, "site": f"Site.{t.vo}.org", "ce": t.queue.split("/")[0]}
    ),
    # kills and pilot outputs
    ("POST", "/api/pilots/kills"): lambda t: Req(
        "/api/pilots/kills", {"pilot_stamps": [t.stamp], "reason": "intruder"}
    ),
    ("GET", "/api/pilots/kills"): lambda t: Req(
        "/api/pilots/kills", params={"vo": t.vo, "pilot_stamp": t.stamp}
    ),
    ("PATCH", "/api/pilots/kills"): lambda t: Req(
        "/api/pilots/kills", {"outcomes": [{"request_id": 1, "outcome": "done"}]}
    ),
    ("POST", "/api/pilots/output-requests"): lambda t: Req(
        "/api/pilots/output-requests", {"pilot_stamps": [t.stamp]}
    ),
    ("GET", "/api/pilots/output-requests"): lambda t: Req(
        "/api/pilots/output-requests", params={"state": "pending"}
    ),
    ("PATCH", "/api/pilots/output-requests"): lambda t: Req(
        "/api/pilots/output-requests",
        {"outcomes": [{"request_id": 1, "outcome": "failed", "error": "intruder"}]},
    ),
    ("PUT", "/api/pilots/output"): lambda t: Req(
        "/api/pilots/output", {"pilot_stamp": t.stamp, "std_output": "intruder"}
    ),
    ("GET", "/api/pilots/output"): lambda t: Req(
        "/api/pilots/output", params={"pilot_stamp": t.stamp}
    ),
}


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    policy: Policy
    make: Factory

    @property
    def id(self) -> str:
        return f"{self.method} {self.path}"


def policy_of(route: Any) -> Policy:
    found = [d.call for d in route.dependant.dependencies if isinstance(d.call, Policy)]
    assert len(found) == 1, f"{route.path} has policies {found}"
    return found[0]


def all_routes(app: FastAPI) -> list[tuple[str, str, Any]]:
    """(method, full path, route) for every route, API or not, through included routers.

    FastAPI 0.165 keeps included routers as `_IncludedRouter` entries in `app.routes`, so a
    plain `isinstance(route, APIRoute)` walk finds nothing at all; `iter_route_contexts`
    flattens them with their prefixes.
    """
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # FastAPI before 0.165: app.routes is already flat
        contexts: list[Any] = list(app.routes)
    else:
        contexts = list(iter_route_contexts(app.routes))
    found = []
    for rc in contexts:
        original = getattr(rc, "original_route", rc)
        if isinstance(original, APIRoute):
            found += [(method, rc.path, rc) for method in sorted(rc.methods)]
    return found


def api_routes(app: FastAPI) -> list[tuple[str, str, Any]]:
    """Every API route (those in the OpenAPI schema). The result is cross-checked against the
    OpenAPI paths so the walk can never silently come back empty again."""
    found = [(m, p, rc) for m, p, rc in all_routes(app) if rc.include_in_schema]
    in_openapi = {
        (method.upper(), path) for path, item in app.openapi()["paths"].items() for method in item
    }
    assert {(m, p) for m, p, _ in found} == in_openapi, "route walk and OpenAPI disagree"
    assert found, "the route walk found no API route"
    return found


def walk(app: FastAPI) -> list[Route]:
    """Every API route of `app` with its policy and request factory; fails on a newcomer."""
    routes: list[Route] = []
    missing: list[str] = []
    unknown_policy: list[str] = []
    for method, path, rc in api_routes(app):
        policy = policy_of(rc)
        key = (method, path)
        if key not in REQUESTS:
            missing.append(f"{method} {path}")
            continue
        if policy not in KNOWN_POLICIES:
            unknown_policy.append(f"{method} {path}: {policy.name}")
        routes.append(Route(method, path, policy, REQUESTS[key]))
    assert not missing, (
        f"routes without an entry in tests/security/routes.py REQUESTS: {missing}; "
        "add a plausible request for each so the security matrix covers them"
    )
    assert not unknown_policy, (
        f"routes with a policy the security matrix does not know: {unknown_policy}"
    )
    return routes


def has_route(app: FastAPI, method: str, path: str) -> bool:
    return any(m == method and p == path for m, p, _ in api_routes(app))
