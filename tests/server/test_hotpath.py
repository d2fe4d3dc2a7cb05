"""The fast lane (`server.http.hotpath`) answers exactly as the FastAPI routes it stands for.

Each request is sent twice, on the same database: to the app (fast lane on) and to the same
app built without it (every route through FastAPI), each with pilots of its own. Status,
headers and body must match, with the stamps (and secrets, tokens) put back to placeholders.
The requests cover the happy path, every refusal the fast lane answers itself (401, 403, 404,
409, 400) and those it hands to FastAPI (422 for bad JSON, bodies, queries; other content
types), so a change to one route that the other misses fails here.
"""

from __future__ import annotations

import json
import uuid
from http import HTTPStatus
from typing import Any

import httpx
import pytest

from server.app import create_app
from server.http import hotpath
from server.identity import ADMIN, NORMAL_USER, TRUSTED_HOST, mint_pilot_access_token
from tests.conftest import Roles, ServerUnderTest

JSON = "application/json"
EXCHANGE = "/api/auth/secret-exchange"


class Side:
    """One app (fast lane or reference) with pilots and secrets of its own."""

    def __init__(self, app: Any, sut: ServerUnderTest, tag: str) -> None:
        self.app = app
        self.sut = sut
        self.stamp = f"{tag}{uuid.uuid4().hex[:12]}"
        self.stamp2 = f"{self.stamp}b"
        self.secret = ""
        self.secret2 = ""

    def client(self, token: str | None) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app),
            base_url="http://testserver",
            headers=headers,
        )

    def fill(self, text: str) -> str:
        return (
            text.replace("{S2}", self.stamp2)
            .replace("{S}", self.stamp)
            .replace("{SECRET2}", self.secret2)
            .replace("{SECRET}", self.secret)
        )

    def blank(self, text: str) -> str:
        for value, name in (
            (self.secret2, "{SECRET2}"),
            (self.secret, "{SECRET}"),
            (self.stamp2, "{S2}"),
            (self.stamp, "{S}"),
        ):
            if value:
                text = text.replace(value, name)
        return text


@pytest.fixture
async def sides(api: Roles) -> tuple[Side, Side]:
    sut = api.sut
    reference = create_app(sut.settings, fast_lane=False)
    reference.state.ctx = sut.app.state.ctx  # the same database, keys and settings
    fast, ref = Side(sut.app, sut, "f"), Side(reference, sut, "r")
    for side in (fast, ref):
        pilots = [{"pilot_stamp": f"{side.stamp}x"}, {"pilot_stamp": f"{side.stamp}y"}]
        async with side.client(sut.token("d", "lhcb", [TRUSTED_HOST])) as client:
            r = await client.post(
                "/api/pilots/bulk",
                json={
                    "vo": "lhcb",
                    "pilots": pilots,
                    "mint_secrets": True,
                    "secret_constraints": {"pilot_secret_use_count_max": 1},
                },
            )
            assert r.status_code == HTTPStatus.CREATED, r.text
            minted = r.json()["secrets"]
            side.secret, side.secret2 = minted[0]["pilot_secret"], minted[1]["pilot_secret"]
        side.stamp2 = f"{side.stamp}y"
        side.stamp = f"{side.stamp}x"
    return fast, ref


def tokens(sut: ServerUnderTest, side: Side) -> dict[str, str | None]:
    return {
        "admin": sut.token("admin", "lhcb", [ADMIN]),
        "director": sut.token("director", "lhcb", [TRUSTED_HOST]),
        "user": sut.token("alice", "lhcb", [NORMAL_USER]),
        "other_director": sut.token("director2", "dteam", [TRUSTED_HOST]),
        "pilot": mint_pilot_access_token(
            sut.keys, vo="lhcb", stamp=side.stamp, lifetime=600, family_id=None
        ),
        "anonymous": None,
    }


REGISTER = '{"pilot_stamp":"{S}n","vo":"lhcb","grid_site":"LCG.A.org"}'
# each side's own pilots, and no column that differs between the sides (ids, times)
SEARCH = (
    '{"parameters":["PilotStamp","Status","GridSite","VO"],'
    '"search":[{"parameter":"Status","operator":"eq","value":"Submitted"},'
    '{"parameter":"PilotStamp","operator":"in","value":["{S}","{S2}","{S}n"]}],'
    '"sort":[{"parameter":"PilotStamp","direction":"desc"}]}'
)
# (role, method, path, query, body, content type)
CASES: list[tuple[str, str, str, str, str | None, str | None]] = [
    ("director", "POST", "/api/pilots/", "", REGISTER, JSON),
    ("director", "POST", "/api/pilots/", "", '{"pilot_stamp":"{S}","vo":"lhcb"}', JSON),
    ("director", "POST", "/api/pilots/", "", '{"pilot_stamp":"{S}m","vo":"nope"}', JSON),
    ("director", "POST", "/api/pilots/", "", '{"pilot_stamp":"{S}m","vo":"dteam"}', JSON),
    ("director", "POST", "/api/pilots/", "", '{"pilot_stamp":"{S}m"}', JSON),
    ("director", "POST", "/api/pilots/", "", '{"pilot_stamp":"{S}m","vo":"lhcb","x":1}', JSON),
    ("director", "POST", "/api/pilots/", "", '{"pilot_stamp":"{S}m",', JSON),
    ("director", "POST", "/api/pilots/", "", "", JSON),
    ("director", "POST", "/api/pilots/", "", "null", JSON),
    ("director", "POST", "/api/pilots/", "", REGISTER.replace("{S}n", "{S}t"), "text/plain"),
    ("director", "POST", "/api/pilots/", "", REGISTER.replace("{S}n", "{S}u"), None),
    ("user", "POST", "/api/pilots/", "", REGISTER.replace("{S}n", "{S}v"), JSON),
    ("pilot", "POST", "/api/pilots/", "", REGISTER.replace("{S}n", "{S}w"), JSON),
    ("director", "PATCH", "/api/pilots/metadata", "", '{"{S}":{"Status":"Running"}}', JSON),
    ("director", "PATCH", "/api/pilots/metadata", "", '{"{S}zz":{"Status":"Running"}}', JSON),
    ("director", "PATCH", "/api/pilots/metadata", "", '{"{S}":{"Status":"Bogus"}}', JSON),
    ("director", "PATCH", "/api/pilots/metadata", "", '{"{S}":{"Nope":1}}', JSON),
    ("director", "PATCH", "/api/pilots/metadata", "", "{}", JSON),
    ("director", "PATCH", "/api/pilots/metadata", "", "[1]", JSON),
    ("other_director", "PATCH", "/api/pilots/metadata", "", '{"{S}":{"Status":"Done"}}', JSON),
    ("pilot", "PATCH", "/api/pilots/metadata", "", '{"{S}":{"StatusReason":"mine"}}', JSON),
    ("pilot", "PATCH", "/api/pilots/metadata", "", '{"{S2}":{"StatusReason":"not mine"}}', JSON),
    ("admin", "POST", "/api/pilots/search", "page=1&per_page=1", SEARCH, JSON),
    ("admin", "POST", "/api/pilots/search", "page=2&per_page=1", SEARCH, JSON),
    ("admin", "POST", "/api/pilots/search", "page=900&per_page=100", SEARCH, JSON),
    ("admin", "POST", "/api/pilots/search", "per_page=1", SEARCH, JSON),
    ("admin", "POST", "/api/pilots/search", "page=2", SEARCH, JSON),
    ("admin", "POST", "/api/pilots/search", "page=1000000000000", SEARCH, JSON),
    ("admin", "POST", "/api/pilots/search", "page=0", SEARCH, JSON),
    ("admin", "POST", "/api/pilots/search", "per_page=100000", SEARCH, JSON),
    ("admin", "POST", "/api/pilots/search", "page=abc", SEARCH, JSON),
    ("admin", "POST", "/api/pilots/search", "page=1&page=2", SEARCH, JSON),
    ("admin", "POST", "/api/pilots/search", "other=1", SEARCH, JSON),
    ("admin", "POST", "/api/pilots/search", "", '{"search":[{"parameter":"Nope"}]}', JSON),
    ("admin", "POST", "/api/pilots/search", "", '{"parameters":["Nope"]}', JSON),
    ("user", "POST", "/api/pilots/search", "", SEARCH, JSON),
    ("other_director", "POST", "/api/pilots/search", "", SEARCH, JSON),
    ("pilot", "POST", "/api/pilots/search", "", "{}", JSON),
    ("admin", "POST", "/api/pilots/summary", "", '{"grouping":["GridSite","Status"]}', JSON),
    ("user", "POST", "/api/pilots/summary", "", '{"grouping":["Status"]}', JSON),
    ("admin", "POST", "/api/pilots/summary", "", '{"grouping":["Nope"]}', JSON),
    ("admin", "POST", "/api/pilots/summary", "", "{}", JSON),
    ("anonymous", "POST", "/api/pilots/summary", "", '{"grouping":[]}', JSON),
    ("anonymous", "POST", EXCHANGE, "", '{"pilot_stamp":"{S}","pilot_secret":"{SECRET}"}', JSON),
    ("anonymous", "POST", EXCHANGE, "", '{"pilot_stamp":"{S}","pilot_secret":"{SECRET}"}', JSON),
    ("anonymous", "POST", EXCHANGE, "", '{"pilot_stamp":"{S}","pilot_secret":"{SECRET2}"}', JSON),
    ("anonymous", "POST", EXCHANGE, "", '{"pilot_stamp":"{S}","pilot_secret":""}', JSON),
    ("anonymous", "POST", EXCHANGE, "", '{"pilot_stamp":"{S2}"}', JSON),
    ("anonymous", "POST", EXCHANGE, "", '{"pilot_stamp":"\\ud800","pilot_secret":"x"}', JSON),
    ("user", "POST", EXCHANGE, "", '{"pilot_stamp":"{S2}","pilot_secret":"{SECRET2}"}', JSON),
]


def _shape(side: Side, response: httpx.Response) -> tuple[int, list[tuple[str, str]], Any]:
    headers = [(k, v) for k, v in response.headers.multi_items()]
    text = side.blank(response.text)
    if response.status_code == HTTPStatus.OK and response.request.url.path == EXCHANGE:
        # the tokens differ (their jti, family, times): compare what is not random
        body = json.loads(text)
        assert body["access_token"]
        assert body["refresh_token"]
        body["access_token"] = body["refresh_token"] = "<token>"
        headers = [(k, v) for k, v in headers if k != "content-length"]
        return response.status_code, headers, body
    return response.status_code, headers, text


async def test_the_fast_lane_answers_as_fastapi_does(
    sides: tuple[Side, Side], monkeypatch: pytest.MonkeyPatch
) -> None:
    fast, ref = sides
    answered: list[bool] = []
    original = hotpath.HotRoute.answer

    async def spy(self: hotpath.HotRoute, *args: Any) -> Any:
        response = await original(self, *args)
        answered.append(response is not None)
        return response

    monkeypatch.setattr(hotpath.HotRoute, "answer", spy)
    for role, method, path, query, body, content_type in CASES:
        shapes = []
        for side in (fast, ref):
            headers = {"Content-Type": content_type} if content_type else {}
            async with side.client(tokens(side.sut, side)[role]) as client:
                r = await client.request(
                    method,
                    path + (f"?{query}" if query else ""),
                    content=None if body is None else side.fill(body).encode(),
                    headers=headers,
                )
            assert r.status_code < HTTPStatus.INTERNAL_SERVER_ERROR, r.text
            shapes.append(_shape(side, r))
        assert shapes[0] == shapes[1], (role, method, path, query, body)
    # the reference never reaches the fast lane; the fast app took most requests itself
    assert answered.count(True) >= 20, answered
    assert answered.count(False) >= 10, answered


async def test_an_unexpected_error_is_a_500_counted_under_its_route(
    sides: tuple[Side, Side], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exception the handlers do not know escapes the fast lane as it escapes a route:
    Starlette's ServerErrorMiddleware answers 500, and the access log's metrics count it
    under the route's path."""
    from server.http.metrics import REQUESTS
    from server.logic import pilots as logic

    async def broken(*_: Any) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(logic, "register_pilot", broken)
    for side in sides:
        counter = REQUESTS.labels("POST", "/api/pilots/", "500")
        before = counter._value.get()
        transport = httpx.ASGITransport(app=side.app, raise_app_exceptions=False)
        token = side.sut.token("d", "lhcb", [TRUSTED_HOST])
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://testserver",
            headers={"Authorization": f"Bearer {token}"},
        ) as client:
            r = await client.post(
                "/api/pilots/", json={"pilot_stamp": side.stamp + "e", "vo": "lhcb"}
            )
        assert r.status_code == HTTPStatus.INTERNAL_SERVER_ERROR
        assert r.text == "Internal Server Error"
        assert counter._value.get() == before + 1
