"""SIGTERM lets a service finish the messages it is handling before it exits (shared runtime)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from faststream.nats import NatsBroker

from deploy.processes import ManagedProcess, NatsServer
from shared.errors import ServiceError
from shared.messaging.rpc import request
from tests.support.slow_service import SLOW_SUBJECT, SlowReply, SlowRequest


async def test_sigterm_finishes_in_flight_requests_then_exits_cleanly(
    nats_server: NatsServer, mongo_url: str, raw_broker: NatsBroker, log_dir: Path
) -> None:
    service = ManagedProcess(
        "slow-service",
        [sys.executable, "-m", "tests.support.slow_service"],
        env={**os.environ, "NATS_URL": nats_server.url, "MONGO_URL": mongo_url},
        log_dir=log_dir,
    )
    service.start()
    try:
        for _ in range(100):
            try:
                await request(raw_broker, SLOW_SUBJECT, SlowRequest(seconds=0), SlowReply, timeout=0.5)
                break
            except ServiceError:
                await asyncio.sleep(0.1)
        in_flight = asyncio.create_task(
            request(raw_broker, SLOW_SUBJECT, SlowRequest(seconds=2.0), SlowReply, timeout=10)
        )
        await asyncio.sleep(0.5)
        assert service.process is not None
        service.process.terminate()
        assert await in_flight == SlowReply(slept=2.0)
        exit_code = await asyncio.to_thread(service.process.wait, 20)
        assert exit_code == 0, service.log_text()[-3000:]
    finally:
        service.kill()
