"""What `make bench`'s profile of the gateway found: FastStream ran a broker's middlewares on the reply to the
broker's own `request()`, and ServiceMiddleware counted that reply under its subject, a per-request inbox. Every
request then added new series (~17 samples) to the requester's metrics: an unbounded leak and CPU per request.

Replies are not handled messages: `rpc.request` asks with nats-py (its replies never reach a FastStream
subscriber), and only the responder counts the request, under the request's subject.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from faststream.nats import NatsBroker
from prometheus_client import REGISTRY

from deploy.processes import NatsServer
from shared.contracts.rpc import Ok
from shared.messaging.broker import create_broker
from shared.messaging.connection import REPLY_INBOX_PREFIX, flush_to_server
from shared.messaging.responder import rpc_subscriber
from shared.messaging.rpc import request
from shared.settings import CommonSettings, load_settings
from shared.subjects import Service
from tests.integration import test_messaging
from tests.integration.test_messaging import Job

# test_messaging's responder broker (a service broker, with ServiceMiddleware), used here by name.
service_broker = test_messaging.service_broker


@pytest.fixture
async def requesting_broker(nats_server: NatsServer) -> AsyncIterator[NatsBroker]:
    """A broker built like the gateway's, ServiceMiddleware installed."""
    broker = create_broker(load_settings(CommonSettings, {"NATS_URL": nats_server.url}), Service.GATEWAY)
    await broker.connect()
    yield broker
    await broker.stop()


def reply_series() -> int:
    return sum(
        1
        for metric in REGISTRY.collect()
        if metric.name == "caseflow_nats_messages"
        for sample in metric.samples
        if sample.labels.get("subject", "").startswith(REPLY_INBOX_PREFIX)
    )


async def test_replies_to_our_own_requests_add_no_series(
    service_broker: NatsBroker, requesting_broker: NatsBroker, subject_prefix: str
) -> None:
    subject = f"{subject_prefix}.rpc.lookup"

    @rpc_subscriber(service_broker, subject, queue="lookup")
    async def lookup(job: Job) -> Ok[Job]:
        return Ok(job)

    await service_broker.start()
    await flush_to_server(service_broker.connection)
    before = reply_series()
    for n in range(5):
        assert await request(requesting_broker, subject, Job(f"j{n}"), Job, timeout=5) == Job(f"j{n}")
    assert reply_series() == before
    handled = {"subject": subject, "outcome": "ok"}
    assert REGISTRY.get_sample_value("caseflow_nats_messages_total", handled) == 5
