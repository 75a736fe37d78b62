"""A replica told to stop leaves its request/reply queue group at once and still answers what it was given
(`shared.messaging.broker.stop_answering_requests`, the first step of the runtime's SIGTERM handling).

Two replicas of one responder (shared.messaging.responder) on a real nats-server; the one stopping is busy with a
request the test holds open and has more queued behind it when the stop begins; more are sent once it has begun to
leave. FastStream's own stop, which the handlers ran under before the responder, marked the subscriber stopped and
unsubscribed only when the held request was done, so every request NATS routed to it in between was dropped
unanswered (a 503 upstream); a drain that unsubscribed without answering what it was given would drop the queued
ones. Not covered (and not closed): a request NATS routes to the replica during the unsubscribe's own round trip,
in the same instant the stop begins; it can still go unanswered (503, which the client retries with its key), see
docs/reliability.md.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import msgspec
import pytest
from faststream.nats import NatsBroker

from deploy.processes import NatsServer
from shared.contracts.rpc import Ok
from shared.errors import ServiceError
from shared.messaging.broker import create_broker, stop_answering_requests
from shared.messaging.connection import flush_to_server
from shared.messaging.responder import responders_of, rpc_subscriber
from shared.messaging.rpc import request
from shared.settings import CommonSettings, load_settings
from shared.subjects import Service

REQUESTS_DURING_THE_STOP = 30


class Ask(msgspec.Struct):
    hold: bool = False


class Answer(msgspec.Struct):
    replica: str


@pytest.fixture
async def replicas(nats_server: NatsServer) -> AsyncIterator[tuple[NatsBroker, NatsBroker]]:
    settings = load_settings(CommonSettings, {"NATS_URL": nats_server.url})
    stopping, staying = create_broker(settings, Service.CASE), create_broker(settings, Service.CASE)
    yield stopping, staying
    await stopping.stop()
    await staying.stop()


@pytest.mark.parametrize("concurrency", [1, 4], ids=["one-at-a-time", "concurrent"])
async def test_a_stopping_replica_leaves_its_queue_group_and_answers_what_it_was_given(
    replicas: tuple[NatsBroker, NatsBroker], raw_broker: NatsBroker, subject_prefix: str, concurrency: int
) -> None:
    stopping, staying = replicas
    subject = f"{subject_prefix}.rpc.answer"
    held = asyncio.Event()
    release = asyncio.Event()
    answered_by_stopping = 0

    @rpc_subscriber(stopping, subject, queue="answer", concurrency=concurrency)
    async def answer_stopping(ask: Ask) -> Ok[Answer]:
        nonlocal answered_by_stopping
        if ask.hold:
            held.set()
            await release.wait()
        answered_by_stopping += 1
        return Ok(Answer(replica="stopping"))

    @rpc_subscriber(staying, subject, queue="answer", concurrency=concurrency)
    async def answer_staying(ask: Ask) -> Ok[Answer]:
        return Ok(Answer(replica="staying"))

    for broker in replicas:
        await broker.start()
        await flush_to_server(broker.connection)

    # Requests that would hold a handler, until one lands on the replica about to stop (the other answers them).
    held_request: asyncio.Task[Answer] | None = None
    while held_request is None:
        attempt = asyncio.create_task(request(raw_broker, subject, Ask(hold=True), Answer, timeout=30))
        landed = asyncio.create_task(held.wait())
        await asyncio.wait({attempt, landed}, return_when="FIRST_COMPLETED")
        landed.cancel()
        if held.is_set():
            held_request = attempt
        else:
            assert (await attempt).replica == "staying"

    async def stop_like_the_runtime() -> None:
        await stop_answering_requests(stopping, timeout=30)
        await stopping.stop()

    # Requests NATS hands the stopping replica while it is busy (they queue behind the held one), then the stop,
    # then requests sent once the replica has left its queue group (the other replica must answer those).
    asks = [
        asyncio.create_task(request(raw_broker, subject, Ask(), Answer, timeout=10))
        for _ in range(REQUESTS_DURING_THE_STOP)
    ]
    await flush_to_server(raw_broker.connection)
    stop = asyncio.create_task(stop_like_the_runtime())
    # The stop has begun once the replica lets go of its subscription (the responder's state: no event to wait on).
    while any(handler.subscription is not None for handler in responders_of(stopping).handlers):  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    asks += [
        asyncio.create_task(request(raw_broker, subject, Ask(), Answer, timeout=10))
        for _ in range(REQUESTS_DURING_THE_STOP)
    ]
    await flush_to_server(raw_broker.connection)
    release.set()  # the held request ends; the stopping replica answers it and whatever it was given before it left

    outcomes = await asyncio.gather(*asks, return_exceptions=True)
    unanswered = [outcome for outcome in outcomes if isinstance(outcome, ServiceError)]
    assert unanswered == []
    assert (await held_request).replica == "stopping"
    await stop
    assert answered_by_stopping >= 1
