"""The outermost ASGI layer: a request id on every response, and an envelope even if everything else fails.

It wraps the whole Litestar app (not a route middleware), so 404s for unknown routes, 405s and errors raised
before routing carry `X-Request-Id` too. The id is echoed from the request when it is sane, else generated,
and bound to the logging context for the request's lifetime.
"""

from __future__ import annotations

import logging
import re
import uuid
from typing import Final

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from services.gateway.envelope import error_body_bytes
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


class RequestIdGuard:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        request_id = incoming_request_id(scope)
        header = (HEADER, request_id.encode("ascii"))
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = [h for h in message.get("headers", ()) if h[0].lower() != HEADER]
                message = {**message, "headers": [*headers, header]}
            await send(message)

        token = request_id_var.set(request_id)
        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("request failed outside the application's error handling")
            if started:
                raise
            body = error_body_bytes(ErrorCode.INTERNAL_ERROR)
            await send_with_id(
                {
                    "type": "http.response.start",
                    "status": 500,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send_with_id({"type": "http.response.body", "body": body, "more_body": False})
        finally:
            request_id_var.reset(token)
