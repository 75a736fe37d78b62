"""A backend service's own health endpoint (shared/health_http.py, HEALTH_PORT) over real TCP: /livez answers
while the loop runs, /readyz follows this process's NATS and MongoDB connections, in the API's envelope."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from deploy.processes import free_port
from shared.health_http import HealthServer


class Components:
    def __init__(self) -> None:
        self.state = {"nats": "ok", "mongodb": "ok"}

    async def __call__(self) -> dict[str, str]:
        return dict(self.state)


@pytest.fixture
async def served() -> AsyncIterator[tuple[str, Components]]:
    components = Components()
    server = HealthServer("case", components)
    port = free_port()
    await server.start(port, host="127.0.0.1")
    yield f"http://127.0.0.1:{port}", components
    await server.close()


async def test_livez_and_readyz_answer_in_the_envelope(served: tuple[str, Components]) -> None:
    url, _ = served
    async with httpx.AsyncClient(base_url=url) as http:
        alive = await http.get("/livez")
        ready = await http.get("/readyz")
        unknown = await http.get("/nothing")
    assert alive.status_code == 200
    assert alive.json() == {"ok": True, "data": {"service": "case", "status": "alive"}}
    assert ready.status_code == 200
    assert ready.json()["data"]["components"] == {"nats": "ok", "mongodb": "ok"}
    assert unknown.status_code == 404
    assert unknown.json()["ok"] is False


async def test_readyz_is_503_naming_what_is_down_while_liveness_stays_200(served: tuple[str, Components]) -> None:
    url, components = served
    components.state["nats"] = "down"
    async with httpx.AsyncClient(base_url=url) as http:
        ready = await http.get("/readyz")
        alive = await http.get("/livez")
    assert ready.status_code == 503
    assert ready.json()["error"]["code"] == "SERVICE_UNAVAILABLE"
    assert ready.json()["error"]["details"]["components"]["nats"] == "down"
    assert alive.status_code == 200


async def test_a_probe_that_sends_garbage_or_nothing_does_not_stop_the_server(served: tuple[str, Components]) -> None:
    url, _ = served
    port = int(url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"x" * 9000)  # over the request limit, never a complete head
    await writer.drain()
    assert await reader.read() == b""  # closed without an answer
    writer.close()
    async with httpx.AsyncClient(base_url=url) as http:
        assert (await http.get("/livez")).status_code == 200
