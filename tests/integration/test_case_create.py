"""CaseApi.create, its Idempotency-Key claims and the reconciliation of unconfirmed creates, over a real nats-server
and the embedded MongoDB: the case API, its worker and the billing service run in this process on this module's
own NATS server (the session's also carries the e2e stack, which answers the same subjects).

The gateway's part (confirming a create by publishing its created command) is played by `confirm` below, the way
`GatewayContext.create_case` does it; the path through the gateway is in tests/faults/test_create_all_or_nothing.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import math
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest
from faststream.nats import NatsBroker
from nats.js.errors import NotFoundError
from pymongo.asynchronous.database import AsyncDatabase

from deploy.processes import NatsServer, private_nats_server
from services.case import handlers
from services.case import worker as worker_handlers
from services.case.agent.rules import RulesAgent
from services.case.model import CaseRecord
from services.case.outbox import OutboxRelay
from services.case.store import INDEXES as CASE_INDEXES
from services.case.store import CaseStore, IdempotencyStore, UnmatchedStore
from services.case.timers import CaseTimers, TimerFired
from services.case.worker import Worker
from shared.clock import now_ms
from shared.contracts import billing, case
from shared.contracts.rpc import Err
from shared.errors import ErrorCode, ServiceError
from shared.messaging.broker import create_broker
from shared.messaging.connection import connect_with_retry, flush_to_server
from shared.messaging.jetstream import ensure_streams, publish_durable
from shared.messaging.rpc import request
from shared.mongo import Document, ensure_indexes
from shared.settings import CaseSettings, load_settings
from shared.subjects import CASE_COMMANDS, CASE_TIMERS, DEADLINE_HEADER, Service, timer_schedule_subject
from simulator.cases import case_body
from tests.support.billing import billing_in_process
from tests.support.case_service import STREAMS
from tests.support.counting import CountedCalls

RPC_TIMEOUT_SECONDS = 1.0
CONFIRM_GRACE_SECONDS = 0.5
UTC_NOW = dt.datetime(2026, 12, 1, 9, 0, 0)


@pytest.fixture(scope="module")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """Overrides the session's server for this module (and so `raw_broker` connects here)."""
    with private_nats_server(Path(tmp_path_factory.mktemp("case-create-nats"))) as server:
        yield server


@dataclass
class CaseService:
    api: handlers.CaseApi
    worker: Worker
    store: CaseStore
    idempotency: IdempotencyStore
    client: NatsBroker


@contextlib.asynccontextmanager
async def case_service(
    nats_server: NatsServer, raw_broker: NatsBroker, mongo_db: AsyncDatabase[Document], *, with_timers: bool
) -> AsyncIterator[CaseService]:
    """The case API, its worker (consumers registered only with timers on) and the billing service."""
    env = {
        "NATS_URL": nats_server.url,
        "RPC_TIMEOUT_SECONDS": str(RPC_TIMEOUT_SECONDS),
        "CREATE_CONFIRM_GRACE_SECONDS": str(CONFIRM_GRACE_SECONDS),
    }
    settings = load_settings(CaseSettings, env)
    await ensure_indexes(mongo_db, CASE_INDEXES)
    async with billing_in_process(mongo_db, env):
        case_broker = create_broker(settings, Service.CASE)
        await connect_with_retry(case_broker)
        js = case_broker.connection.jetstream()
        # With timers the worker consumes too: every stream it reads from.
        streams = [*STREAMS, CASE_TIMERS] if with_timers else [CASE_COMMANDS]
        for spec in streams:
            with contextlib.suppress(NotFoundError):
                await js.delete_stream(spec.name)  # the module's tests share the server: each starts empty
        await ensure_streams(case_broker, streams, replicas=1)
        timers = CaseTimers(case_broker) if with_timers else None
        store = CaseStore(mongo_db)
        relay = OutboxRelay(case_broker, store)
        idempotency = IdempotencyStore(
            mongo_db, ttl=dt.timedelta(hours=24), takeover_grace_ms=int(CONFIRM_GRACE_SECONDS * 1000)
        )
        api = handlers.CaseApi(
            broker=case_broker, store=store, idempotency=idempotency, relay=relay, settings=settings, timers=timers
        )
        handlers.register(api)
        worker = Worker(
            broker=case_broker,
            store=store,
            relay=relay,
            agent=RulesAgent(),
            settings=settings,
            unmatched=UnmatchedStore(mongo_db),
            timers=timers,
        )
        if with_timers:
            worker_handlers.register(worker)
        await case_broker.start()
        await flush_to_server(case_broker.connection)
        try:
            yield CaseService(api=api, worker=worker, store=store, idempotency=idempotency, client=raw_broker)
        finally:
            await case_broker.stop()


@pytest.fixture
async def service(
    nats_server: NatsServer, raw_broker: NatsBroker, mongo_db: AsyncDatabase[Document]
) -> AsyncIterator[CaseService]:
    """Without timers: the tests settle creates themselves (`reconcile_creates`)."""
    async with case_service(nats_server, raw_broker, mongo_db, with_timers=False) as running:
        yield running


@pytest.fixture
async def timed_service(
    nats_server: NatsServer, raw_broker: NatsBroker, mongo_db: AsyncDatabase[Document]
) -> AsyncIterator[CaseService]:
    """As it runs: every case's timer armed on JetStream and the worker consuming commands and fired timers."""
    async with case_service(nats_server, raw_broker, mongo_db, with_timers=True) as running:
        yield running


def create_command(*, client_id: str = "alice", key: str | None = None) -> case.CreateCase:
    return case.CreateCase(
        client_id=client_id, plan="free", case=msgspec.convert(case_body(), case.NewCase), idempotency_key=key
    )


async def create(service: CaseService, command: case.CreateCase) -> case.CreateCaseResult:
    """Ask the case service as the gateway does (request() sends the deadline header)."""
    return await request(service.client, case.CREATE, command, case.CreateCaseResult, timeout=RPC_TIMEOUT_SECONDS)


async def confirm(service: CaseService, case_id: str) -> None:
    await publish_durable(
        service.client,
        case.created_subject(case_id),
        case.CaseCreatedCommand(case_id=case_id),
        stream=CASE_COMMANDS,
        msg_id=case.created_msg_id(case_id),
    )


async def units_used(service: CaseService, client_id: str = "alice") -> int:
    usage = await request(
        service.client, billing.USAGE, billing.GetUsage(client_id=client_id, plan="free"), billing.Usage, timeout=5
    )
    return usage.used


async def test_a_create_stores_one_visible_case_that_waits_for_its_confirmation(service: CaseService) -> None:
    before = now_ms()
    result = await create(service, create_command())
    stored = await service.store.get(result.case_id)
    assert stored is not None
    assert (stored.status, stored.pending_create, stored.outbox, stored.awaiting_send) == ("CREATED", False, [], None)
    # Its confirmation time is the request's deadline plus the grace.
    assert stored.confirm_by is not None
    deadline_plus_grace = int((RPC_TIMEOUT_SECONDS + CONFIRM_GRACE_SECONDS) * 1000)
    assert before + deadline_plus_grace <= stored.confirm_by <= now_ms() + deadline_plus_grace
    assert stored.usage_month is not None
    view = await request(
        service.client, case.GET, case.GetCase(client_id="alice", case_id=result.case_id), case.CaseView, timeout=5
    )
    assert view.status == "CREATED"


async def test_a_request_past_its_deadline_is_dropped_before_anything_is_stored(
    service: CaseService, mongo_db: AsyncDatabase[Document], caplog: pytest.LogCaptureFixture
) -> None:
    command = create_command(key="late")
    with caplog.at_level(logging.INFO):
        reply = await service.client.request(
            command, case.CREATE, timeout=5, headers={DEADLINE_HEADER: str(now_ms() - 1)}
        )
    error = msgspec.json.decode(reply.body, type=Err)
    assert error.code is ErrorCode.SERVICE_UNAVAILABLE
    # Dropped before its handler ran (the shared middleware), or by the create itself.
    assert any(
        record.getMessage().startswith(("create dropped: its deadline passed", "request dropped: its deadline had"))
        for record in caplog.records
    )
    assert await mongo_db.cases.count_documents({}) == 0
    assert await mongo_db.idempotency_keys.count_documents({}) == 0
    assert await units_used(service) == 0


async def test_an_idempotency_claim_is_not_taken_over_before_its_request_can_no_longer_commit(
    service: CaseService,
) -> None:
    keys = service.idempotency
    deadline = 1_000_000
    first = await keys.claim(
        client_id="alice", key="k", request_hash="h", case_id="case-1", deadline_ms=deadline, now=UTC_NOW
    )
    assert (first.outcome, first.case_id) == ("new", "case-1")
    again = await keys.claim(
        client_id="alice", key="k", request_hash="h", case_id="case-2", deadline_ms=deadline + 5, now=UTC_NOW
    )
    assert (again.outcome, again.case_id, again.deadline_ms) == ("existing", "case-1", deadline)
    grace_ms = int(CONFIRM_GRACE_SECONDS * 1000)
    assert not keys.may_take_over(again.deadline_ms, now_ms=deadline)
    assert not keys.may_take_over(again.deadline_ms, now_ms=deadline + grace_ms)
    assert keys.may_take_over(again.deadline_ms, now_ms=deadline + grace_ms + 1)
    # Two late requests race for the key: one takes it over.
    taken = await asyncio.gather(
        *(
            keys.take_over(client_id="alice", key="k", previous_case_id="case-1", case_id=f"case-{n}", deadline_ms=9)
            for n in (2, 3)
        )
    )
    assert sorted(taken) == [False, True]
    mismatch = await keys.claim(
        client_id="alice", key="k", request_hash="other", case_id="case-4", deadline_ms=deadline, now=UTC_NOW
    )
    assert mismatch.outcome == "mismatch"


async def test_a_key_whose_case_is_not_stored_yet_is_409_until_its_deadline_then_taken_over(
    service: CaseService,
) -> None:
    command = create_command(key="in-flight")
    deadline = now_ms() + 300
    # The first request claimed the key and is still reserving (its case is not stored).
    await service.idempotency.claim(
        client_id="alice",
        key="in-flight",
        request_hash=handlers.request_hash(command.case),
        case_id="first-case",
        deadline_ms=deadline,
        now=dt.datetime.now(dt.UTC).replace(tzinfo=None),
    )
    with pytest.raises(ServiceError) as in_use:
        await create(service, command)
    assert in_use.value.code is ErrorCode.IDEMPOTENCY_KEY_IN_USE
    # It says when to come back: once the first request's deadline and the grace have passed (whole seconds).
    assert in_use.value.retry_after_seconds == math.ceil(0.3 + CONFIRM_GRACE_SECONDS)
    await asyncio.sleep((deadline - now_ms()) / 1000 + CONFIRM_GRACE_SECONDS + 0.05)
    result = await create(service, command)
    assert result.replayed is False
    assert result.case_id != "first-case"
    assert await service.store.get(result.case_id) is not None
    replay = await create(service, command)
    assert (replay.case_id, replay.replayed) == (result.case_id, True)


async def test_the_reconciler_starts_a_confirmed_create_and_removes_an_unconfirmed_one(
    service: CaseService,
) -> None:
    confirmed = await create(service, create_command())
    unconfirmed = await create(service, create_command())
    await confirm(service, confirmed.case_id)
    assert await units_used(service) == 2
    # Nothing is settled before the confirmation time.
    assert await service.worker.reconcile_creates() == 0
    await asyncio.sleep(RPC_TIMEOUT_SECONDS + CONFIRM_GRACE_SECONDS + 0.1)
    assert await service.worker.reconcile_creates() == 2
    started = await service.store.get(confirmed.case_id)
    assert started is not None
    assert (started.status, started.awaiting_send) == ("CREATED", 1)
    assert await service.store.get(unconfirmed.case_id) is None
    assert await units_used(service) == 1
    # Idempotent: a second pass finds nothing left to settle.
    assert await service.worker.reconcile_creates() == 0


async def armed_for(service: CaseService, case_id: str) -> int:
    """The time the case's timer on JetStream is armed for."""
    message = await service.worker.broker.connection.jetstream().get_last_msg(
        CASE_TIMERS.name, timer_schedule_subject(case_id)
    )
    return msgspec.json.decode(message.data or b"", type=TimerFired).due_at


async def until(service: CaseService, case_id: str, check: Callable[[CaseRecord | None], bool]) -> CaseRecord | None:
    """The case (None once removed) as soon as `check` holds; the worker runs on its own, so this polls."""
    for _ in range(400):
        record = await service.store.get(case_id)
        if check(record):
            return record
        await asyncio.sleep(0.05)
    raise AssertionError(f"case {case_id} never got there; it is {record}")


def started(record: CaseRecord | None) -> bool:
    return record is not None and record.awaiting_send == 1


async def test_an_unconfirmed_create_is_removed_by_its_timer_at_its_confirmation_time_without_a_scan(
    timed_service: CaseService,
) -> None:
    """No scan of the cases looks for unconfirmed creates (on the embedded server such a scan reads every case):
    each create arms its case's timer for `confirmBy`, and the worker settles that one case when it fires."""
    service = timed_service
    scans = CountedCalls(service.store, "unconfirmed_creates")
    unconfirmed = await create(service, create_command())
    stored = await service.store.get(unconfirmed.case_id)
    assert stored is not None
    assert stored.confirm_by is not None
    assert await armed_for(service, unconfirmed.case_id) == stored.confirm_by
    assert await units_used(service) == 1
    await until(service, unconfirmed.case_id, lambda record: record is None)
    assert await units_used(service) == 0
    assert scans.calls == 0


async def test_a_confirmed_create_is_started_and_its_timer_then_follows_the_case(timed_service: CaseService) -> None:
    service = timed_service
    confirmed = await create(service, create_command())
    await confirm(service, confirmed.case_id)
    running = await until(service, confirmed.case_id, started)
    assert running is not None
    # Its timer now stands for the send's lease, not for the confirmation time (armed right after the write that
    # started the case, which the test may read first): it is never removed.
    assert running.repair_at is not None
    for _ in range(100):
        if await armed_for(service, confirmed.case_id) == running.repair_at:
            break
        await asyncio.sleep(0.05)
    assert await armed_for(service, confirmed.case_id) == running.repair_at
    await asyncio.sleep(RPC_TIMEOUT_SECONDS + CONFIRM_GRACE_SECONDS + 0.5)
    assert await service.store.get(confirmed.case_id) is not None
    assert await units_used(service) == 1


async def test_a_keyed_replay_pushes_the_timer_out_with_the_confirmation_time(timed_service: CaseService) -> None:
    """A replay extends `confirmBy`; the case must not be removed at the earlier time its timer was armed for."""
    service = timed_service
    command = create_command(key="replayed-timer")
    first = await create(service, command)
    before = await service.store.get(first.case_id)
    assert before is not None
    assert before.confirm_by is not None
    await asyncio.sleep(0.3)
    replay = await create(service, command)
    assert (replay.case_id, replay.replayed) == (first.case_id, True)
    extended = await service.store.get(first.case_id)
    assert extended is not None
    assert extended.confirm_by is not None
    assert extended.confirm_by > before.confirm_by
    assert await armed_for(service, first.case_id) == extended.confirm_by
    # Confirmed by the replay's answer in time (the gateway publishes it): started, not removed.
    await confirm(service, first.case_id)
    assert await until(service, first.case_id, lambda record: record is None or started(record)) is not None


async def test_a_keyed_replay_returns_the_case_and_keeps_the_reconciler_from_removing_it(
    service: CaseService,
) -> None:
    command = create_command(key="replayed")
    first = await create(service, command)
    stale = await service.store.get(first.case_id)
    assert stale is not None
    replay = await create(service, command)
    assert (replay.case_id, replay.replayed) == (first.case_id, True)
    fenced = await service.store.get(first.case_id)
    assert fenced is not None
    assert fenced.version == stale.version + 1
    assert fenced.confirm_by is not None
    assert stale.confirm_by is not None
    assert fenced.confirm_by > stale.confirm_by
    # A reconciler that read the case before the replay cannot remove it after.
    assert await service.store.delete_unconfirmed(stale) is False
    assert await service.store.get(first.case_id) is not None
    assert await units_used(service) == 1
