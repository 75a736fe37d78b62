"""The per-message metrics against a real nats-server (ServiceMiddleware, and the RPC responder): every handled
message is counted under its subject with its outcome (ok, the error code of a failed request, retried or parked
for a durable message).

Subjects are unique per test (`subject_prefix`), so the process-wide registry needs no reset between tests. The
broker and stream fixtures are test_messaging's (backoff 0.1 s then 0.2 s, parked on the 4th delivery).
"""

from __future__ import annotations

import asyncio
import contextlib

from faststream.nats import NatsBroker
from prometheus_client import REGISTRY

from shared.contracts.rpc import Ok
from shared.errors import ErrorCode, ServiceError
from shared.messaging.connection import flush_to_server
from shared.messaging.jetstream import durable_consumers, durable_subscriber, ensure_streams, publish_durable
from shared.messaging.middleware import PermanentFailure
from shared.messaging.responder import rpc_subscriber
from shared.messaging.rpc import request
from shared.subjects import StreamSpec
from tests.integration import test_messaging
from tests.integration.test_messaging import Job
from tests.support.simulator import eventually

# test_messaging's fixtures, used here by name.
service_broker = test_messaging.service_broker
stream = test_messaging.stream


def handled(subject: str, outcome: str) -> float:
    return REGISTRY.get_sample_value("caseflow_nats_messages_total", {"subject": subject, "outcome": outcome}) or 0.0


def timed(subject: str, outcome: str) -> float:
    labels = {"subject": subject, "outcome": outcome}
    return REGISTRY.get_sample_value("caseflow_nats_message_duration_seconds_count", labels) or 0.0


async def test_requests_count_as_ok_or_under_their_error_code(
    service_broker: NatsBroker, raw_broker: NatsBroker, subject_prefix: str
) -> None:
    subject = f"{subject_prefix}.rpc.lookup"

    @rpc_subscriber(service_broker, subject, queue="lookup")
    async def lookup(job: Job) -> Ok[Job]:
        if job.job_id == "missing":
            raise ServiceError(ErrorCode.CASE_NOT_FOUND)
        if job.job_id == "broken":
            raise RuntimeError("a bug")
        return Ok(job)

    await service_broker.start()
    # The subscription reaches the server before the first request (or nobody would answer it). A request NATS
    # found no responder for never reached the middleware, so asking again until one answers counts nothing.
    await flush_to_server(service_broker.connection)
    answered: Job | None = None
    for _ in range(100):
        try:
            answered = await request(raw_broker, subject, Job("a"), Job, timeout=5)
        except ServiceError as unanswered:
            if unanswered.code is not ErrorCode.SERVICE_UNAVAILABLE:
                raise
            await asyncio.sleep(0.05)
        else:
            break
    assert answered == Job("a")
    await request(raw_broker, subject, Job("b"), Job, timeout=5)
    for job_id in ("missing", "broken"):
        with contextlib.suppress(ServiceError):
            await request(raw_broker, subject, Job(job_id), Job, timeout=5)
    # The middleware counts a request once its reply is sent, so the asker can read the counter first.
    for _ in range(250):
        if handled(subject, "INTERNAL_ERROR") == 1 and handled(subject, "ok") == 2:
            break
        await asyncio.sleep(0.02)
    assert handled(subject, "ok") == 2
    assert handled(subject, "CASE_NOT_FOUND") == 1
    assert handled(subject, "INTERNAL_ERROR") == 1
    assert timed(subject, "ok") == 2


async def test_durable_messages_count_as_retried_then_ok_or_parked(
    service_broker: NatsBroker, stream: StreamSpec, subject_prefix: str
) -> None:
    subject = f"{subject_prefix}.work.jobs"
    failures = {"flaky": 2, "poison": 99}
    finished = asyncio.Event()

    @durable_subscriber(service_broker, subject=subject, stream=stream, durable="worker")
    async def work(job: Job) -> None:
        if job.job_id == "permanent":
            raise PermanentFailure("can never work")
        if failures[job.job_id] > 0:
            failures[job.job_id] -= 1
            # An outage is retried for as long as it lasts; anything else is poison and parked at the 4th.
            raise ConnectionError("transient") if job.job_id == "flaky" else ValueError("poison")
        finished.set()

    await service_broker.connect()
    await ensure_streams(service_broker, [stream], replicas=1)
    await service_broker.start()
    for job_id in ("flaky", "poison", "permanent"):
        await publish_durable(service_broker, subject, Job(job_id), stream=stream, msg_id=job_id)
    await asyncio.wait_for(finished.wait(), timeout=10)

    async def both_parked() -> bool | None:
        return True if handled(subject, "parked") == 2 else None

    await eventually(both_parked, timeout=10, what="the poison and the permanent message parked")
    assert handled(subject, "ok") == 1  # flaky, on its third delivery
    # flaky failed twice; poison failed on deliveries 1 to 3 and was parked on the 4th (CONSUMER_MAX_DELIVER).
    assert handled(subject, "retried") == 5
    assert durable_consumers(service_broker)[-1].durable == "worker"
