"""An ASGI app served by uvicorn on a loopback port in a background thread, for test doubles (fake model
server, webhook receivers) that tests drive synchronously or from their own event loop."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import uvicorn

from deploy.processes import wait_for_port


class ThreadedServer:
    def __init__(
        self,
        app: Any,  # any ASGI 3 callable
        *,
        port: int,
        name: str,
        certfile: Path | None = None,
        keyfile: Path | None = None,
    ) -> None:
        self.port = port
        self.name = name
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_config=None,
            log_level="warning",
            lifespan="off",
            interface="asgi3",
            loop="asyncio",
            timeout_graceful_shutdown=1,
            ssl_certfile=str(certfile) if certfile else None,
            ssl_keyfile=str(keyfile) if keyfile else None,
        )
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.run, name=self.name, daemon=True)
        self._thread.start()
        wait_for_port(self.port)

    def stop(self) -> None:
        if self._thread is not None:
            self._server.should_exit = True
            self._thread.join(10)
            self._thread = None
