"""A tiny HTTP health endpoint for a backend service's own process (Kubernetes probes; HEALTH_PORT, 0 = off).

    GET /livez   200 while the process's event loop answers (a loop blocked by CPU-heavy work fails it)
    GET /readyz  200 once this process is connected to NATS and reaches MongoDB, else 503 naming what is down

Design decision: it answers for *this* process. Asking `<service>.rpc.health` over NATS would be answered by any
replica of the queue group, so it cannot tell whether this pod is alive. Written on asyncio streams (two fixed
routes, no body) so it needs no web framework in the backend services; answers use the API's envelope.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import msgspec

from shared.errors import ErrorCode

log = logging.getLogger("caseflow.health")

type ReadinessCheck = Callable[[], Awaitable[dict[str, str]]]

# A request line and headers beyond this are not a probe: the connection is closed.
MAX_REQUEST_BYTES = 8192
READ_TIMEOUT_SECONDS = 5.0


def _response(status: int, body: object) -> bytes:
    payload = msgspec.json.encode(body)
    reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}[status]
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(payload)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + payload


class HealthServer:
    def __init__(self, service: str, readiness: ReadinessCheck) -> None:
        self.service = service
        self.readiness = readiness
        self._server: asyncio.Server | None = None

    async def start(self, port: int, host: str = "0.0.0.0") -> None:
        self._server = await asyncio.start_server(self._handle, host, port, limit=MAX_REQUEST_BYTES)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def answer(self, path: str) -> bytes:
        if path == "/livez":
            return _response(200, {"ok": True, "data": {"service": self.service, "status": "alive"}})
        if path == "/readyz":
            components = await self.readiness()
            down = sorted(name for name, state in components.items() if state != "ok")
            if not down:
                return _response(200, {"ok": True, "data": {"service": self.service, "components": components}})
            error = {
                "code": ErrorCode.SERVICE_UNAVAILABLE,
                "message": f"not ready: {', '.join(down)} down",
                "details": {"components": components},
            }
            return _response(503, {"ok": False, "error": error})
        return _response(404, {"ok": False, "error": {"code": ErrorCode.NOT_FOUND, "message": "Not found."}})

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(READ_TIMEOUT_SECONDS):
                head = await reader.readuntil(b"\r\n\r\n")
            request_line = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
            path = request_line[1].split("?", 1)[0] if len(request_line) == 3 else ""
            writer.write(await self.answer(path))
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass  # a probe that hung up or sent garbage gets no answer
        except Exception:
            log.exception("health endpoint failed")
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
