"""The HTTP/1.1 protocol the gateway serves: uvicorn's h11 implementation, with its one plain-text answer
(a request h11 cannot parse: malformed request line, headers over the size limit, bad framing) replaced by
the same JSON envelope every other response uses, with a fresh `X-Request-Id` like every other response (there
is no sane incoming id to echo from a request that could not be parsed), and without internals.
"""

from __future__ import annotations

import uuid

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from services.gateway.envelope import error_body_bytes
from services.gateway.request_id import HEADER as REQUEST_ID_HEADER
from shared.errors import ErrorCode

MALFORMED_REQUEST = "The HTTP request is malformed or its headers are too large."


class EnvelopeH11Protocol(H11Protocol):
    def send_400_response(self, msg: str) -> None:
        body = error_body_bytes(ErrorCode.INVALID_REQUEST, MALFORMED_REQUEST)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
            (REQUEST_ID_HEADER, uuid.uuid4().hex.encode("ascii")),
        ]
        for event in (
            h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
            h11.Data(data=body),
            h11.EndOfMessage(),
        ):
            self.transport.write(self.conn.send(event))
        self.transport.close()
