"""The case service's requests run side by side: over a real nats-server and the embedded MongoDB, concurrent
`case.rpc.get`, `case.rpc.list` and `case.rpc.create` requests to one case-service process have several MongoDB
commands in flight at once (counted with PyMongo's command monitoring on the case service's own client), where
one-at-a-time handlers would have exactly one."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest
from faststream.nats import NatsBroker
from pymongo import AsyncMongoClient, monitoring

from deploy.processes import NatsServer, private_nats_server
from services.case import handlers
from services.case.outbox import OutboxRelay
from services.case.store import INDEXES as CASE_INDEXES
from services.case.store import CaseStore, IdempotencyStore
from shared.contracts import case
from shared.errors import ErrorCode, ServiceError
from shared.messaging.broker import create_broker
from shared.messaging.connection import flush_to_server
from shared.messaging.rpc import request
from shared.mongo import Document, ensure_indexes
from shared.settings import CaseSettings, load_settings
from shared.subjects import Service
from simulator.cases import case_body
from tests.support.billing import billing_in_process

CONCURRENT_REQUESTS = 16


@pytest.fixture(scope="module")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """This module's own server: the session's also carries the e2e stack, whose case service answers too."""
    with private_nats_server(Path(tmp_path_factory.mktemp("case-reads-nats"))) as server:
        yield server


class FindsInFlight(monitoring.CommandListener):
    """The most `find` commands on `cases` (and, apart, of any command) sent and not yet answered at one moment."""

    def __init__(self) -> None:
        self.pending: set[int] = set()
        self.most = 0
        self.any_pending: set[int] = set()
        self.most_of_any = 0

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.any_pending.add(event.request_id)
        self.most_of_any = max(self.most_of_any, len(self.any_pending))
        if event.command_name == "find" and event.command.get("find") == "cases":
            self.pending.add(event.request_id)
            self.most = max(self.most, len(self.pending))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        self.pending.discard(event.request_id)
        self.any_pending.discard(event.request_id)

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        self.pending.discard(event.request_id)
        self.any_pending.discard(event.request_id)


@dataclass
class CaseReads:
    client: NatsBroker
    finds: FindsInFlight


@pytest.fixture
async def case_service(nats_server: NatsServer, raw_broker: NatsBroker, mongo_url: str) -> AsyncIterator[CaseReads]:
    finds = FindsInFlight()
    mongo: AsyncMongoClient[Document] = AsyncMongoClient(
        mongo_url, serverSelectionTimeoutMS=5000, event_listeners=[finds]
    )
    db = mongo[f"test_{uuid.uuid4().hex[:12]}"]
    await ensure_indexes(db, CASE_INDEXES)
    settings = load_settings(CaseSettings, {"NATS_URL": nats_server.url})
    # The billing service the creates reserve with, on a MongoDB client of its own (not counted).
    billing_mongo: AsyncMongoClient[Document] = AsyncMongoClient(mongo_url, serverSelectionTimeoutMS=5000)
    billing_db = billing_mongo[db.name]
    try:
        async with billing_in_process(billing_db, {"NATS_URL": nats_server.url}):
            broker = create_broker(settings, Service.CASE)
            store = CaseStore(db)
            handlers.register(
                handlers.CaseApi(
                    broker=broker,
                    store=store,
                    idempotency=IdempotencyStore(db, ttl=dt.timedelta(hours=1), takeover_grace_ms=1000),
                    relay=OutboxRelay(broker, store),
                    settings=settings,
                )
            )
            await broker.start()
            await flush_to_server(broker.connection)
            try:
                yield CaseReads(client=raw_broker, finds=finds)
            finally:
                await broker.stop()
    finally:
        await mongo.drop_database(db.name)
        await mongo.close()
        await billing_mongo.close()


async def test_concurrent_case_reads_query_mongodb_side_by_side(case_service: CaseReads) -> None:
    async def get_case() -> ErrorCode:
        query = case.GetCase(client_id="alice", case_id=str(uuid.uuid4()), include_transcript=False)
        with pytest.raises(ServiceError) as raised:
            await request(case_service.client, case.GET, query, case.CaseView, timeout=10)
        return raised.value.code

    answers = await asyncio.gather(*(get_case() for _ in range(CONCURRENT_REQUESTS)))
    # Each was read and found missing (one query each), none shed or timed out.
    assert answers == [ErrorCode.CASE_NOT_FOUND] * CONCURRENT_REQUESTS
    assert case_service.finds.most >= 2

    case_service.finds.most = 0
    query = case.ListCases(client_id="alice", limit=10)
    pages = await asyncio.gather(
        *(request(case_service.client, case.LIST, query, case.CasePage, timeout=10) for _ in range(CONCURRENT_REQUESTS))
    )
    assert [page.items for page in pages] == [[]] * CONCURRENT_REQUESTS
    assert case_service.finds.most >= 2


async def test_concurrent_creates_write_to_mongodb_side_by_side(case_service: CaseReads) -> None:
    """Each create claims its key, reserves a unit (billing, over NATS) and inserts its case; side by side, a
    replica has several of those commands in flight at once, and every create still gets its own case."""

    async def create(index: int) -> case.CreateCaseResult:
        command = case.CreateCase(
            client_id="alice",
            plan="unlimited",
            case=msgspec.convert(case_body(), case.NewCase),
            idempotency_key=f"side-by-side-{index}",
        )
        return await request(case_service.client, case.CREATE, command, case.CreateCaseResult, timeout=10)

    case_service.finds.most_of_any = 0
    results = await asyncio.gather(*(create(index) for index in range(CONCURRENT_REQUESTS)))
    assert len({result.case_id for result in results}) == CONCURRENT_REQUESTS
    assert not any(result.replayed for result in results)
    assert case_service.finds.most_of_any >= 2
