"""The OpenAPI document stays true to the router, both ways."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from conftest import ADMIN_TOKEN

from bridge.admin.openapi import documented_operations, is_documented_route, openapi_document, routed_operations
from bridge.bootstrap import build_app, open_runtime
from bridge.settings import Settings


@pytest.fixture
async def client(sqlite_url: str) -> AsyncIterator[TestClient[Any, web.Application]]:
    settings = Settings(database_url=sqlite_url, admin_tokens=[ADMIN_TOKEN])
    async with open_runtime(settings) as runtime, TestClient(TestServer(build_app(runtime))) as client:
        yield client


async def test_every_route_is_documented_and_every_documented_route_exists(client: TestClient[Any, Any]) -> None:
    response = await client.get("/openapi.json")
    assert response.status == 200
    document = await response.json()
    routed = routed_operations(client.app)
    documented = documented_operations(document)
    assert routed - documented == set(), "routes missing from /openapi.json"
    assert documented - routed == set(), "documented but not served"
    assert ("POST", "/webhooks/orders") in routed and ("GET", "/admin/api/jobs") in routed
    # Only the admin web pages are left out, and they are served.
    left_out = {r.resource.canonical for r in client.app.router.routes() if r.resource is not None} - {
        p for _, p in routed
    }
    assert left_out and all(p.startswith("/admin") and not is_documented_route(p) for p in left_out)


def test_admin_operations_need_the_bearer_token_and_nothing_else_does() -> None:
    document = openapi_document()
    assert document["openapi"] == "3.1.0"
    assert document["components"]["securitySchemes"]["adminToken"] == {"type": "http", "scheme": "bearer"}
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            secured = operation.get("security") == [{"adminToken": []}]
            assert secured == path.startswith("/admin/api/"), (method, path)
            if secured:
                assert {"401", "429", "503"} <= set(operation["responses"])


def test_webhook_is_described_with_its_answers_and_signature_headers() -> None:
    webhook = openapi_document()["paths"]["/webhooks/orders"]["post"]
    assert set(webhook["responses"]) == {"200", "202", "400", "401", "413", "422", "503"}
    assert {p["name"] for p in webhook["parameters"]} == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    body = webhook["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/OrderEvent"}


def test_every_reference_resolves() -> None:
    document = openapi_document()
    text = json.dumps(document)
    schemas = document["components"]["schemas"]
    refs = {part.split('"')[0] for part in text.split('"$ref": "#/components/schemas/')[1:]}
    assert refs and refs <= set(schemas)
    assert "$defs" not in text
    for path, item in document["paths"].items():
        placeholders = {seg[1:-1] for seg in path.split("/") if seg.startswith("{")}
        declared = {p["name"] for p in item.get("parameters", []) if p["in"] == "path"}
        assert placeholders == declared, path
