"""Hostile input through the real gateway: always a 4xx envelope, never a 5xx, and nothing stored."""

from __future__ import annotations

import re
import socket
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from pymongo.asynchronous.database import AsyncDatabase

from deploy.processes import Stack
from shared.mongo import Document
from simulator.cases import case_body
from tests.support.api import headers, new_client

OPERATOR = {"$gt": ""}
STRING_FIELDS = [
    ("channel",),
    ("clientReferenceId",),
    ("goal", "objective"),
    ("counterparty", "address"),
    ("counterparty", "name"),
    ("counterparty", "company"),
    ("counterparty", "timezone"),
    ("senderPersona", "name"),
    ("senderPersona", "role"),
    ("senderPersona", "company"),
    ("senderPersona", "tone"),
    ("clientWebhookUrl",),
]


@pytest.fixture
async def hostile(stack: Stack) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, Any]]]:
    client = new_client(stack)
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=30, headers=headers(client["apiKey"])) as http:
        yield http, client


def assert_refused(response: httpx.Response) -> None:
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    body = response.json()
    assert body["ok"] is False
    assert body["error"]["code"] in {"INVALID_REQUEST", "NOT_FOUND", "CASE_NOT_FOUND", "PAYLOAD_TOO_LARGE"}
    assert "Traceback" not in response.text


def with_value(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    body = case_body()
    target = body
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return body


async def assert_nothing_stored(stack_db: AsyncDatabase[Document], client: dict[str, Any]) -> None:
    assert await stack_db.cases.count_documents({"clientId": client["clientId"]}) == 0


@pytest.mark.parametrize("path", STRING_FIELDS, ids=".".join)
async def test_operator_shaped_values_in_string_fields_are_400(
    hostile: tuple[httpx.AsyncClient, dict[str, Any]], stack_db: AsyncDatabase[Document], path: tuple[str, ...]
) -> None:
    http, client = hostile
    response = await http.post("/cases", json=with_value(path, OPERATOR))
    assert_refused(response)
    assert response.json()["error"]["message"].startswith(".".join(path))
    await assert_nothing_stored(stack_db, client)


async def test_operator_shaped_and_traversing_ids_are_not_found(
    hostile: tuple[httpx.AsyncClient, dict[str, Any]],
) -> None:
    http, _ = hostile
    ids = [
        quote('{"$gt": ""}', safe=""),
        quote('{"$ne": null}', safe=""),
        "..%2F..%2Fetc%2Fpasswd",
        "%2e%2e",
        "a%2Fb",
        "%00",
        quote("x" * 129),
    ]
    for case_id in ids:
        for method, suffix in (("GET", ""), ("POST", "/cancel"), ("GET", "/attachments/%2e%2e%2f")):
            response = await http.request(method, f"/cases/{case_id}{suffix}")
            assert_refused(response)
    listed = await http.get("/cases", params={"clientReferenceId": '{"$gt": ""}'})
    assert listed.status_code == 200
    assert listed.json()["data"]["items"] == []


@pytest.mark.parametrize(
    "overrides",
    [
        {"maxAttempts": -1},
        {"maxAttempts": 10**30},
        {"followUpDelayHours": -5},
        {"followUpDelayHours": 1e308},
        {"followUpDelayHours": 10**40},
        {"metadata": {"n": 10**30, "deep": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}},
        {"goal": {"objective": "x", "knowledge": {"a": {"b": {"c": {"d": {"e": {}}}}}} | {"z": "ok"}}, "channel": 5},
        {"constraints": "not a list"},
        {"counterparty": {"address": "a@b.example", "name": "n", "customData": {"k": {"$gt": ""}}}},
    ],
)
async def test_bad_numbers_and_shapes_are_400(
    hostile: tuple[httpx.AsyncClient, dict[str, Any]], stack_db: AsyncDatabase[Document], overrides: dict[str, Any]
) -> None:
    http, client = hostile
    assert_refused(await http.post("/cases", json=case_body(**overrides)))
    await assert_nothing_stored(stack_db, client)


async def test_deep_nesting_invalid_utf8_and_wrong_content_types_are_400(
    hostile: tuple[httpx.AsyncClient, dict[str, Any]], stack_db: AsyncDatabase[Document]
) -> None:
    http, client = hostile
    deep = ('{"x":' * 3000) + "1" + ("}" * 3000)
    nested = case_body()
    body = httpx.Request("POST", "/", json=nested).content.decode()
    deep_body = body.replace('"metadata": {"vendorId": "vendor_2048"}', f'"metadata": {deep}')
    deep_body = deep_body.replace('"metadata":{"vendorId":"vendor_2048"}', f'"metadata":{deep}')
    assert deep in deep_body
    json_type = {"content-type": "application/json"}
    assert_refused(await http.post("/cases", content=deep_body.encode(), headers=json_type))
    assert_refused(await http.post("/cases", content=b'{"channel": "EMAIL\xff\xfe"}', headers=json_type))
    assert_refused(await http.post("/cases", content=b"\xc3\x28" * 10, headers=json_type))
    valid = httpx.Request("POST", "/", json=case_body()).content
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", ""):
        assert_refused(await http.post("/cases", content=valid, headers={"content-type": content_type}))
    assert_refused(await http.post("/cases", data={"channel": "EMAIL"}))
    await assert_nothing_stored(stack_db, client)


async def test_bad_query_numbers_are_400(hostile: tuple[httpx.AsyncClient, dict[str, Any]]) -> None:
    http, _ = hostile
    for params in ({"updatedAfter": "-5"}, {"updatedAfter": str(10**20)}, {"limit": str(10**20)}, {"limit": "-1"}):
        assert_refused(await http.get("/cases", params=params))


def raw_request(stack: Stack, request: bytes) -> tuple[int, bytes, bytes]:
    """(status, head, body) of one raw HTTP exchange."""
    port = int(stack.gateway_url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    response = b"".join(chunks)
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), head, body


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /cases HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n",
        # A head that never ends: refused once it outgrows the limit, not buffered until the header deadline.
        b"GET /cases HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40_000,
        b"GET /cases HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(3000)) + b"\r\n",
        b"GARBAGE\r\n\r\n",
        b"GET /cases HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n",
    ],
    ids=["huge-header", "unending-header", "many-headers", "garbage-request-line", "bad-content-length"],
)
def test_malformed_http_gets_an_envelope(stack: Stack, request_bytes: bytes) -> None:
    status, head, body = raw_request(stack, request_bytes)
    assert status == 400
    assert body.startswith(b'{"ok":false,"error":{"code":"INVALID_REQUEST"')
    assert re.search(rb"(?im)^x-request-id: [0-9a-f]{32}\r?$", head), head
