"""The bulk registration route's own body reader answers exactly as FastAPI does for
`body: BulkRegistration`, and its answer is the one FastAPI would write.

`server.routers.bulk_body` parses the body itself (orjson and a hand check) and falls back to
FastAPI's steps for anything unusual. Here two routes on one app, one with FastAPI's body
parameter and one with the reader, get the same bodies: the same status and the same answer,
for good and bad ones alike."""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Annotated, Any

import pytest
from fastapi import Depends, FastAPI

from server.app import create_app
from server.http.handlers import install
from server.logic.pilots import BulkRegistered, new_pilots
from server.models import BulkRegistration, BulkRegistrationResult, MintedSecret, RegisteredPilot
from server.routers.bulk_body import Bulk, answer, fast_bulk, read_bulk
from server.settings import ServerSettings
from tests.server.body_twins import twin_answers, unresolved_refs


def _seen(vo: str, pilots: Any, mint: bool, constraints: Any) -> list[str]:
    # ascii(): a lone surrogate, valid in JSON, could not be encoded back
    return [ascii((vo, mint, constraints.model_dump())), *(ascii(p) for p in pilots)]


def twin_app() -> FastAPI:
    app = FastAPI()
    install(app)

    @app.post("/fastapi")
    async def by_fastapi(body: BulkRegistration) -> list[str]:
        return _seen(body.vo, new_pilots(body), body.mint_secrets, body.secret_constraints)

    @app.post("/ours")
    async def by_reader(body: Annotated[Bulk, Depends(read_bulk)]) -> list[str]:
        return _seen(body.vo, body.pilots, body.mint_secrets, body.constraints)

    return app


JSON = "application/json"
P = {"pilot_stamp": "abc"}


def body(**fields: Any) -> bytes:
    return json.dumps({"vo": "lhcb", "pilots": [P], **fields}).encode()


def pilot(**fields: Any) -> bytes:
    return body(pilots=[{**P, **fields}])


FULL = {
    "pilot_stamp": "A-b_9",
    "grid_type": "HTCondorCE",
    "grid_site": "LCG.X.org",
    "destination_site": "ce.x.org",
    "queue": "q",
    "pilot_reference": "htcondor://ce/1.0",
    "pilot_status": "Running",
}
CASES: list[tuple[str, bytes, str | None]] = [
    ("one pilot", body(), JSON),
    ("every field", body(pilots=[FULL, P], mint_secrets=True), JSON),
    (
        "as the director sends",
        body(
            pilots=[FULL] * 3,
            mint_secrets=True,
            secret_constraints={"expiration_minutes": 60, "pilot_secret_use_count_max": 1},
        ),
        JSON,
    ),
    ("constraints", body(secret_constraints={"sites": ["a"], "vos": ["dteam"]}), JSON),
    ("constraints bad", body(secret_constraints={"expiration_minutes": 0}), JSON),
    ("constraints extra", body(secret_constraints={"x": 1}), JSON),
    ("constraints a list", body(secret_constraints=[]), JSON),
    ("constraints null", body(secret_constraints=None), JSON),
    ("mint 1", body(mint_secrets=1), JSON),
    ("mint string", body(mint_secrets="true"), JSON),
    ("mint null", body(mint_secrets=None), JSON),
    ("no pilots", body(pilots=[]), JSON),
    ("pilots missing", b'{"vo": "lhcb"}', JSON),
    ("pilots an object", body(pilots={}), JSON),
    ("too many pilots", body(pilots=[P] * 10_001), JSON),
    ("the most pilots", body(pilots=[{"pilot_stamp": f"s{i}"} for i in range(10_000)]), JSON),
    ("vo missing", b'{"pilots": [{"pilot_stamp": "abc"}]}', JSON),
    ("vo empty", body(vo=""), JSON),
    ("vo too long", body(vo="v" * 129), JSON),
    ("vo at its limit", body(vo="é" * 128), JSON),
    ("vo an int", body(vo=5), JSON),
    ("extra key", body(x=1), JSON),
    ("pilot extra key", pilot(x=1), JSON),
    ("pilot a string", body(pilots=["abc"]), JSON),
    ("stamp missing", body(pilots=[{"queue": "q"}]), JSON),
    ("stamp empty", pilot(pilot_stamp=""), JSON),
    ("stamp too long", pilot(pilot_stamp="a" * 33), JSON),
    ("stamp at its limit", pilot(pilot_stamp="a" * 32), JSON),
    ("stamp with a dot", pilot(pilot_stamp="a.b"), JSON),
    ("stamp with a newline", pilot(pilot_stamp="ab\n"), JSON),
    ("stamp non-ASCII", pilot(pilot_stamp="é"), JSON),
    ("stamp an int", pilot(pilot_stamp=5), JSON),
    ("grid type too long", pilot(grid_type="g" * 33), JSON),
    ("grid site at its limit", pilot(grid_site="é" * 128), JSON),
    ("grid site too long", pilot(grid_site="é" * 129), JSON),
    ("destination too long", pilot(destination_site="d" * 129), JSON),
    ("queue too long", pilot(queue="q" * 129), JSON),
    ("queue null", pilot(queue=None), JSON),
    ("reference null", pilot(pilot_reference=None), JSON),
    ("reference too long", pilot(pilot_reference="r" * 256), JSON),
    ("reference an int", pilot(pilot_reference=5), JSON),
    ("status unknown", pilot(pilot_status="Lost"), JSON),
    ("status lower case", pilot(pilot_status="running"), JSON),
    ("status null", pilot(pilot_status=None), JSON),
    ("duplicate keys", b'{"vo": "x", "vo": "lhcb", "pilots": [{"pilot_stamp": "a"}]}', JSON),
    ("second pilot bad", body(pilots=[P, {"pilot_stamp": 1}]), JSON),
    ("charset", body(), "application/json; charset=utf-8"),
    ("+json", body(), "application/vnd.api+json"),
    ("upper case", body(), "Application/JSON"),
    ("text/plain", body(), "text/plain"),
    ("no content type", body(), None),
    ("no body", b"", JSON),
    ("invalid JSON", b'{"vo": [', JSON),
    ("not UTF-8", b'{"vo": "\xff"}', JSON),
    ("BOM", b"\xef\xbb\xbf" + body(), JSON),
    ("NaN", b'{"vo": "lhcb", "pilots": [{"pilot_stamp": "a"}], "x": NaN}', JSON),
    ("lone surrogate", b'{"vo": "a\\ud800", "pilots": [{"pilot_stamp": "a"}]}', JSON),
    ("big integer", b'{"vo": "lhcb", "pilots": [], "z": 123456789012345678901234567890}', JSON),
    ("a list", b"[]", JSON),
    ("a string", b'"x"', JSON),
]


@pytest.mark.parametrize(("raw", "content_type"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_the_reader_answers_as_fastapi_does(raw: bytes, content_type: str | None) -> None:
    ours, theirs = await twin_answers(twin_app(), raw, content_type)
    assert ours == theirs


def test_the_fast_check_takes_only_what_the_model_takes() -> None:
    good: dict[str, Any] = {"vo": "lhcb", "pilots": [FULL, P], "mint_secrets": True}
    fast = fast_bulk(good)
    assert fast is not None
    assert fast.pilots == new_pilots(BulkRegistration.model_validate(good))
    for bad in (
        {**good, "mint_secrets": 1},  # pydantic takes it (as True): left to it
        {**good, "pilots": tuple(good["pilots"])},
        {**good, "pilots": [{**P, "queue": None}]},
        [good],
    ):
        assert fast_bulk(bad) is None  # left to pydantic, which decides and explains


def test_the_answer_is_the_models() -> None:
    result = BulkRegistered(["a", "b"], [7, 9], ["s1", "s2"], 1_800_000_000)
    model = BulkRegistrationResult(
        pilots=[
            RegisteredPilot(pilot_stamp="a", pilot_id=7),
            RegisteredPilot(pilot_stamp="b", pilot_id=9),
        ],
        secrets=[
            MintedSecret(pilot_secret="s1", pilot_secret_expires_in=1_800_000_000, pilot_stamp="a"),
            MintedSecret(pilot_secret="s2", pilot_secret_expires_in=1_800_000_000, pilot_stamp="b"),
        ],
    )
    assert answer(result) == model.model_dump_json().encode()
    unminted = BulkRegistered(["a"], [7], [], None)
    expected = BulkRegistrationResult(pilots=[RegisteredPilot(pilot_stamp="a", pilot_id=7)])
    assert answer(unminted) == expected.model_dump_json().encode()


def resolved(node: Any, components: dict[str, Any]) -> Any:
    """`node` with every component reference replaced by the component (keys beside kept)."""
    if isinstance(node, dict):
        rest = {k: resolved(v, components) for k, v in node.items() if k != "$ref"}
        ref = node.get("$ref")
        if isinstance(ref, str):
            name = ref.removeprefix("#/components/schemas/")
            return {**resolved(components[name], components), **rest}
        return rest
    if isinstance(node, list):
        return [resolved(v, components) for v in node]
    return node


def test_the_documented_body_is_the_models_and_every_reference_resolves() -> None:
    spec = create_app(ServerSettings()).openapi()
    op = spec["paths"]["/api/pilots/bulk"]["post"]
    schema = op["requestBody"]["content"]["application/json"]["schema"]
    assert schema["title"] == "BulkRegistration"
    assert op["requestBody"]["required"] is True
    assert str(int(HTTPStatus.UNPROCESSABLE_ENTITY)) in op["responses"]
    answer_schema = op["responses"][str(int(HTTPStatus.CREATED))]["content"]["application/json"]
    assert answer_schema["schema"] == {"$ref": "#/components/schemas/BulkRegistrationResult"}
    # the same schema as FastAPI documents for `body: BulkRegistration`, references resolved
    twin = twin_app().openapi()
    theirs = twin["paths"]["/fastapi"]["post"]["requestBody"]["content"]["application/json"]
    components = twin["components"]["schemas"]
    assert resolved(schema, components) == resolved(theirs["schema"], components)
    assert op["responses"]["422"] == twin["paths"]["/fastapi"]["post"]["responses"]["422"]
    assert unresolved_refs(spec) == []
