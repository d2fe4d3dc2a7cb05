"""Helpers for the tests of the routes that read their own body (test_bulk_body.py,
test_log_body.py): the two answers of a twin app (FastAPI's body parameter at `/fastapi`, the
route's reader at `/ours`) to one body, and the OpenAPI references that resolve to nothing."""

from __future__ import annotations

from typing import Any

import httpx
from fastapi import FastAPI

Answer = tuple[int, Any]  # status, JSON


async def twin_answers(app: FastAPI, raw: bytes, content_type: str | None) -> tuple[Answer, Answer]:
    """`raw` posted to `/ours` then `/fastapi` of `app`: each (status, JSON answer)."""
    headers = {"content-type": content_type} if content_type else {}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        theirs = await client.post("/fastapi", content=raw, headers=headers)
        ours = await client.post("/ours", content=raw, headers=headers)
    return (ours.status_code, ours.json()), (theirs.status_code, theirs.json())


def unresolved_refs(spec: dict[str, Any]) -> list[str]:
    """Every `$ref` in the OpenAPI document `spec` that names no schema of its components."""

    def refs(node: Any) -> list[str]:
        if isinstance(node, dict):
            found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
            return found + [r for v in node.values() for r in refs(v)]
        if isinstance(node, list):
            return [r for v in node for r in refs(v)]
        return []

    names = spec["components"]["schemas"]
    return [ref for ref in refs(spec) if ref.removeprefix("#/components/schemas/") not in names]
