"""Fault injection and the call log, as an ASGI middleware around every `/v0` operation.

A test arms faults through `POST /_sim/faults` ("the next 2 `send` calls answer 429 with Retry-After: 1",
"the next `get_thread` takes 2 s"); each matching call consumes one. Latency is added *after* the simulator
has done the work, before the answer goes out: that is the case a client timeout cannot tell apart from a
lost request, which is exactly what Idempotency-Key exists for. Every `/v0` call is logged with its outcome so
tests can count retries.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Annotated, Final

import msgspec
from litestar.enums import ScopeType
from litestar.types import ASGIApp, HTTPScope, Message, Receive, Scope, Send
from msgspec import Meta

from simulator.agentmail import wire

EVERY_OPERATION: Final = "*"

# Error names and codes AgentMail answers with, by status (a fault may override the code).
_ERRORS: Final = {
    400: ("ValidationError", "validation_error"),
    401: ("UnauthorizedError", "unauthorized"),
    403: ("ForbiddenError", "forbidden"),
    404: ("NotFoundError", "not_found"),
    409: ("ConflictError", "conflict"),
    422: ("UnprocessableEntityError", "unprocessable"),
    429: ("TooManyRequestsError", "rate_limit_exceeded"),
    500: ("InternalServerError", "internal_error"),
    503: ("ServiceUnavailableError", "service_unavailable"),
}


class FaultSpec(msgspec.Struct, frozen=True, kw_only=True):
    """`operation` is an operation name (`send`, `reply`, `get_thread`, ...) or `*` for every one."""

    operation: str
    count: Annotated[int, Meta(ge=1)] = 1
    status: Annotated[int, Meta(ge=400, le=599)] | None = None
    retry_after: Annotated[float, Meta(ge=0)] | None = None
    latency_seconds: Annotated[float, Meta(ge=0, le=300)] = 0.0
    code: str | None = None
    message: str | None = None


class ArmedFault(msgspec.Struct):
    spec: FaultSpec
    remaining: int


class Call(msgspec.Struct, frozen=True):
    operation: str
    method: str
    path: str  # percent-decoded
    raw_path: str  # as the client sent it
    status: int
    idempotency_key: str | None = None
    faulted: bool = False


@dataclass(slots=True)
class FaultBook:
    faults: list[ArmedFault] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)

    def arm(self, spec: FaultSpec) -> None:
        self.faults.append(ArmedFault(spec=spec, remaining=spec.count))

    def take(self, operation: str) -> FaultSpec | None:
        for armed in self.faults:
            if armed.spec.operation in (operation, EVERY_OPERATION):
                armed.remaining -= 1
                if armed.remaining == 0:
                    self.faults.remove(armed)
                return armed.spec
        return None

    def clear(self) -> None:
        self.faults.clear()
        self.calls.clear()


def fault_response(spec: FaultSpec) -> tuple[int, dict[str, str], bytes]:
    assert spec.status is not None
    name, code = _ERRORS.get(spec.status, ("ApiError", "error"))
    body = wire.ErrorBody(name=name, code=spec.code or code, message=spec.message or f"Injected fault ({name})")
    headers = {"content-type": "application/json"}
    if spec.retry_after is not None:
        retry_after = spec.retry_after
        headers["retry-after"] = str(int(retry_after)) if retry_after.is_integer() else str(retry_after)
    return spec.status, headers, msgspec.json.encode(body)


class FaultMiddleware:
    def __init__(self, app: ASGIApp, book: FaultBook) -> None:
        self.app = app
        self.book = book

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = scope.get("route_handler")
        operation = handler.opt.get("operation") if handler is not None else None
        if scope["type"] != ScopeType.HTTP or not isinstance(operation, str):
            await self.app(scope, receive, send)
            return
        spec = self.book.take(operation)
        if spec is not None and spec.status is not None:
            status, headers, body = fault_response(spec)
            self._record(scope, operation, status, faulted=True)
            await asyncio.sleep(spec.latency_seconds)
            await send(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [(name.encode(), value.encode()) for name, value in headers.items()],
                }
            )
            await send({"type": "http.response.body", "body": body, "more_body": False})
            return
        held: list[Message] = []

        async def hold(message: Message) -> None:
            held.append(message)

        await self.app(scope, receive, hold)
        starts = [message["status"] for message in held if message["type"] == "http.response.start"]
        self._record(scope, operation, starts[0] if starts else 0, faulted=spec is not None)
        if spec is not None:
            await asyncio.sleep(spec.latency_seconds)
        for message in held:
            await send(message)

    def _record(self, scope: HTTPScope, operation: str, status: int, *, faulted: bool) -> None:
        key = dict(scope.get("headers", ())).get(b"idempotency-key")
        self.book.calls.append(
            Call(
                operation=operation,
                method=scope["method"],
                path=scope["path"],
                raw_path=scope.get("raw_path", b"").decode("latin-1"),
                status=status,
                idempotency_key=key.decode() if key is not None else None,
                faulted=faulted,
            )
        )
