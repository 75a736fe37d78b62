"""A service's own /readyz (HEALTH_PORT) over a real nats-server and MongoDB: its NATS component is `starting`
until the server holds the process's subscriptions, then `ok`, and a request sent the moment it is ready is
answered. Drives the runtime's start-up hooks in FastStream's order (on_startup, broker start, after_startup)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from faststream.nats import NatsBroker

from deploy.processes import NatsServer, private_nats_server
from shared.contracts.health import HealthReport
from shared.contracts.rpc import Empty
from shared.messaging.rpc import request
from shared.runtime import ServiceRuntime
from shared.settings import CommonSettings, load_settings
from shared.subjects import Service, health_subject


@pytest.fixture(scope="module")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """This module's own server: on the session's, the e2e stack's billing service answers the same subject."""
    with private_nats_server(Path(tmp_path_factory.mktemp("readiness-nats"))) as server:
        yield server


@pytest.fixture
def keep_logging() -> Iterator[None]:
    """The runtime configures the process's logging for a service; give the test session's back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("keep_logging")
async def test_a_service_is_ready_only_once_nats_holds_its_subscriptions(
    nats_server: NatsServer, mongo_url: str, raw_broker: NatsBroker, subject_prefix: str
) -> None:
    settings = load_settings(
        CommonSettings, {"NATS_URL": nats_server.url, "MONGO_URL": mongo_url, "MONGO_DB": f"test_{subject_prefix}"}
    )
    runtime = ServiceRuntime(Service.BILLING, settings)
    await runtime._startup()
    try:
        await runtime.broker.start()
        assert (await runtime._readiness())["nats"] == "starting"
        await runtime._start_loops()
        assert await runtime._readiness() == {"nats": "ok", "mongodb": "ok"}
        report = await request(raw_broker, health_subject(Service.BILLING), Empty(), HealthReport, timeout=5)
        assert report.instance == runtime.instance
    finally:
        await runtime._stop_loops()
        await runtime.broker.stop()
        await runtime._close()
