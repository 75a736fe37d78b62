from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.processes import NatsServer, Stack


@pytest.fixture(scope="session")
def stack(nats_server: NatsServer, mongo_url: str, log_dir: Path) -> Iterator[Stack]:
    """The six services as real processes against the session's NATS and MongoDB."""
    running = Stack(
        log_dir=log_dir,
        nats=nats_server,
        mongo_url=mongo_url,
        env={"LOG_LEVEL": "DEBUG", "MONGO_DB": "caseflow_e2e", "WEBHOOK_ALLOW_PRIVATE": "true"},
    )
    running.start()
    yield running
    running.stop()


@pytest.fixture
async def api(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=15) as client:
        yield client
