"""The case service in-process (API handlers, worker, outbox relay) on real NATS and MongoDB, with a stub
AgentMail adapter: a test double of the adapter *service* answering on the adapter's real subjects.

The stub behaves like the adapter where the case service can tell: sends are idempotent by (case, attempt)
and a reused attempt with another body is refused the way AgentMail answers 409; it keeps every message per
thread for transcripts; a test can hold sends in flight (`hold_sends`) or act just before a send is answered
(`before_answer`). The scheduler is not a background loop here: tests call `worker.run_due()` themselves, so
every repair happens exactly when the test says.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from faststream.nats import NatsBroker
from pymongo.asynchronous.database import AsyncDatabase

from services.case import domain, handlers
from services.case.agent.rules import RulesAgent
from services.case.model import CaseRecord
from services.case.outbox import OutboxRelay
from services.case.store import INDEXES, CaseStore, IdempotencyStore, UnmatchedStore
from services.case.timers import CaseTimers
from services.case.worker import Worker, register
from shared.clock import now_ms
from shared.contracts import agentmail
from shared.contracts import case as case_contracts
from shared.contracts.case import NewCase
from shared.contracts.rpc import Ok
from shared.errors import ErrorCode, ServiceError
from shared.messaging.broker import create_broker
from shared.messaging.connection import connect_with_retry, flush_to_server
from shared.messaging.jetstream import ensure_streams, publish_durable
from shared.messaging.responder import rpc_subscriber
from shared.mongo import Document, ensure_indexes
from shared.settings import CaseSettings, load_settings
from shared.subjects import AGENTMAIL_EVENTS, CASE_COMMANDS, CASE_EVENTS, CASE_TIMERS, PARKED, Service, queue_group

INBOX = "caseflow@stub.example"
CLIENT = "client-1"
STREAMS = (CASE_COMMANDS, CASE_EVENTS, AGENTMAIL_EVENTS, PARKED)


def new_case_body(address: str, **changes: Any) -> NewCase:
    body = {
        "channel": "EMAIL",
        "goal": {"objective": "Collect a signed W-9", "knowledge": {"vendorName": "Northstar"}},
        "counterparty": {"address": address, "name": "Maya Chen"},
        "senderPersona": {"name": "Avery", "role": "Accounts Payable"},
        "maxAttempts": 3,
        "followUpDelayHours": 1,
        "clientWebhookUrl": "https://hooks.example.com/caseflow",
    }
    return msgspec.convert({**body, **changes}, NewCase)


@dataclass
class StubAdapter:
    """The adapter's send, reply and transcript requests, answered from memory."""

    requests: list[agentmail.SendEmail | agentmail.ReplyEmail] = field(default_factory=list)
    bodies: dict[tuple[str, int], str] = field(default_factory=dict)
    conflicts: list[tuple[str, int]] = field(default_factory=list)
    threads: dict[str, list[agentmail.TranscriptMessage]] = field(default_factory=lambda: defaultdict(list))
    thread_of: dict[str, str] = field(default_factory=dict)
    in_flight: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    most_in_flight: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    sends_open: asyncio.Event = field(default_factory=asyncio.Event)
    before_answer: Callable[[agentmail.SendEmail | agentmail.ReplyEmail, str], Awaitable[None]] | None = None

    def __post_init__(self) -> None:
        self.sends_open.set()

    def hold_sends(self) -> None:
        self.sends_open.clear()

    def release_sends(self) -> None:
        self.sends_open.set()

    def attempts(self, case_id: str) -> list[int]:
        return [request.attempt for request in self.requests if request.case_id == case_id]

    @staticmethod
    def first_thread(case_id: str) -> str:
        return f"th-{case_id}-1"

    async def send(self, request: agentmail.SendEmail | agentmail.ReplyEmail, *, thread_id: str) -> agentmail.Sent:
        key = (request.case_id, request.attempt)
        if key in self.bodies and self.bodies[key] != request.text:
            # AgentMail answers 409 for a reused Idempotency-Key with another body.
            self.conflicts.append(key)
            raise ServiceError(ErrorCode.INTERNAL_ERROR, "Idempotency-Key reused with another body")
        self.requests.append(request)
        self.in_flight[request.case_id] += 1
        self.most_in_flight[request.case_id] = max(
            self.most_in_flight[request.case_id], self.in_flight[request.case_id]
        )
        try:
            await self.sends_open.wait()
            if self.before_answer is not None:
                await self.before_answer(request, thread_id)
        finally:
            self.in_flight[request.case_id] -= 1
        message_id = f"<{request.case_id}.{request.attempt}@stub.example>"
        if key not in self.bodies:
            self.bodies[key] = request.text
            self.thread_of[message_id] = thread_id
            subject = request.subject if isinstance(request, agentmail.SendEmail) else "Re: W-9"
            self.threads[thread_id].append(
                agentmail.TranscriptMessage(
                    direction="outbound",
                    message_id=message_id,
                    from_address=INBOX,
                    to=list(request.to or []),
                    subject=subject,
                    text=request.text,
                    at=now_ms(),
                )
            )
        return agentmail.Sent(message_id=message_id, thread_id=thread_id, sent_at=now_ms())

    def register(self, broker: NatsBroker) -> None:
        queue = queue_group(Service.AGENTMAIL_ADAPTER)

        @rpc_subscriber(broker, agentmail.SEND, queue=queue)
        async def send_email(request: agentmail.SendEmail) -> Ok[agentmail.SendOutcome]:
            return Ok(await self.send(request, thread_id=self.first_thread(request.case_id)))

        @rpc_subscriber(broker, agentmail.REPLY, queue=queue)
        async def reply_email(request: agentmail.ReplyEmail) -> Ok[agentmail.SendOutcome]:
            thread_id = self.thread_of.get(request.in_reply_to_message_id, self.first_thread(request.case_id))
            return Ok(await self.send(request, thread_id=thread_id))

        @rpc_subscriber(broker, agentmail.TRANSCRIPT, queue=queue)
        async def transcript(request: agentmail.GetTranscript) -> Ok[agentmail.Transcript]:
            return Ok(agentmail.Transcript(thread_id=request.thread_id, messages=self.threads[request.thread_id]))


@dataclass
class CaseHarness:
    settings: CaseSettings
    broker: NatsBroker  # the case service's
    client: NatsBroker  # the stub adapter's, also used to call the case service like the gateway does
    db: AsyncDatabase[Document]
    store: CaseStore
    relay: OutboxRelay
    worker: Worker
    adapter: StubAdapter

    async def create(self, address: str, **changes: Any) -> str:
        """A case as an answered create leaves it: stored, and its created command published (the gateway
        publishes it once the case service's 201 arrived in time)."""
        case_id = str(uuid.uuid4())
        record = domain.new_case(
            case_id=case_id, client_id=CLIENT, body=new_case_body(address, **changes), now=now_ms()
        )
        await self.store.insert(record)
        await publish_durable(
            self.worker.broker,
            case_contracts.created_subject(case_id),
            case_contracts.CaseCreatedCommand(case_id=case_id),
            stream=CASE_COMMANDS,
            msg_id=case_contracts.created_msg_id(case_id),
        )
        return case_id

    async def case(self, case_id: str) -> CaseRecord:
        record = await self.store.get(case_id)
        assert record is not None
        return record

    async def until(self, case_id: str, check: Callable[[CaseRecord], bool], *, timeout: float = 15.0) -> CaseRecord:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            record = await self.case(case_id)
            if check(record):
                return record
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"case {case_id} never got there; it is {record}")
            await asyncio.sleep(0.05)

    async def running(self, address: str, **changes: Any) -> str:
        case_id = await self.create(address, **changes)
        await self.until(case_id, lambda record: record.status == "RUNNING" and record.attempt_count == 1)
        return case_id

    async def deliver(
        self,
        *,
        thread_id: str,
        text: str,
        from_address: str,
        in_reply_to: str | None = None,
        case_id: str | None = None,
    ) -> agentmail.MessageReceived:
        """A counterparty email as the real adapter hands it over: stored for transcripts, then published."""
        message = agentmail.MessageReceived(
            event_id=f"evt-{uuid.uuid4().hex[:12]}",
            inbox_id=INBOX,
            message_id=f"<in-{uuid.uuid4().hex[:12]}@counterparty.example>",
            thread_id=thread_id,
            from_address=from_address,
            to=[INBOX],
            subject="Re: W-9",
            text=text,
            received_at=now_ms(),
            in_reply_to=in_reply_to,
            case_id=case_id,
        )
        await self.publish(message)
        return message

    async def publish(self, message: agentmail.MessageReceived) -> None:
        self.adapter.thread_of[message.message_id] = message.thread_id
        transcript = self.adapter.threads[message.thread_id]
        if all(entry.message_id != message.message_id for entry in transcript):
            transcript.append(
                agentmail.TranscriptMessage(
                    direction="inbound",
                    message_id=message.message_id,
                    from_address=message.from_address,
                    to=message.to,
                    subject=message.subject,
                    text=message.text,
                    at=message.received_at,
                )
            )
        await publish_durable(
            self.client, agentmail.MESSAGE_RECEIVED, message, stream=AGENTMAIL_EVENTS, msg_id=message.event_id
        )


def case_service(
    nats_url: str, mongo_url: str, db: AsyncDatabase[Document], **overrides: str
) -> contextlib.AbstractAsyncContextManager[CaseHarness]:
    """The case service without timers on JetStream: tests call `worker.run_due()` themselves."""
    return _case_service(nats_url, mongo_url, db, overrides, with_timers=False)


def timed_case_service(
    nats_url: str, mongo_url: str, db: AsyncDatabase[Document], **overrides: str
) -> contextlib.AbstractAsyncContextManager[CaseHarness]:
    """The case service arming each case's timer on JetStream and consuming the fired ones, as it runs."""
    return _case_service(nats_url, mongo_url, db, overrides, with_timers=True)


@contextlib.asynccontextmanager
async def _case_service(
    nats_url: str, mongo_url: str, db: AsyncDatabase[Document], overrides: dict[str, str], *, with_timers: bool
) -> AsyncIterator[CaseHarness]:
    environment = {
        "NATS_URL": nats_url,
        "MONGO_URL": mongo_url,
        "MONGO_DB": db.name,
        "CONSUMER_BACKOFF_SECONDS": "0.1,0.2,0.5",
        "THREAD_MATCH_RETRY_SECONDS": "0.2,0.4,0.8,1.6",
        "FOLLOW_UP_HOUR_SECONDS": "3600",
        "RPC_TIMEOUT_SECONDS": "5",
        **overrides,
    }
    settings = load_settings(CaseSettings, environment)
    broker = create_broker(settings, Service.CASE)
    client = create_broker(settings, Service.AGENTMAIL_ADAPTER)
    await connect_with_retry(broker)
    js = broker.connection.jetstream()
    # Each test starts from empty streams and consumers (the server is shared by the module's tests).
    streams = (*STREAMS, CASE_TIMERS) if with_timers else STREAMS
    for spec in streams:
        with contextlib.suppress(Exception):
            await js.delete_stream(spec.name)
    await ensure_streams(broker, streams, replicas=1)
    timers = CaseTimers(broker) if with_timers else None
    await ensure_indexes(db, INDEXES, attempts=1)
    store = CaseStore(db)
    relay = OutboxRelay(broker, store)
    handlers.register(
        handlers.CaseApi(
            broker=broker,
            store=store,
            idempotency=IdempotencyStore(
                db, ttl=dt.timedelta(hours=24), takeover_grace_ms=int(settings.create_confirm_grace_seconds * 1000)
            ),
            relay=relay,
            settings=settings,
            timers=timers,
        )
    )
    worker = Worker(
        broker=broker,
        store=store,
        relay=relay,
        agent=RulesAgent(),
        settings=settings,
        unmatched=UnmatchedStore(db),
        timers=timers,
    )
    register(worker)
    adapter = StubAdapter()
    adapter.register(client)
    await client.start()
    await broker.start()
    await flush_to_server(client.connection)
    await flush_to_server(broker.connection)
    try:
        yield CaseHarness(
            settings=settings,
            broker=broker,
            client=client,
            db=db,
            store=store,
            relay=relay,
            worker=worker,
            adapter=adapter,
        )
    finally:
        adapter.release_sends()
        await broker.stop()
        await client.stop()
