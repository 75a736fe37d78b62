"""The gateway's HTTP protocol on its own: uvicorn's httptools protocol with our head limit, fed bytes directly.

The transport is a recorder (what was written, whether it was closed), the application a bare ASGI callable: the
bytes go through the real parser and the real uvicorn code, only the socket is left out, so how the bytes are
split into reads is chosen by the test instead of by TCP. The e2e tests (test_hostile_input, test_slow_clients)
drive the same protocol in the running gateway.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import uvicorn
from uvicorn.server import ServerState

from services.gateway.http_protocol import ConnectionLimits, EnvelopeHttpProtocol

LIMIT = 1024


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 5555), "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def ok_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


def connect() -> tuple[EnvelopeHttpProtocol, RecordingTransport]:
    config = uvicorn.Config(ok_app, lifespan="off", log_config=None)
    limits = ConnectionLimits(
        header_read_timeout_seconds=60, max_connections=10, retry_after_seconds=1, max_header_bytes=LIMIT
    )
    protocol = EnvelopeHttpProtocol(config=config, server_state=ServerState(), app_state={}, limits=limits)
    transport = RecordingTransport()
    protocol.connection_made(transport)
    return protocol, transport


async def settle() -> None:
    """Let the application tasks run to their end (a bounded number of loop turns; no clock)."""
    for _ in range(200):
        await asyncio.sleep(0)


def statuses(transport: RecordingTransport) -> list[bytes]:
    """The status of each response written, in order (responses follow each other with no separator)."""
    return re.findall(rb"HTTP/1\.1 (\d{3}) ", bytes(transport.written))


async def test_a_whole_head_over_the_limit_in_one_read_is_refused_with_an_envelope() -> None:
    protocol, transport = connect()
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (2 * LIMIT) + b"\r\n\r\n")
    await settle()
    assert statuses(transport) == [b"400"]
    assert b'{"ok":false,"error":{"code":"INVALID_REQUEST"' in transport.written
    assert transport.closed


async def test_a_head_that_never_ends_is_refused_once_it_outgrows_the_limit() -> None:
    protocol, transport = connect()
    start = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: "
    protocol.data_received(start)
    for _ in range((LIMIT - len(start)) // 100):
        protocol.data_received(b"a" * 100)
    assert not transport.closed  # still under the limit
    protocol.data_received(b"a" * 100)
    assert statuses(transport) == [b"400"]
    assert transport.closed


async def test_a_body_in_the_same_read_does_not_count_toward_the_head() -> None:
    protocol, transport = connect()
    body = b"x" * (4 * LIMIT)
    protocol.data_received(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    await settle()
    assert statuses(transport) == [b"200"]
    assert not transport.closed


async def test_pipelined_requests_behind_a_large_body_are_each_answered() -> None:
    protocol, transport = connect()
    body = b"x" * (4 * LIMIT)
    first = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    second = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    # The second head starts in the read that ends the first body, and ends in the next read.
    protocol.data_received(first + second[:10])
    protocol.data_received(second[10:])
    await settle()
    assert statuses(transport) == [b"200", b"200"]
    assert not transport.closed
