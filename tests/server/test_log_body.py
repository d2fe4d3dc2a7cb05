"""The log route's own body reader answers exactly as FastAPI does for `body: LogBatch`.

`server.routers.log_body` parses the internal log route's body itself (orjson and a hand check)
and falls back to FastAPI's steps for anything unusual. Here two routes on one app, one with
FastAPI's body parameter and one with the reader, get the same bodies: the same status and
the same answer, for good and bad ones alike."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import pytest
from fastapi import FastAPI, Request

from server.app import create_app
from server.http.handlers import install
from server.models import LogBatch
from server.routers.log_body import fast_lines, read_lines
from server.settings import ServerSettings
from tests.server.body_twins import twin_answers, unresolved_refs

LINE = {"timestamp": "2026-01-02T03:04:05.123456Z", "severity": "INFO", "message": "hello"}


def twin_app() -> FastAPI:
    app = FastAPI()
    install(app)

    @app.post("/fastapi")
    async def by_fastapi(body: LogBatch) -> list[str]:
        # ascii(): a lone surrogate, valid in JSON, could not be encoded back
        return [ascii((x.timestamp, x.severity, x.message, x.scope)) for x in body.lines]

    @app.post("/ours")
    async def by_reader(request: Request) -> list[str]:
        return [ascii(line) for line in await read_lines(request)]

    return app


JSON = "application/json"
CASES: list[tuple[str, bytes, str | None]] = [
    ("one line", b'{"lines": [{"timestamp": "t", "severity": "INFO", "message": "m"}]}', JSON),
    (
        "scope given",
        b'{"lines": [{"timestamp": "t", "severity": "I", "message": "m", "scope": "S"}]}',
        JSON,
    ),
    ("no lines", b"{}", JSON),
    ("empty lines", b'{"lines": []}', JSON),
    (
        "extra keys",
        b'{"lines": [{"timestamp": "t", "severity": "I", "message": "m", "x": 1}], "y": 2}',
        JSON,
    ),
    ("pilot_stamp", b'{"pilot_stamp": "abc", "lines": []}', JSON),
    ("pilot_stamp null", b'{"pilot_stamp": null, "lines": []}', JSON),
    ("pilot_stamp int", b'{"pilot_stamp": 5, "lines": []}', JSON),
    ("charset", b'{"lines": []}', "application/json; charset=utf-8"),
    ("+json", b'{"lines": []}', "application/vnd.api+json"),
    ("upper case", b'{"lines": []}', "Application/JSON"),
    ("text/plain", b'{"lines": []}', "text/plain"),
    ("no content type", b'{"lines": []}', None),
    ("no body", b"", JSON),
    ("invalid JSON", b'{"lines": [', JSON),
    ("not UTF-8", b'{"lines": ["\xff"]}', JSON),
    ("BOM", b'\xef\xbb\xbf{"lines": []}', JSON),
    ("NaN", b'{"lines": [], "pilot_stamp": NaN}', JSON),
    (
        "lone surrogate",
        b'{"lines": [{"timestamp": "t", "severity": "I", "message": "a\\ud800"}]}',
        JSON,
    ),
    ("a list", b"[]", JSON),
    ("a string", b'"x"', JSON),
    ("lines an object", b'{"lines": {}}', JSON),
    ("line a string", b'{"lines": ["x"]}', JSON),
    ("missing message", b'{"lines": [{"timestamp": "t", "severity": "I"}]}', JSON),
    ("message an int", b'{"lines": [{"timestamp": "t", "severity": "I", "message": 5}]}', JSON),
    ("message null", b'{"lines": [{"timestamp": "t", "severity": "I", "message": null}]}', JSON),
    (
        "scope null",
        b'{"lines": [{"timestamp": "t", "severity": "I", "message": "m", "scope": null}]}',
        JSON,
    ),
    (
        "severity too long",
        b'{"lines": [{"timestamp": "t", "severity": "' + b"S" * 17 + b'", "message": "m"}]}',
        JSON,
    ),
    (
        "severity at its limit",
        b'{"lines": [{"timestamp": "t", "severity": "' + b"S" * 16 + b'", "message": "m"}]}',
        JSON,
    ),
    (
        "timestamp too long",
        b'{"lines": [{"timestamp": "' + b"1" * 65 + b'", "severity": "I", "message": "m"}]}',
        JSON,
    ),
    (
        "scope too long",
        b'{"lines": [{"timestamp": "t", "severity": "I", "message": "m", "scope": "'
        + "é".encode() * 65
        + b'"}]}',
        JSON,
    ),
    (
        "scope at its limit in characters",
        b'{"lines": [{"timestamp": "t", "severity": "I", "message": "m", "scope": "'
        + "é".encode() * 64
        + b'"}]}',
        JSON,
    ),
    ("big integer", b'{"lines": [], "z": 123456789012345678901234567890}', JSON),
    (
        "second line bad",
        b'{"lines": [{"timestamp": "t", "severity": "I", "message": "m"}, {"timestamp": 1}]}',
        JSON,
    ),
]


@pytest.mark.parametrize(
    ("body", "content_type"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
async def test_the_reader_answers_as_fastapi_does(body: bytes, content_type: str | None) -> None:
    ours, theirs = await twin_answers(twin_app(), body, content_type)
    assert ours == theirs


def test_the_fast_check_takes_only_what_the_model_takes() -> None:
    good: dict[str, Any] = {"lines": [LINE, {**LINE, "scope": "Job"}], "pilot_stamp": None}
    assert fast_lines(good) == [
        (x.timestamp, x.severity, x.message, x.scope) for x in LogBatch.model_validate(good).lines
    ]
    for bad in ({"lines": [{**LINE, "severity": True}]}, {"lines": (LINE,)}, [LINE]):
        assert fast_lines(bad) is None  # left to pydantic, which decides and explains


def test_the_documented_body_is_the_models_and_every_reference_resolves() -> None:
    spec = create_app(ServerSettings()).openapi()
    op = spec["paths"]["/api/pilots/internal/message"]["post"]
    schema = op["requestBody"]["content"]["application/json"]["schema"]
    assert schema["title"] == "LogBatch"
    assert op["requestBody"]["required"] is True
    assert str(int(HTTPStatus.UNPROCESSABLE_ENTITY)) in op["responses"]
    assert unresolved_refs(spec) == []
