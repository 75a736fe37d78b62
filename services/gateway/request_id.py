"""The outermost ASGI layer: a request id on every response, a bound on header size, and an envelope even if
everything else fails.

It wraps the whole Litestar app (not a route middleware), so 404s for unknown routes, 405s and errors raised
before routing carry `X-Request-Id` too. The id is echoed from the request when it is sane, else generated,
and bound to the logging context for the request's lifetime.

Being outermost, it is also where every request is counted and timed for the metrics, by the route template
Litestar's router writes into the shared ASGI scope (`/cases/{case_id}`), never the raw path: a request no
route matched is labelled `unmatched`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from typing import Final

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, ReceiveMessage, Scope, Send

from services.gateway.envelope import error_body_bytes
from shared import metrics
from shared.errors import ErrorCode
from shared.logs import request_id_var

log = logging.getLogger("caseflow.gateway")

HEADER: Final = b"x-request-id"
_SANE_ID: Final = re.compile(rb"^[A-Za-z0-9._:\-]{1,128}$")


def incoming_request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == HEADER and _SANE_ID.match(value):
            return value.decode("ascii")
    return uuid.uuid4().hex


class BodyTooSlow(Exception):
    """The client paused longer than BODY_READ_TIMEOUT_SECONDS while sending the request body."""


class RequestIdGuard:
    def __init__(self, app: ASGIApp, *, max_header_bytes: int, body_read_timeout_seconds: float) -> None:
        self.app = app
        self.max_header_bytes = max_header_bytes
        self.body_read_timeout_seconds = body_read_timeout_seconds

    def _receive_within_deadline(self, receive: Receive) -> Receive:
        """`receive`, with a deadline on each piece of the body until it is complete (then as it was: the app
        may wait for a disconnect for as long as a response takes)."""
        body_done = False

        async def receive_body() -> ReceiveMessage:
            nonlocal body_done
            if body_done:
                return await receive()
            try:
                async with asyncio.timeout(self.body_read_timeout_seconds):
                    message = await receive()
            except TimeoutError:
                raise BodyTooSlow from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        return receive_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        request_id = incoming_request_id(scope)
        header = (HEADER, request_id.encode("ascii"))
        started = False
        status: int | None = None
        arrived = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal started, status
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                headers = [h for h in message.get("headers", ()) if h[0].lower() != HEADER]
                message = {**message, "headers": [*headers, header]}
            await send(message)

        token = request_id_var.set(request_id)
        try:
            header_bytes = sum(len(name) + len(value) for name, value in scope.get("headers", ()))
            if header_bytes > self.max_header_bytes:
                # uvicorn only bounds headers that arrive slowly; this bounds them however they arrive.
                await self._refuse(send_with_id, ErrorCode.INVALID_REQUEST, "The request headers are too large.", 400)
                return
            await self.app(scope, self._receive_within_deadline(receive), send_with_id)
        except BodyTooSlow:
            log.info("request body arrived too slowly", extra={"path": scope.get("path")})
            if started:
                raise
            await self._refuse(send_with_id, ErrorCode.REQUEST_TIMEOUT, None, 408)
        except Exception:
            log.exception("request failed outside the application's error handling")
            if started:
                raise
            await self._refuse(send_with_id, ErrorCode.INTERNAL_ERROR, None, 500)
        finally:
            metrics.observe_http_request(
                route=scope.get("path_template") or None,
                method=scope["method"],
                status=status,
                seconds=time.perf_counter() - arrived,
            )
            request_id_var.reset(token)

    @staticmethod
    async def _refuse(send: Send, code: ErrorCode, message: str | None, status: int) -> None:
        body = error_body_bytes(code, message)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body, "more_body": False})
