"""Fuzzing: schemathesis over every operation of the OpenAPI, then the search DSL by property.

A dedicated live server (SQLite, fresh data directory) takes the abuse, so the rows fuzzing
creates never reach other tests. Bounded by `max_examples` to stay well under two minutes.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from http import HTTPStatus
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import checks

from server.app import create_app
from server.settings import ServerSettings
from tests.conftest import LiveServer, start_live_server

#: Whether the server answers at all, and answers as it declares: every status it sends is in
#: the OpenAPI document (server/routers/responses.py derives the errors from the error table),
#: with the body and content type declared for it.
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.response_schema_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
]
EXAMPLES = 10


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = start_live_server(tmp_path_factory.mktemp("fuzz-server"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module", autouse=True)
def seeded(fuzz_server: LiveServer) -> None:
    """A few pilots in place, so that searches find rows and their shape is checked."""
    admin = {"Authorization": f"Bearer {fuzz_server.admin_token}"}
    with httpx.Client(base_url=fuzz_server.url, headers=admin) as client:
        for vo in ("lhcb", "dteam"):
            r = client.post(
                "/api/pilots/bulk",
                json={
                    "vo": vo,
                    "pilots": [{"pilot_stamp": uuid.uuid4().hex} for _ in range(5)],
                    "mint_secrets": True,
                },
            )
            assert r.status_code == HTTPStatus.CREATED, r.text


@pytest.fixture(scope="module")
def fuzz_session() -> Iterator[Any]:
    """One keep-alive session for every generated call."""
    import requests

    with requests.Session() as session:
        yield session


# The OpenAPI of an app built like the live one (routes do not depend on settings); loaded at
# import because schemathesis' fixture-based loader does not work with pytest 9.
OPENAPI = create_app(ServerSettings()).openapi()
schema = schemathesis.openapi.from_dict(OPENAPI)
#: Without a token every operation is refused before its body matters, so the (slow) coverage
#: phase of boundary values is spent on the administrator's pass only; a user of one VO is
#: refused most operations (403) and reads its VO only, so it gets the generated cases only too.
anonymous_schema = schemathesis.openapi.from_dict(OPENAPI)
anonymous_schema.config.phases.coverage.enabled = False
user_schema = schemathesis.openapi.from_dict(OPENAPI)
user_schema.config.phases.coverage.enabled = False


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_fuzz_as_admin(case: Any, fuzz_server: LiveServer, fuzz_session: Any) -> None:
    case.call_and_validate(
        base_url=fuzz_server.url,
        session=fuzz_session,
        headers={"Authorization": f"Bearer {fuzz_server.admin_token}"},
        checks=CHECKS,
    )


@user_schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_fuzz_as_vo_user(case: Any, fuzz_server: LiveServer, fuzz_session: Any) -> None:
    response = case.call_and_validate(
        base_url=fuzz_server.url,
        session=fuzz_session,
        headers={"Authorization": f"Bearer {fuzz_server.token('alice', 'lhcb')}"},
        checks=CHECKS,
    )
    searched = case.method == "POST" and case.operation.path.startswith("/api/pilots/search")
    if searched and response.status_code in (HTTPStatus.OK, HTTPStatus.PARTIAL_CONTENT):
        assert all(row.get("VO", "lhcb") == "lhcb" for row in response.json()), response.text


@anonymous_schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_fuzz_without_auth(case: Any, fuzz_server: LiveServer, fuzz_session: Any) -> None:
    response = case.call_and_validate(base_url=fuzz_server.url, session=fuzz_session, checks=CHECKS)
    public = case.operation.path == "/" or case.operation.path.startswith(
        ("/.well-known/", "/api/health", "/metrics")
    )
    if not public and not case.operation.path.startswith("/api/auth/"):
        # refused one way or another (401, or 400/413/422 for a body that does not parse
        # before the token is looked at), never served
        assert HTTPStatus.BAD_REQUEST <= response.status_code < HTTPStatus.INTERNAL_SERVER_ERROR, (
            case.method,
            case.formatted_path,
            response.status_code,
            response.text[:200],
        )


# --- the search DSL, by property ------------------------------------------------------------

SITES = ["lcg.cern.ch", "lcg.in2p3.fr", "dirac.cern.ch", "osg.fnal.gov", "arc.ndgf.org"]
QUEUES = ["long", "short", "mcore"]
STATUSES = ["Submitted", "Waiting", "Running", "Done", "Failed", "Aborted", "Unknown"]
TEXT_COLUMNS = ["PilotStamp", "GridSite", "Queue", "Status", "VO", "DestinationSite"]
NUMBER_COLUMNS = ["PilotID", "CurrentJobID", "BenchMark"]
ALL_COLUMNS = [*TEXT_COLUMNS, *NUMBER_COLUMNS, "AccountingSent", "SubmissionTime", "GridType"]
SCALAR_OPS = ["eq", "neq", "gt", "lt", "like", "not like", "regex"]
VECTOR_OPS = ["in", "not in"]
REGEXES = ["^lcg", "ch$", "cern|fnal", "[a-d]+\\.", "\\.(fr|org)$", "^(long|short)$", "n{1,2}"]
LIKES = ["lcg.%", "%.ch", "%cern%", "_rc.%", "%", "lon_", "%o%t%", "m%e"]


@pytest.fixture(scope="module")
def dsl_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A server with a known, varied set of pilots and nothing else."""
    server = start_live_server(tmp_path_factory.mktemp("dsl-server"))
    admin = {"Authorization": f"Bearer {server.admin_token}"}
    with httpx.Client(base_url=server.url, headers=admin) as client:
        for vo in ("lhcb", "dteam"):
            pilots = [
                {
                    "pilot_stamp": uuid.uuid4().hex[: 8 + i % 20],
                    "grid_site": SITES[i % len(SITES)],
                    "queue": QUEUES[i % len(QUEUES)],
                    "destination_site": f"ce{i % 4}.example.org",
                    "pilot_status": STATUSES[(i * 3) % len(STATUSES)],
                }
                for i in range(15)
            ]
            r = client.post("/api/pilots/bulk", json={"vo": vo, "pilots": pilots})
            assert r.status_code == HTTPStatus.CREATED, r.text
            updates = {
                p["pilot_stamp"]: {"BenchMark": (i * 7 % 11) / 2, "CurrentJobID": i * 13 % 9}
                for i, p in enumerate(pilots)
            }
            r = client.patch("/api/pilots/metadata", json=updates)
            assert r.status_code == HTTPStatus.NO_CONTENT, r.text
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def dsl_client(dsl_server: LiveServer) -> Iterator[httpx.Client]:
    """One keep-alive connection for all examples (a client per request costs an SSL context)."""
    with httpx.Client(base_url=dsl_server.url) as client:
        yield client


@pytest.fixture(scope="module")
def dsl_rows(dsl_server: LiveServer) -> list[dict[str, Any]]:
    headers = {"Authorization": f"Bearer {dsl_server.admin_token}"}
    r = httpx.post(
        f"{dsl_server.url}/api/pilots/search", json={}, params={"per_page": 1000}, headers=headers
    )
    assert r.status_code == HTTPStatus.OK, r.text
    rows: list[dict[str, Any]] = r.json()
    assert len(rows) == 30
    return rows


def _like(pattern: str) -> re.Pattern[str]:
    parts = [".*" if c == "%" else "." if c == "_" else re.escape(c) for c in pattern]
    return re.compile("".join(parts), re.DOTALL)


def _matches(row: dict[str, Any], spec: dict[str, Any]) -> bool:
    """What the DSL means, written independently of the server's SQL."""
    actual = row[spec["parameter"]]
    op = spec["operator"]
    kind = type(actual)

    def typed(v: Any) -> Any:
        return kind(v)

    if op == "eq":
        return bool(actual == typed(spec["value"]))
    if op == "neq":
        return bool(actual != typed(spec["value"]))
    if op == "gt":
        return bool(actual > typed(spec["value"]))
    if op == "lt":
        return bool(actual < typed(spec["value"]))
    if op == "like":
        return _like(spec["value"]).fullmatch(actual) is not None
    if op == "not like":
        return _like(spec["value"]).fullmatch(actual) is None
    if op == "regex":
        return re.search(spec["value"], actual) is not None
    if op == "in":
        return actual in {typed(v) for v in spec["values"]}
    assert op == "not in"
    return actual not in {typed(v) for v in spec["values"]}


def _value_for(column: str) -> st.SearchStrategy[Any]:
    if column == "PilotID":
        return st.integers(0, 35)
    if column == "CurrentJobID":
        return st.integers(0, 9)
    if column == "BenchMark":
        return st.sampled_from([0.0, 0.5, 1.0, 2.5, 4.5, 5.0, 6.0])
    pools = {
        "GridSite": SITES,
        "Queue": QUEUES,
        "Status": STATUSES,
        "VO": ["lhcb", "dteam", "atlas"],
        "DestinationSite": [f"ce{i}.example.org" for i in range(5)],
    }
    if column in pools:
        return st.sampled_from(pools[column])
    return st.text("0123456789abcdef", min_size=1, max_size=12)


@st.composite
def valid_spec(draw: st.DrawFn) -> dict[str, Any]:
    column = draw(st.sampled_from([*TEXT_COLUMNS, *NUMBER_COLUMNS]))
    ops = SCALAR_OPS if column in TEXT_COLUMNS else ["eq", "neq", "gt", "lt"]
    op = draw(st.sampled_from([*ops, *VECTOR_OPS]))
    if op in VECTOR_OPS:
        return {"parameter": column, "operator": op, "values": draw(st.lists(_value_for(column)))}
    if op == "regex":
        return {"parameter": column, "operator": op, "value": draw(st.sampled_from(REGEXES))}
    if op in ("like", "not like"):
        return {"parameter": column, "operator": op, "value": draw(st.sampled_from(LIKES))}
    return {"parameter": column, "operator": op, "value": draw(_value_for(column))}


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    specs=st.lists(valid_spec(), max_size=3),
    as_admin=st.booleans(),
    distinct=st.booleans(),
)
def test_valid_searches_return_exactly_the_matching_rows(
    dsl_server: LiveServer,
    dsl_client: httpx.Client,
    dsl_rows: list[dict[str, Any]],
    specs: list[dict[str, Any]],
    as_admin: bool,
    distinct: bool,
) -> None:
    token = dsl_server.admin_token if as_admin else dsl_server.token("alice", "lhcb")
    r = dsl_client.post(
        "/api/pilots/search",
        json={"search": specs, "distinct": distinct},
        params={"per_page": 1000},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert r.status_code == HTTPStatus.OK, (specs, r.status_code, r.text)
    expected = {
        row["PilotID"]
        for row in dsl_rows
        if (as_admin or row["VO"] == "lhcb") and all(_matches(row, s) for s in specs)
    }
    assert {row["PilotID"] for row in r.json()} == expected, specs


JSON_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(categories=["L", "N", "P", "S", "Zs", "Cc", "Cs"]), max_size=16)
)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)
ANY_PARAMETER = (
    st.sampled_from(ALL_COLUMNS)
    | st.sampled_from(["JobID", "pilotstamp", ""])
    | st.text(max_size=12)
)
ANY_OPERATOR = st.sampled_from([*SCALAR_OPS, *VECTOR_OPS]) | st.text(max_size=10)
ANY_PATTERN = st.sampled_from(
    ["([", "a{999}", "(?P<x>a)", "\\", "%\\", "(a+)+$", "[[:alpha:]]", "\\p{L}"]
) | st.text(max_size=12)
ANY_SPEC = st.fixed_dictionaries(
    {"parameter": ANY_PARAMETER, "operator": ANY_OPERATOR},
    optional={
        "value": JSON_VALUES | ANY_PATTERN,
        "values": st.lists(JSON_VALUES, max_size=4) | JSON_VALUES,
        "extra": JSON_VALUES,
    },
)
ANY_BODY = st.fixed_dictionaries(
    {},
    optional={
        "search": st.lists(ANY_SPEC | JSON_VALUES, max_size=3) | JSON_VALUES,
        "sort": st.lists(
            st.fixed_dictionaries(
                {"parameter": ANY_PARAMETER},
                optional={"direction": st.sampled_from(["asc", "desc"]) | JSON_VALUES},
            ),
            max_size=2,
        ),
        "parameters": st.lists(ANY_PARAMETER, max_size=3) | JSON_VALUES,
        "grouping": st.lists(ANY_PARAMETER, max_size=3) | JSON_VALUES,
        "distinct": JSON_VALUES,
    },
)
PAGES = st.integers(min_value=-5, max_value=2**70) | st.sampled_from([1, 2, 10**9])


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    path=st.sampled_from(["/api/pilots/search", "/api/pilots/summary", "/api/pilots/search/logs"]),
    body=ANY_BODY | JSON_VALUES,
    page=PAGES,
    per_page=PAGES,
    as_admin=st.booleans(),
)
def test_any_search_body_is_answered_without_a_server_error(
    dsl_server: LiveServer,
    dsl_client: httpx.Client,
    path: str,
    body: Any,
    page: int,
    per_page: int,
    as_admin: bool,
) -> None:
    token = dsl_server.admin_token if as_admin else dsl_server.token("alice", "lhcb")
    r = dsl_client.post(
        path,
        # ASCII-escaped, so unpaired surrogates travel as valid JSON ("\ud800")
        content=json.dumps(body).encode(),
        params={"page": page, "per_page": per_page},
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    assert r.status_code < HTTPStatus.INTERNAL_SERVER_ERROR, (path, body, r.status_code, r.text)
    if r.status_code in (HTTPStatus.OK, HTTPStatus.PARTIAL_CONTENT):
        assert isinstance(r.json(), list)
        if not as_admin:
            assert all(row.get("VO", "lhcb") == "lhcb" for row in r.json()), r.text[:300]
