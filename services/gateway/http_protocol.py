"""The HTTP/1.1 protocol the gateway serves: uvicorn's h11 implementation with three additions.

1. Its one plain-text answer (a request h11 cannot parse: malformed request line, headers over the size limit,
   bad framing) is replaced by the same JSON envelope every other response uses, without internals.
2. Headers must arrive within HEADER_READ_TIMEOUT_SECONDS of the connection opening (or of the previous
   response): uvicorn has no such deadline, so a client dripping header bytes (slowloris) would hold a
   connection forever. Too slow: 408 REQUEST_TIMEOUT, enveloped, and the connection is closed.
3. At most MAX_CONNECTIONS connections at once: the next one is answered 503 SERVICE_UNAVAILABLE with
   Retry-After and closed at once (uvicorn's own `limit_concurrency` answers in plain text).

These hooks override uvicorn internals (`send_400_response`, `connection_made`, `handle_events`,
`on_response_complete`), written against uvicorn 0.54.0, which pyproject.toml pins;
tests/integration/test_gateway_envelope.py and tests/e2e/test_slow_clients.py fail if they stop working.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from services.gateway.envelope import error_body_bytes
from shared.errors import ERROR_SPECS, ErrorCode

MALFORMED_REQUEST = "The HTTP request is malformed or its headers are too large."


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    header_read_timeout_seconds: float
    max_connections: int
    retry_after_seconds: int


class EnvelopeH11Protocol(H11Protocol):
    def __init__(self, *args: Any, limits: ConnectionLimits | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        self._header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self.limits is None:
            return
        if len(self.connections) > self.limits.max_connections:
            self._answer_and_close(
                ErrorCode.SERVICE_UNAVAILABLE, None, extra=[(b"retry-after", str(self.limits.retry_after_seconds))]
            )
            return
        self._arm_header_deadline()

    def handle_events(self) -> None:
        super().handle_events()
        # Once h11 has a whole request head, the header deadline is met (the body has its own, in the ASGI guard).
        if self._header_deadline is not None and self.conn.their_state is not h11.IDLE:
            self._disarm_header_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.limits is not None and not self.transport.is_closing():
            self._arm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_deadline()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        self._answer_and_close(ErrorCode.INVALID_REQUEST, MALFORMED_REQUEST)

    def _arm_header_deadline(self) -> None:
        assert self.limits is not None
        self._disarm_header_deadline()
        self._header_deadline = self.loop.call_later(self.limits.header_read_timeout_seconds, self._headers_too_slow)

    def _disarm_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if self.conn.our_state is h11.IDLE:
            self._answer_and_close(ErrorCode.REQUEST_TIMEOUT, None)
        else:
            self.transport.close()

    def _answer_and_close(
        self, code: ErrorCode, message: str | None, *, extra: list[tuple[bytes, str]] | None = None
    ) -> None:
        """Write an enveloped error straight to the socket and close the connection.

        Raw bytes, not h11: no request may have been parsed (h11 refuses to send a response before one)."""
        self._disarm_header_deadline()
        body = error_body_bytes(code, message)
        status = ERROR_SPECS[code].http_status
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
            # No request id could be read from a request that was never parsed: a fresh one, as for any other.
            (b"x-request-id", uuid.uuid4().hex.encode()),
            *((name, value.encode()) for name, value in extra or []),
        ]
        head = b"HTTP/1.1 %d %s\r\n" % (status, HTTPStatus(status).phrase.encode())
        head += b"".join(name + b": " + value + b"\r\n" for name, value in headers)
        self.transport.write(head + b"\r\n" + body)
        self.transport.close()
