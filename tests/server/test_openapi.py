"""The OpenAPI document lists every error a route can answer, each with the one error body.

That the server answers nothing else is checked by schemathesis (`status_code_conformance` in
tests/security/test_fuzz.py); here, the shape of the document itself.
"""

from __future__ import annotations

from typing import Any

import pytest

from server.app import create_app
from server.settings import ServerSettings

PUBLIC = {
    ("GET", "/"),
    ("GET", "/.well-known/openid-configuration"),
    ("GET", "/.well-known/jwks.json"),
    ("GET", "/api/health"),
    ("GET", "/metrics"),
    ("POST", "/api/auth/secret-exchange"),
    ("POST", "/api/auth/pilot-token"),
    ("POST", "/api/auth/revoke"),
}
ERROR = {"$ref": "#/components/schemas/HTTPError"}


def operations() -> list[tuple[str, str, dict[str, Any]]]:
    spec = create_app(ServerSettings()).openapi()
    return [
        (method.upper(), path, op)
        for path, item in spec["paths"].items()
        for method, op in item.items()
    ]


def test_the_document_covers_the_api() -> None:
    assert len(operations()) >= 25


@pytest.mark.parametrize(("method", "path", "op"), operations(), ids=lambda v: str(v)[:40])
def test_every_error_answer_is_documented_with_the_error_body(
    method: str, path: str, op: dict[str, Any]
) -> None:
    responses = op["responses"]
    if (method, path) not in PUBLIC:
        assert {"401", "403"} <= responses.keys(), (method, path)
    if method in ("POST", "PUT", "PATCH", "DELETE"):
        assert "413" in responses, (method, path)
    for status, answer in responses.items():
        if int(status) < 400 or status == "416" or path == "/api/health":
            continue  # a page past the end is an empty list; health answers its own body
        schema = answer["content"]["application/json"]["schema"]
        if status == "422":
            assert schema == {"$ref": "#/components/schemas/HTTPValidationError"} or (
                ERROR in schema.get("anyOf", [])
            )
        else:
            assert schema == ERROR, (method, path, status)


def test_database_routes_say_they_may_be_unavailable() -> None:
    for method, path, op in operations():
        if path.startswith("/api/pilots") or path in ("/api/director/queues", "/api/auth/revoke"):
            retry = op["responses"]["503"]["headers"]["Retry-After"]
            assert retry["required"], (method, path)


def test_searches_document_their_partial_answers() -> None:
    for method, path, op in operations():
        if path in ("/api/pilots/search", "/api/pilots/search/logs"):
            for status in ("206", "416"):
                assert "Content-Range" in op["responses"][status]["headers"], (method, status)
