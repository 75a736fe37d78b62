"""A service's RPC handler at its in-flight bound sheds the next request at once, against a real nats-server.

The handlers are held open by an event, so "at once" is shown by the order of events, not by a clock: the extra
request is answered 503 with Retry-After while every admitted one is still held (running, or waiting its turn).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import msgspec
import pytest
from faststream.nats import NatsBroker
from prometheus_client import REGISTRY

from deploy.processes import NatsServer
from shared.contracts.rpc import Ok
from shared.errors import ErrorCode, ServiceError
from shared.messaging.broker import create_broker
from shared.messaging.responder import handler_in_flight, rpc_subscriber
from shared.messaging.rpc import request
from shared.settings import CommonSettings, load_settings
from shared.subjects import Service

BOUND = 3
RETRY_AFTER_SECONDS = 4


class Job(msgspec.Struct):
    job_id: str


class Done(msgspec.Struct):
    job_id: str


PROBE = "probe"


async def started(broker: NatsBroker, asker: NatsBroker, *subjects: str) -> None:
    """Start the broker and wait until each subject answers a probe (a concurrent subscriber subscribes from
    its own task, so `start()` can return before the server routes requests to it)."""
    await broker.start()
    for subject in subjects:
        for _ in range(200):
            try:
                await request(asker, subject, Job(PROBE), Done, timeout=5)
            except ServiceError:
                await asyncio.sleep(0.02)
            else:
                break


class HeldHandler:
    """An RPC handler that holds every request but the probe until `release` is set, recording who entered;
    `entered_all` is set once `expected` requests are inside."""

    def __init__(self, broker: NatsBroker, subject: str, *, queue: str, concurrency: int, expected: int) -> None:
        self.release = asyncio.Event()
        self.entered: list[str] = []
        self.entered_all = asyncio.Event()

        @rpc_subscriber(broker, subject, queue=queue, concurrency=concurrency)
        async def held(job: Job) -> Ok[Done]:
            if job.job_id == PROBE:
                return Ok(Done(job.job_id))
            self.entered.append(job.job_id)
            if len(self.entered) >= expected:
                self.entered_all.set()
            await self.release.wait()
            return Ok(Done(job.job_id))


@pytest.fixture
async def bounded_broker(nats_server: NatsServer) -> AsyncIterator[NatsBroker]:
    settings = load_settings(
        CommonSettings,
        {
            "NATS_URL": nats_server.url,
            "RPC_MAX_IN_FLIGHT": str(BOUND),
            "RPC_SHED_RETRY_AFTER_SECONDS": str(RETRY_AFTER_SECONDS),
        },
    )
    broker = create_broker(settings, Service.CASE)
    yield broker
    await broker.stop()


async def test_the_request_beyond_the_bound_is_answered_503_with_retry_after_while_the_others_run(
    bounded_broker: NatsBroker, raw_broker: NatsBroker, subject_prefix: str
) -> None:
    subject = f"{subject_prefix}.rpc.held"
    held = HeldHandler(bounded_broker, subject, queue="held", concurrency=BOUND, expected=BOUND)
    await started(bounded_broker, raw_broker, subject)
    shed_before = REGISTRY.get_sample_value("caseflow_rpc_shed_requests_total", {"subject": subject}) or 0.0

    admitted = [
        asyncio.create_task(request(raw_broker, subject, Job(f"job-{n}"), Done, timeout=30)) for n in range(BOUND)
    ]
    # A guard against a hang only: the assertion is that all BOUND handlers run at the same time.
    await asyncio.wait_for(held.entered_all.wait(), timeout=10)

    with pytest.raises(ServiceError) as shed:
        await request(raw_broker, subject, Job("overflow"), Done, timeout=30)
    assert shed.value.code is ErrorCode.SERVICE_UNAVAILABLE
    assert shed.value.retry_after_seconds == RETRY_AFTER_SECONDS
    assert shed.value.kind == "transient"
    # Answered while every admitted request is still held open: it did not queue behind them.
    assert not any(task.done() for task in admitted)
    assert "overflow" not in held.entered
    assert REGISTRY.get_sample_value("caseflow_rpc_shed_requests_total", {"subject": subject}) == shed_before + 1

    held.release.set()
    assert sorted(done.job_id for done in await asyncio.gather(*admitted)) == [f"job-{n}" for n in range(BOUND)]
    # Once the held ones finished, the handler admits again.
    assert (await request(raw_broker, subject, Job("after"), Done, timeout=30)).job_id == "after"


async def test_each_handler_has_its_own_bound(
    bounded_broker: NatsBroker, raw_broker: NatsBroker, subject_prefix: str
) -> None:
    held_subject, other_subject = f"{subject_prefix}.rpc.held", f"{subject_prefix}.rpc.other"
    held = HeldHandler(bounded_broker, held_subject, queue="held", concurrency=BOUND, expected=BOUND)

    @rpc_subscriber(bounded_broker, other_subject, queue="other")
    async def other(job: Job) -> Ok[Done]:
        return Ok(Done(job.job_id))

    await started(bounded_broker, raw_broker, held_subject, other_subject)
    admitted = [
        asyncio.create_task(request(raw_broker, held_subject, Job(f"job-{n}"), Done, timeout=30)) for n in range(BOUND)
    ]
    await asyncio.wait_for(held.entered_all.wait(), timeout=10)
    # A full handler does not shed the requests of another one.
    assert (await request(raw_broker, other_subject, Job("free"), Done, timeout=30)).job_id == "free"
    held.release.set()
    await asyncio.gather(*admitted)


async def test_requests_waiting_their_turn_count_toward_the_bound_and_run_in_turn(
    bounded_broker: NatsBroker, raw_broker: NatsBroker, subject_prefix: str
) -> None:
    subject = f"{subject_prefix}.rpc.serial"
    serial = HeldHandler(bounded_broker, subject, queue="serial", concurrency=1, expected=1)

    await started(bounded_broker, raw_broker, subject)
    running = asyncio.create_task(request(raw_broker, subject, Job("running"), Done, timeout=30))
    await asyncio.wait_for(serial.entered_all.wait(), timeout=10)
    waiting = [
        asyncio.create_task(request(raw_broker, subject, Job(f"waiting-{n}"), Done, timeout=30))
        for n in range(BOUND - 1)
    ]
    # One runs (concurrency 1) and BOUND - 1 wait their turn (counted, not timed): the handler is full.
    for _ in range(200):
        if handler_in_flight(bounded_broker, subject) == BOUND:
            break
        await asyncio.sleep(0.05)
    assert handler_in_flight(bounded_broker, subject) == BOUND
    with pytest.raises(ServiceError) as shed:
        await request(raw_broker, subject, Job("overflow"), Done, timeout=30)
    assert shed.value.code is ErrorCode.SERVICE_UNAVAILABLE
    assert shed.value.retry_after_seconds == RETRY_AFTER_SECONDS
    assert serial.entered == ["running"]
    assert not running.done()
    serial.release.set()
    assert (await running).job_id == "running"
    assert sorted(done.job_id for done in await asyncio.gather(*waiting)) == [f"waiting-{n}" for n in range(BOUND - 1)]
    assert sorted(serial.entered) == sorted(["running", *(f"waiting-{n}" for n in range(BOUND - 1))])
