"""Request/reply and durable consumption through the shared plumbing, against a real nats-server."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator, Iterator

import msgspec
import nats.errors
import pytest
from faststream.nats import NatsBroker
from prometheus_client import REGISTRY
from pymongo.errors import AutoReconnect

from deploy.processes import NatsServer
from shared.contracts.rpc import Ok
from shared.errors import ErrorCode, ServiceError
from shared.failures import Misconfigured, Terminal, Transient
from shared.logs import request_id_var
from shared.messaging.broker import create_broker
from shared.messaging.connection import flush_to_server
from shared.messaging.jetstream import durable_subscriber, ensure_streams, publish_durable
from shared.messaging.middleware import PermanentFailure, retry_policy
from shared.messaging.responder import rpc_subscriber
from shared.messaging.rpc import request
from shared.settings import CommonSettings, load_settings
from shared.subjects import DEADLINE_HEADER, PARKED_MSG_ID_HEADER, REQUEST_ID_HEADER, Service, StreamSpec


class Job(msgspec.Struct):
    job_id: str
    text: str = ""


class Echo(msgspec.Struct):
    text: str
    request_id: str | None


@pytest.fixture
async def service_broker(nats_server: NatsServer) -> AsyncIterator[NatsBroker]:
    settings = load_settings(
        CommonSettings,
        {"NATS_URL": nats_server.url, "CONSUMER_BACKOFF_SECONDS": "0.1,0.2", "CONSUMER_MAX_DELIVER": "4"},
    )
    broker = create_broker(settings, Service.CASE)
    yield broker
    await broker.stop()


class DropLog(logging.Handler):
    """The request id bound when each deadline drop was logged (read at emit time, as the JSON formatter does)."""

    def __init__(self) -> None:
        super().__init__()
        self.request_ids: list[str | None] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("request dropped"):
            self.request_ids.append(request_id_var.get())


@pytest.fixture
def drops(caplog: pytest.LogCaptureFixture) -> Iterator[DropLog]:
    caplog.set_level(logging.INFO, logger="caseflow.messaging")  # drops are logged at INFO
    handler = DropLog()
    logging.getLogger("caseflow.messaging").addHandler(handler)
    yield handler
    logging.getLogger("caseflow.messaging").removeHandler(handler)


@pytest.fixture
def stream(subject_prefix: str) -> StreamSpec:
    return StreamSpec(
        name=f"{subject_prefix}_WORK".upper(), subjects=(f"{subject_prefix}.work.>",), max_age_seconds=600
    )


async def test_request_returns_typed_data_and_carries_the_request_id(
    service_broker: NatsBroker, raw_broker: NatsBroker, subject_prefix: str
) -> None:
    @rpc_subscriber(service_broker, f"{subject_prefix}.rpc.echo", queue="echo")
    async def echo(job: Job) -> Ok[Echo]:
        return Ok(Echo(text=job.text.upper(), request_id=request_id_var.get()))

    await service_broker.start()
    await flush_to_server(service_broker.connection)  # subscriptions reach the server before the first request
    token = request_id_var.set("req-123")
    try:
        reply = await request(raw_broker, f"{subject_prefix}.rpc.echo", Job("j1", "hi"), Echo, timeout=5)
    finally:
        request_id_var.reset(token)
    assert reply == Echo(text="HI", request_id="req-123")


async def test_service_error_and_unexpected_exception_become_error_replies(
    service_broker: NatsBroker, raw_broker: NatsBroker, subject_prefix: str
) -> None:
    @rpc_subscriber(service_broker, f"{subject_prefix}.rpc.lookup", queue="lookup")
    async def lookup(job: Job) -> Ok[Job]:
        if job.job_id == "missing":
            raise ServiceError(ErrorCode.CASE_NOT_FOUND)
        raise RuntimeError("database password is hunter2")

    await service_broker.start()
    await flush_to_server(service_broker.connection)  # subscriptions reach the server before the first request
    with pytest.raises(ServiceError) as missing:
        await request(raw_broker, f"{subject_prefix}.rpc.lookup", Job("missing"), Echo, timeout=5)
    assert missing.value.code is ErrorCode.CASE_NOT_FOUND
    with pytest.raises(ServiceError) as crashed:
        await request(raw_broker, f"{subject_prefix}.rpc.lookup", Job("boom"), Echo, timeout=5)
    assert crashed.value.code is ErrorCode.INTERNAL_ERROR
    assert "hunter2" not in crashed.value.message


async def test_a_reply_that_cannot_be_encoded_is_answered_as_an_internal_error_not_left_to_time_out(
    service_broker: NatsBroker, raw_broker: NatsBroker, subject_prefix: str
) -> None:
    @rpc_subscriber(service_broker, f"{subject_prefix}.rpc.unencodable", queue="unencodable")
    async def unencodable(job: Job) -> Ok[object]:
        return Ok(object())

    await service_broker.start()
    await flush_to_server(service_broker.connection)
    with pytest.raises(ServiceError) as failed:
        await request(raw_broker, f"{subject_prefix}.rpc.unencodable", Job("x"), Echo, timeout=5)
    assert failed.value.code is ErrorCode.INTERNAL_ERROR


async def test_no_responder_and_slow_responder_are_service_unavailable(
    service_broker: NatsBroker, raw_broker: NatsBroker, subject_prefix: str
) -> None:
    @rpc_subscriber(service_broker, f"{subject_prefix}.rpc.slow", queue="slow")
    async def slow(job: Job) -> Ok[Job]:
        await asyncio.sleep(2)
        return Ok(job)

    await service_broker.start()
    await flush_to_server(service_broker.connection)  # subscriptions reach the server before the first request
    with pytest.raises(ServiceError) as nobody:
        await request(raw_broker, f"{subject_prefix}.rpc.nobody", Job("x"), Echo, timeout=1)
    assert nobody.value.code is ErrorCode.SERVICE_UNAVAILABLE
    with pytest.raises(ServiceError) as late:
        await request(raw_broker, f"{subject_prefix}.rpc.slow", Job("x"), Echo, timeout=0.3)
    assert late.value.code is ErrorCode.SERVICE_UNAVAILABLE


async def test_failing_twice_then_succeeding_processes_the_message_exactly_once(
    service_broker: NatsBroker, stream: StreamSpec, subject_prefix: str
) -> None:
    deliveries: list[str] = []
    completed: list[str] = []
    done = asyncio.Event()

    @durable_subscriber(service_broker, subject=f"{subject_prefix}.work.jobs", stream=stream, durable="worker")
    async def work(job: Job) -> None:
        deliveries.append(job.job_id)
        if len(deliveries) <= 2:
            raise ConnectionError("transient failure")
        completed.append(job.job_id)
        done.set()

    await service_broker.connect()
    await ensure_streams(service_broker, [stream], replicas=1)
    await service_broker.start()
    await flush_to_server(service_broker.connection)  # subscriptions reach the server before the first request
    await publish_durable(service_broker, f"{subject_prefix}.work.jobs", Job("job-1"), stream=stream, msg_id="job-1")
    await asyncio.wait_for(done.wait(), timeout=10)
    # Give a wrongly un-acked message time to come back: it must not.
    await asyncio.sleep(1.0)
    assert deliveries == ["job-1", "job-1", "job-1"]
    assert completed == ["job-1"]
    info = await service_broker.connection.jetstream().consumer_info(stream.name, "worker")
    assert info.num_ack_pending == 0
    assert info.num_pending == 0


async def test_poison_message_is_parked_after_max_deliveries_and_permanent_failure_at_once(
    service_broker: NatsBroker, stream: StreamSpec, subject_prefix: str
) -> None:
    attempts: dict[str, int] = {}

    @durable_subscriber(service_broker, subject=f"{subject_prefix}.work.jobs", stream=stream, durable="worker")
    async def work(job: Job) -> None:
        attempts[job.job_id] = attempts.get(job.job_id, 0) + 1
        if job.job_id == "permanent":
            raise PermanentFailure("this can never work")
        raise ValueError("always fails")

    await service_broker.connect()
    await ensure_streams(service_broker, [stream], replicas=1)
    js = service_broker.connection.jetstream()
    parked = await js.subscribe(f"parked.{stream.name}.worker")
    await service_broker.start()
    await flush_to_server(service_broker.connection)  # subscriptions reach the server before the first request
    for job_id in ("poison", "permanent"):
        await publish_durable(service_broker, f"{subject_prefix}.work.jobs", Job(job_id), stream=stream, msg_id=job_id)
    parked_ids = set()
    for _ in range(2):
        message = await parked.next_msg(timeout=10)
        parked_ids.add(msgspec.json.decode(message.data, type=Job).job_id)
        assert message.headers is not None
        assert message.headers["Caseflow-Parked-Subject"] == f"{subject_prefix}.work.jobs"
        assert message.headers[PARKED_MSG_ID_HEADER] == msgspec.json.decode(message.data, type=Job).job_id
    assert parked_ids == {"poison", "permanent"}
    assert attempts == {"poison": 4, "permanent": 1}
    assert (
        REGISTRY.get_sample_value("caseflow_messages_parked_total", {"stream": stream.name, "consumer": "worker"}) == 2
    )
    await parked.unsubscribe()


async def test_poison_failures_are_counted_across_replicas_so_a_restart_does_not_start_the_count_again(
    nats_server: NatsServer, stream: StreamSpec, subject_prefix: str
) -> None:
    """Two replicas of one durable consumer, one after the other (a restart, or a rolling deploy): together they
    see CONSUMER_MAX_DELIVER (4) poison failures and the message is parked. Counted per process, the second
    replica would have started again from zero and the message would have failed 6 times or more."""
    settings = load_settings(
        CommonSettings,
        {"NATS_URL": nats_server.url, "CONSUMER_BACKOFF_SECONDS": "0.5,1", "CONSUMER_MAX_DELIVER": "4"},
    )
    subject = f"{subject_prefix}.work.jobs"
    failures = {"first": 0, "second": 0}
    first_failed_twice = asyncio.Event()

    def replica(name: str) -> NatsBroker:
        broker = create_broker(settings, Service.CASE)

        @durable_subscriber(broker, subject=subject, stream=stream, durable="worker")
        async def work(job: Job) -> None:
            failures[name] += 1
            if failures["first"] == 2:
                first_failed_twice.set()
            raise ValueError("always fails")

        return broker

    first = replica("first")
    await first.connect()
    await ensure_streams(first, [stream], replicas=1)
    parked = await first.connection.jetstream().subscribe(f"parked.{stream.name}.worker")
    await first.start()
    await flush_to_server(first.connection)
    await publish_durable(first, subject, Job("poison"), stream=stream, msg_id="poison")
    await asyncio.wait_for(first_failed_twice.wait(), timeout=15)
    await parked.unsubscribe()
    await first.stop()  # what it counted in memory is gone with it

    second = replica("second")
    await second.connect()
    parked = await second.connection.jetstream().subscribe(f"parked.{stream.name}.worker")
    await second.start()
    try:
        message = await parked.next_msg(timeout=20)
    finally:
        await parked.unsubscribe()
        await second.stop()
    assert msgspec.json.decode(message.data, type=Job).job_id == "poison"
    assert failures["second"] >= 1  # the second replica took part: the count was carried over, not restarted
    assert failures["first"] + failures["second"] == 4


async def test_publish_with_the_same_msg_id_is_stored_once(
    service_broker: NatsBroker, stream: StreamSpec, subject_prefix: str
) -> None:
    await service_broker.connect()
    await ensure_streams(service_broker, [stream], replicas=1)
    for _ in range(3):
        await publish_durable(service_broker, f"{subject_prefix}.work.jobs", Job("same"), stream=stream, msg_id="same")
    info = await service_broker.connection.jetstream().stream_info(stream.name)
    assert info.state.messages == 1


async def test_declaring_streams_twice_is_harmless_and_applies_changes(
    service_broker: NatsBroker, stream: StreamSpec
) -> None:
    await service_broker.connect()
    await ensure_streams(service_broker, [stream], replicas=1)
    changed = StreamSpec(name=stream.name, subjects=stream.subjects, max_age_seconds=1200)
    await ensure_streams(service_broker, [changed], replicas=1)
    info = await service_broker.connection.jetstream().stream_info(stream.name)
    assert info.config.max_age == 1200


async def test_a_handler_slower_than_the_ack_wait_is_kept_alive_not_redelivered(
    nats_server: NatsServer, stream: StreamSpec, subject_prefix: str
) -> None:
    settings = load_settings(CommonSettings, {"NATS_URL": nats_server.url, "CONSUMER_KEEP_ALIVE_SECONDS": "0.3"})
    broker = create_broker(settings, Service.CASE)
    deliveries: list[str] = []
    done = asyncio.Event()

    @durable_subscriber(
        broker,
        subject=f"{subject_prefix}.work.slow",
        stream=stream,
        durable="slow",
        ack_wait_seconds=1.0,
        max_workers=2,  # another worker is free to take a redelivery
    )
    async def slow(job: Job) -> None:
        deliveries.append(job.job_id)
        await asyncio.sleep(3.0)  # three ack waits
        done.set()

    try:
        await broker.connect()
        await ensure_streams(broker, [stream], replicas=1)
        await broker.start()
        await publish_durable(broker, f"{subject_prefix}.work.slow", Job("slow-1"), stream=stream, msg_id="slow-1")
        await asyncio.wait_for(done.wait(), timeout=15)
        await asyncio.sleep(1.5)
        assert deliveries == ["slow-1"]
    finally:
        await broker.stop()


# ---- transient is not poison ------------------------------------------------------------------------------

# Every way a dependency can be away or refuse our configuration, as a handler sees it.
OUTAGES: tuple[Exception, ...] = (
    Transient("agentmail", "503 service_unavailable"),
    Misconfigured("agentmail", "401 unknown_api_key"),
    ServiceError(ErrorCode.SERVICE_UNAVAILABLE),
    AutoReconnect("mongodb is restarting"),
    nats.errors.TimeoutError(),
)


@pytest.fixture
async def fast_broker(nats_server: NatsServer) -> AsyncIterator[NatsBroker]:
    """Parks at the 4th poison failure; redelivers after 0.02 s, 0.04 s, then doubling up to 0.08 s."""
    settings = load_settings(
        CommonSettings,
        {
            "NATS_URL": nats_server.url,
            "CONSUMER_BACKOFF_SECONDS": "0.02,0.04",
            "CONSUMER_BACKOFF_CAP_SECONDS": "0.08",
            "CONSUMER_MAX_DELIVER": "4",
        },
    )
    broker = create_broker(settings, Service.CASE)
    yield broker
    await broker.stop()


def redelivery_delays(records: list[logging.LogRecord]) -> list[float]:
    return [record.retry_in_seconds for record in records if hasattr(record, "retry_in_seconds")]


async def test_a_dependency_failing_more_often_than_max_deliver_is_never_parked_and_the_message_succeeds_once_back(
    fast_broker: NatsBroker, stream: StreamSpec, subject_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="caseflow.messaging")
    outages = itertools.cycle(OUTAGES)
    failures = 32  # eight times CONSUMER_MAX_DELIVER
    deliveries: list[int] = []
    done = asyncio.Event()

    @durable_subscriber(fast_broker, subject=f"{subject_prefix}.work.jobs", stream=stream, durable="worker")
    async def work(job: Job) -> None:
        deliveries.append(1)
        if len(deliveries) <= failures:
            raise next(outages)
        done.set()

    await fast_broker.connect()
    await ensure_streams(fast_broker, [stream], replicas=1)
    js = fast_broker.connection.jetstream()
    parked = await js.subscribe(f"parked.{stream.name}.worker")
    await fast_broker.start()
    await flush_to_server(fast_broker.connection)
    await publish_durable(fast_broker, f"{subject_prefix}.work.jobs", Job("outage"), stream=stream, msg_id="outage")
    await asyncio.wait_for(done.wait(), timeout=30)
    await asyncio.sleep(0.5)  # a wrongly un-acked message would come back within this
    assert len(deliveries) == failures + 1
    with pytest.raises(nats.errors.TimeoutError):
        await parked.next_msg(timeout=0.5)
    info = await js.consumer_info(stream.name, "worker")
    assert (info.num_ack_pending, info.num_pending) == (0, 0)
    # The nak delays the policy chose: the listed steps, then doubling, capped at CONSUMER_BACKOFF_CAP_SECONDS.
    delays = redelivery_delays(caplog.records)
    assert delays == [0.02, 0.04] + [0.08] * (failures - 2)
    assert (
        REGISTRY.get_sample_value("caseflow_messages_parked_total", {"stream": stream.name, "consumer": "worker"})
        is None
    )
    await parked.unsubscribe()


async def test_only_poison_failures_count_toward_parking(
    fast_broker: NatsBroker, stream: StreamSpec, subject_prefix: str
) -> None:
    attempts: list[str] = []

    @durable_subscriber(fast_broker, subject=f"{subject_prefix}.work.jobs", stream=stream, durable="worker")
    async def work(job: Job) -> None:
        attempts.append("outage" if len(attempts) < 6 else "poison")
        if len(attempts) <= 6:
            raise Transient("mongodb", "not reachable")
        raise KeyError("a bug")

    await fast_broker.connect()
    await ensure_streams(fast_broker, [stream], replicas=1)
    js = fast_broker.connection.jetstream()
    parked = await js.subscribe(f"parked.{stream.name}.worker")
    await fast_broker.start()
    await flush_to_server(fast_broker.connection)
    await publish_durable(fast_broker, f"{subject_prefix}.work.jobs", Job("mixed"), stream=stream, msg_id="mixed")
    message = await parked.next_msg(timeout=15)
    assert message.headers is not None
    # Six outage deliveries did not count: parked at the 4th poison failure, the 10th delivery in all.
    assert attempts == ["outage"] * 6 + ["poison"] * 4
    assert message.headers["Caseflow-Parked-Deliveries"] == "10"
    assert message.headers["Caseflow-Parked-Reason"].startswith("KeyError")
    await parked.unsubscribe()


async def test_a_request_handler_failing_on_a_dependency_replies_with_its_kind(
    service_broker: NatsBroker, raw_broker: NatsBroker, subject_prefix: str
) -> None:
    @rpc_subscriber(service_broker, f"{subject_prefix}.rpc.dep", queue="dep")
    async def dependency(job: Job) -> Ok[Job]:
        if job.job_id == "mongo":
            raise AutoReconnect("down")
        if job.job_id == "refused":
            raise Terminal("agentmail", "400 validation_error: bad recipient")
        raise Misconfigured("agentmail", "401 unknown_api_key")

    await service_broker.start()
    await flush_to_server(service_broker.connection)
    for job_id, kind in (("mongo", "transient"), ("key", "misconfigured")):
        with pytest.raises(ServiceError) as failed:
            await request(raw_broker, f"{subject_prefix}.rpc.dep", Job(job_id), Echo, timeout=5)
        assert (failed.value.code, failed.value.kind) == (ErrorCode.SERVICE_UNAVAILABLE, kind)
    with pytest.raises(ServiceError) as refused:
        await request(raw_broker, f"{subject_prefix}.rpc.dep", Job("refused"), Echo, timeout=5)
    assert (refused.value.code, refused.value.kind) == (ErrorCode.INTERNAL_ERROR, "terminal")
    assert refused.value.message == "agentmail refused the request: 400 validation_error: bad recipient"


def test_the_policy_reads_its_cap_from_the_settings() -> None:
    policy = retry_policy(load_settings(CommonSettings, {"CONSUMER_BACKOFF_CAP_SECONDS": "7"}))
    assert policy.delay_after(1000) == 7.0


# ---- admission: deadlines and queue bounds at the handler ---------------------------------------------------


async def test_a_request_already_past_its_deadline_on_arrival_is_refused_and_logged_under_its_request_id(
    service_broker: NatsBroker,
    raw_broker: NatsBroker,
    subject_prefix: str,
    drops: DropLog,
) -> None:
    handled: list[str] = []

    @rpc_subscriber(service_broker, f"{subject_prefix}.rpc.late", queue="late")
    async def late(job: Job) -> Ok[Job]:
        handled.append(job.job_id)
        return Ok(job)

    await service_broker.start()
    await flush_to_server(service_broker.connection)
    # As a request sent before a pause (a stopped process, a long GC) arrives: its deadline is already behind it.
    answer = await raw_broker.connection.request(
        f"{subject_prefix}.rpc.late",
        msgspec.json.encode(Job("late")),
        timeout=5,
        headers={DEADLINE_HEADER: "1", REQUEST_ID_HEADER: "late-request"},
    )
    assert msgspec.json.decode(answer.data)["code"] == "SERVICE_UNAVAILABLE"
    assert handled == []
    assert drops.request_ids == ["late-request"]


async def test_a_request_whose_deadline_passed_while_it_queued_is_answered_without_running_its_handler(
    service_broker: NatsBroker,
    raw_broker: NatsBroker,
    subject_prefix: str,
    drops: DropLog,
) -> None:
    handled: list[str] = []
    release = asyncio.Event()

    @rpc_subscriber(service_broker, f"{subject_prefix}.rpc.blocking", queue="blocking")
    async def blocking(job: Job) -> Ok[Echo]:
        handled.append(job.job_id)
        await release.wait()
        return Ok(Echo(text=job.text, request_id=None))

    await service_broker.start()
    await flush_to_server(service_broker.connection)
    subject = f"{subject_prefix}.rpc.blocking"
    first = asyncio.create_task(request(raw_broker, subject, Job("first"), Echo, timeout=10))
    await asyncio.sleep(0.2)  # the first is being handled; the next queues behind it
    token = request_id_var.set("impatient-request")
    try:
        with pytest.raises(ServiceError) as gave_up:
            await request(raw_broker, subject, Job("impatient"), Echo, timeout=0.3)
    finally:
        request_id_var.reset(token)
    assert gave_up.value.code is ErrorCode.SERVICE_UNAVAILABLE
    dropped_before = REGISTRY.get_sample_value("caseflow_deadline_drops_total", {"subject": subject}) or 0.0
    release.set()
    assert (await first).text == ""
    # The impatient request reaches its handler only after its asker gave up: it is dropped, not handled.
    third = await request(raw_broker, subject, Job("third", "ok"), Echo, timeout=10)
    assert third.text == "ok"
    assert handled == ["first", "third"]
    # The drop is logged under the dropped request's id, like everything done for it.
    assert "impatient-request" in drops.request_ids
    assert REGISTRY.get_sample_value("caseflow_deadline_drops_total", {"subject": subject}) == dropped_before + 1
