"""The HTTP/1.1 protocol the gateway serves: uvicorn's httptools implementation with four additions.

1. Its one plain-text answer (a request the parser refuses: malformed request line, bad framing) is replaced by
   the same JSON envelope every other response uses, without internals.
2. A request head (request line and headers) over `max_header_bytes` is refused the same way (400, enveloped)
   instead of buffered: httptools itself has no limit (h11, which the gateway served with before, had one).
3. Headers must arrive within HEADER_READ_TIMEOUT_SECONDS of the connection opening (or of the previous
   response): uvicorn has no such deadline, so a client dripping header bytes (slowloris) would hold a
   connection forever. Too slow: 408 REQUEST_TIMEOUT, enveloped, and the connection is closed.
4. At most MAX_CONNECTIONS connections at once: the next one is answered 503 SERVICE_UNAVAILABLE with
   Retry-After and closed at once (uvicorn's own `limit_concurrency` answers in plain text).

Why httptools: h11 parses and writes HTTP in pure Python; it was the gateway's largest cost per request after the
application itself (issue 16's profile of `GET /cases/{id}`). httptools is llhttp, Node's parser, in C.

These hooks override uvicorn internals (`send_400_response`, `connection_made`, `data_received`,
`on_message_begin`, `on_url`, `on_header`, `on_headers_complete`, `on_message_complete`,
`on_response_complete`), written against
uvicorn 0.54.0, which pyproject.toml pins; tests/e2e/test_hostile_input.py, tests/integration/
test_gateway_envelope.py and tests/e2e/test_slow_clients.py fail if they stop working.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Final

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from services.gateway.envelope import error_body_bytes
from shared.errors import ERROR_SPECS, ErrorCode

MALFORMED_REQUEST: Final = "The HTTP request is malformed or its headers are too large."
# What each header line adds to a head beyond its name and value (": " and CRLF), as h11 counted it.
HEADER_LINE_OVERHEAD: Final = 4


class HeadTooLarge(Exception):
    """Raised from a parser callback: httptools stops parsing and reports it as a parser error (a 400)."""


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    header_read_timeout_seconds: float
    max_connections: int
    retry_after_seconds: int
    max_header_bytes: int


class EnvelopeHttpProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, limits: ConnectionLimits | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        self._header_deadline: asyncio.TimerHandle | None = None
        # From a request's end (or the connection's start) to the next one's last header: a head is arriving.
        # Its size is counted twice: as received (a head that never ends) and as parsed (a whole one can arrive
        # in one read).
        self._reading_head = True
        self._head_bytes_received = 0
        self._head_bytes_parsed = 0

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

    def data_received(self, data: bytes) -> None:
        if self._reading_head:
            self._head_bytes_received += len(data)
        super().data_received(data)
        # A head still incomplete after more bytes than the limit would only grow the parser's buffer.
        if self._reading_head and self._over_limit(self._head_bytes_received) and not self.transport.is_closing():
            self.send_400_response(MALFORMED_REQUEST)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes_parsed = 0

    def on_url(self, url: bytes) -> None:
        self._count_head(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value) + HEADER_LINE_OVERHEAD)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        # The header deadline is met (the body has its own, in the ASGI guard).
        self._reading_head = False
        self._head_bytes_received = 0
        self._disarm_header_deadline()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        # What arrives from here on is the next request's head. (Bytes of this request in the same read as its
        # end are not counted: the count errs by at most one read, low, never high.)
        self._reading_head = True

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.limits is not None and not self.transport.is_closing():
            self._arm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_deadline()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        self._answer_and_close(ErrorCode.INVALID_REQUEST, MALFORMED_REQUEST)

    def _count_head(self, size: int) -> None:
        self._head_bytes_parsed += size
        if self._over_limit(self._head_bytes_parsed):
            raise HeadTooLarge

    def _over_limit(self, head_bytes: int) -> bool:
        return self.limits is not None and head_bytes > self.limits.max_header_bytes

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
        if self.transport.is_closing() or not self._reading_head:
            return
        if self.cycle is None or self.cycle.response_complete:
            self._answer_and_close(ErrorCode.REQUEST_TIMEOUT, None)
        else:
            self.transport.close()

    def _answer_and_close(
        self, code: ErrorCode, message: str | None, *, extra: list[tuple[bytes, str]] | None = None
    ) -> None:
        """Write an enveloped error straight to the socket and close the connection.

        Raw bytes: no request may have been parsed, so there is no response cycle to answer through."""
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
