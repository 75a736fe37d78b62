"""Every gateway response is an envelope with X-Request-Id: routed, unrouted, rejected, failed or timed out.

The gateway runs in-process under uvicorn on a real port, connected to the real nats-server and MongoDB;
a few extra routes exercise failure paths that production routes reach only through faults.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import msgspec
import pytest
import uvicorn
from litestar import get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody, RawBody

from deploy.processes import NatsServer, free_port
from services.gateway.app import create_app
from services.gateway.context import GatewayContext
from services.gateway.envelope import DataEnvelope, ok
from shared.contracts.rpc import Empty
from shared.messaging.broker import create_broker
from shared.messaging.rpc import request
from shared.settings import GatewaySettings, load_settings
from shared.subjects import Service


class Greeting(msgspec.Struct, frozen=True):
    name: str
    times: int = 1


@get("/test/boom", sync_to_thread=False)
def boom() -> None:
    raise RuntimeError("connection string mongodb://admin:hunter2@db")


@post("/test/greet")
async def greet(data: JSONBody[Greeting]) -> DataEnvelope[Greeting]:
    return ok(data)


@post("/test/raw")
async def raw(body: RawBody) -> DataEnvelope[int]:
    return ok(len(body))


@get("/test/nobody-answers")
async def nobody_answers(gateway: NamedDependency[GatewayContext]) -> None:
    await request(gateway.broker, "test.rpc.nobody", Empty(), Empty, timeout=0.5)


@pytest.fixture
async def gateway_url(nats_server: NatsServer, mongo_url: str) -> AsyncIterator[str]:
    port = free_port()
    settings = load_settings(
        GatewaySettings,
        {
            "NATS_URL": nats_server.url,
            "MONGO_URL": mongo_url,
            "MAX_BODY_BYTES": "2048",
            "GATEWAY_PORT": str(port),
        },
    )
    app = create_app(
        settings,
        create_broker(settings, Service.GATEWAY),
        extra_route_handlers=[boom, greet, raw, nobody_answers],
    )
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on"))
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 (uvicorn exposes a flag, not an event)
        await asyncio.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    await task


@pytest.fixture
async def client(gateway_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway_url, timeout=10) as http:
        yield http


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["x-request-id"]
    body = response.json()
    assert body["ok"] is False
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str)
    assert body["error"]["message"]
    return dict(body["error"])


async def test_unknown_route_is_404_not_found(client: httpx.AsyncClient) -> None:
    assert_error(await client.get("/no/such/route"), 404, "NOT_FOUND")


async def test_wrong_method_is_405_method_not_allowed(client: httpx.AsyncClient) -> None:
    response = await client.delete("/healthz")
    assert_error(response, 405, "METHOD_NOT_ALLOWED")
    assert "GET" in response.headers["allow"]


async def test_body_over_the_limit_is_413_with_or_without_content_length(client: httpx.AsyncClient) -> None:
    assert_error(await client.post("/test/raw", content=b"x" * 4096), 413, "PAYLOAD_TOO_LARGE")

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(8):
            yield b"x" * 1024

    assert_error(await client.post("/test/raw", content=chunks()), 413, "PAYLOAD_TOO_LARGE")
    small = await client.post("/test/raw", content=b"x" * 100)
    assert small.json() == {"ok": True, "data": 100}


async def test_unexpected_exception_is_500_without_internals(client: httpx.AsyncClient) -> None:
    response = await client.get("/test/boom")
    error = assert_error(response, 500, "INTERNAL_ERROR")
    assert "hunter2" not in response.text
    assert "Traceback" not in response.text
    assert error["message"] == "An internal error occurred."


async def test_service_not_answering_is_503_with_retry_after(client: httpx.AsyncClient) -> None:
    response = await client.get("/test/nobody-answers")
    assert_error(response, 503, "SERVICE_UNAVAILABLE")
    assert int(response.headers["retry-after"]) >= 1


async def test_malformed_json_and_wrong_types_are_400_naming_the_field(client: httpx.AsyncClient) -> None:
    malformed = await client.post("/test/greet", content=b"{not json", headers={"content-type": "application/json"})
    assert_error(malformed, 400, "INVALID_REQUEST")
    wrong_type = await client.post("/test/greet", json={"name": "ada", "times": "twice"})
    error = assert_error(wrong_type, 400, "INVALID_REQUEST")
    assert str(error["message"]).startswith("times:")
    fine = await client.post("/test/greet", json={"name": "ada"})
    assert fine.status_code == 201
    assert fine.json() == {"ok": True, "data": {"name": "ada", "times": 1}}


async def test_request_id_is_echoed_when_sane_and_generated_otherwise(client: httpx.AsyncClient) -> None:
    echoed = await client.get("/healthz", headers={"x-request-id": "client-req-42"})
    assert echoed.headers["x-request-id"] == "client-req-42"
    generated = await client.get("/healthz")
    assert len(generated.headers["x-request-id"]) == 32
    hostile = await client.get("/nope", headers={"x-request-id": "a b\tc" + "x" * 300})
    assert hostile.headers["x-request-id"] != "a b\tc" + "x" * 300
    assert hostile.headers.get_list("x-request-id") == [hostile.headers["x-request-id"]]


async def test_healthz_is_an_envelope(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"ok": True, "data": {"status": "up"}}
