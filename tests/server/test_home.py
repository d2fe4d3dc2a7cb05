"""`/` is a small public page linking the pilot monitor and the API documentation."""

from __future__ import annotations

from http import HTTPStatus

from tests.conftest import Roles
from tests.server.html_tree import parse


async def test_the_root_links_the_monitor_and_the_api_docs(api: Roles) -> None:
    r = await api.anonymous.get("/")
    assert r.status_code == HTTPStatus.OK
    assert r.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in r.headers["content-security-policy"]
    links = {a.attrs["href"] for a in parse(r.text).find_all("a")}
    assert {"/monitor", "/docs", "/openapi.json", "/api/health"} <= links
    for link in sorted(links):
        answer = await api.anonymous.get(link)
        assert answer.status_code < HTTPStatus.BAD_REQUEST, (link, answer.status_code)
