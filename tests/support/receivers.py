"""Real HTTP endpoints for webhook tests: a receiver on loopback that records every request and answers with
scripted replies (status, delay, redirect), optionally over TLS.

Each receiver runs uvicorn in a thread of its own, so a test that blocks (killing a process, running the admin
CLI) never stalls it, and a webhook service sees it answer exactly as scripted.
"""

from __future__ import annotations

import asyncio
import subprocess
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy.processes import free_port
from tests.support.servers import ThreadedServer
from tests.support.simulator import eventually

type Message = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Reply:
    status: int = 200
    # Seconds to wait before answering (longer than WEBHOOK_TIMEOUT_SECONDS makes a timeout).
    delay_seconds: float = 0.0
    location: str | None = None


@dataclass(frozen=True, slots=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True, slots=True)
class TlsFiles:
    certfile: Path
    keyfile: Path


class Receiver:
    """Answers `replies` in order, then `default`, to every request on any path."""

    def __init__(self, *replies: Reply, default: Reply = Reply(), tls: TlsFiles | None = None) -> None:
        self.port = free_port()
        self.tls = tls
        self.default = default
        self._replies = deque(replies)
        self._received: list[Received] = []
        self._lock = threading.Lock()
        self._server: ThreadedServer | None = None

    def url(self, path: str = "/hook", *, host: str = "127.0.0.1") -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{host}:{self.port}{path}"

    @property
    def received(self) -> list[Received]:
        with self._lock:
            return list(self._received)

    async def wait_for(self, count: int, *, timeout: float = 20.0) -> list[Received]:
        """At least `count` requests, once they have arrived."""

        async def enough() -> list[Received] | None:
            received = self.received
            return received if len(received) >= count else None

        return await eventually(enough, timeout=timeout, what=f"{count} requests at {self.url()}")

    async def _app(self, scope: Message, receive: Callable[[], Awaitable[Message]], send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                # The sender died mid-request (a killed webhook service): no endpoint would act on half a body.
                return
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}
        with self._lock:
            self._received.append(Received(path=scope["path"], headers=headers, body=body))
            reply = self._replies.popleft() if self._replies else self.default
        if reply.delay_seconds:
            await asyncio.sleep(reply.delay_seconds)
        response_headers = [(b"content-type", b"text/plain")]
        if reply.location:
            response_headers.append((b"location", reply.location.encode()))
        await send({"type": "http.response.start", "status": reply.status, "headers": response_headers})
        await send({"type": "http.response.body", "body": b"ok"})

    def __enter__(self) -> Receiver:
        self._server = ThreadedServer(
            self._app,
            port=self.port,
            name=f"receiver-{self.port}",
            certfile=self.tls.certfile if self.tls else None,
            keyfile=self.tls.keyfile if self.tls else None,
        )
        self._server.start()
        return self

    def __exit__(self, *_: object) -> None:
        if self._server is not None:
            self._server.stop()


def self_signed_certificate(directory: Path, hostname: str) -> TlsFiles:
    """A certificate for `hostname` (its own CA), made with the openssl command-line tool."""
    files = TlsFiles(certfile=directory / f"{hostname}.crt", keyfile=directory / f"{hostname}.key")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            f"/CN={hostname}",
            "-addext",
            f"subjectAltName=DNS:{hostname}",
            "-keyout",
            str(files.keyfile),
            "-out",
            str(files.certfile),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return files


@dataclass
class Receivers:
    """Several receivers opened and closed together."""

    opened: list[Receiver] = field(default_factory=list)

    def open(self, *replies: Reply, default: Reply = Reply(), tls: TlsFiles | None = None) -> Receiver:
        receiver = Receiver(*replies, default=default, tls=tls).__enter__()
        self.opened.append(receiver)
        return receiver

    def close(self) -> None:
        for receiver in self.opened:
            receiver.__exit__()
