"""Slow clients (slowloris) cannot hold the gateway: header and body deadlines, and a cap on connections.

Each test runs its own gateway (ExtraGateway) with short deadlines on the session stack's NATS and services.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time

import httpx

from deploy.processes import Stack
from tests.support.api import ExtraGateway


async def _read_answer(reader: asyncio.StreamReader, *, timeout: float) -> bytes:
    """Everything the server sends until it closes the connection."""
    return await asyncio.wait_for(reader.read(), timeout=timeout)


def _status_and_body(raw: bytes) -> tuple[int, dict[str, object], dict[str, str]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in header_lines)
    return int(status_line.split()[1]), json.loads(body), {k.lower(): v for k, v in headers.items()}


async def test_hundreds_of_slow_header_connections__normal_requests_served_and_the_slow_ones_cut_off(
    stack: Stack,
) -> None:
    with ExtraGateway(stack, {"HEADER_READ_TIMEOUT_SECONDS": "2"}, name="gateway-slowloris") as gateway:
        slow = [await asyncio.open_connection("127.0.0.1", gateway.port) for _ in range(300)]

        async def drip(writer: asyncio.StreamWriter) -> None:
            # A request head that never ends: one header line per half second.
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            for n in range(40):
                await asyncio.sleep(0.5)
                if writer.is_closing():
                    return
                try:
                    writer.write(b"X-Drip-%d: y\r\n" % n)
                    await writer.drain()
                except ConnectionError:
                    return

        drips = [asyncio.create_task(drip(writer)) for _, writer in slow]
        latencies: list[float] = []
        async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as http:
            for _ in range(30):
                started = time.perf_counter()
                response = await http.get("/healthz")
                latencies.append(time.perf_counter() - started)
                assert response.status_code == 200
                await asyncio.sleep(0.05)
        answers = await asyncio.gather(*(_read_answer(reader, timeout=60) for reader, _ in slow))
        for task in drips:
            task.cancel()
        for _, writer in slow:
            writer.close()
        # Every slow connection was answered 408 (enveloped) and closed by the server, not left open.
        statuses = [_status_and_body(answer)[0] for answer in answers]
        assert statuses == [408] * len(slow)
        assert _status_and_body(answers[0])[1] == {
            "ok": False,
            "error": {"code": "REQUEST_TIMEOUT", "message": "The request did not arrive in time."},
        }
        print(f"normal requests during 300 slow connections: median {statistics.median(latencies) * 1000:.1f} ms")


async def test_connections_over_the_cap_get_503_with_retry_after_and_the_gateway_recovers(stack: Stack) -> None:
    limits = {"MAX_CONNECTIONS": "20", "HEADER_READ_TIMEOUT_SECONDS": "3", "RETRY_AFTER_SECONDS": "2"}
    with ExtraGateway(stack, limits, name="gateway-capped") as gateway:
        idle = [await asyncio.open_connection("127.0.0.1", gateway.port) for _ in range(20)]
        await asyncio.sleep(0.2)
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        status, body, headers = _status_and_body(await _read_answer(reader, timeout=10))
        writer.close()
        assert (status, body["ok"], headers["retry-after"]) == (503, False, "2")
        assert body["error"] == {
            "code": "SERVICE_UNAVAILABLE",
            "message": "The service is temporarily unavailable; retry shortly.",
        }
        assert "x-request-id" in headers
        for _, idle_writer in idle:
            idle_writer.close()
        async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as http:
            for _ in range(50):  # the closed connections leave the server's count as their closes arrive
                if (await http.get("/healthz")).status_code == 200:
                    break
                await asyncio.sleep(0.1)
            assert (await http.get("/healthz")).status_code == 200


async def test_a_body_that_stops_arriving_is_408(stack: Stack) -> None:
    with ExtraGateway(stack, {"BODY_READ_TIMEOUT_SECONDS": "1"}, name="gateway-slow-body") as gateway:
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        # The AgentMail ingress reads its body before anything else (no API key to check first).
        writer.write(
            b"POST /webhooks/agentmail HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
            b'content-length: 100\r\n\r\n{"type": "event"'
        )
        await writer.drain()
        raw = await _read_answer(reader, timeout=30)
        writer.close()
        status, body, _ = _status_and_body(raw)
        assert (status, body["error"]) == (
            408,
            {"code": "REQUEST_TIMEOUT", "message": "The request did not arrive in time."},
        )
