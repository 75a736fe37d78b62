"""The webhook service as a process: case events from JetStream become signed, retried, recorded deliveries to
real HTTP receivers on loopback, through kills and restarts, with two replicas, and behind the SSRF guard.

Every test starts webhook-service processes of its own (settings differ per test) on the rig's NATS server,
with the real auth service for signing secrets, and reads the delivery records from MongoDB.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from faststream.nats import NatsBroker
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from standardwebhooks.webhooks import WebhookVerificationError

from deploy.processes import free_port
from shared.contracts.case import CaseEvent
from shared.mongo import Document
from tests.support.receivers import Receivers, Reply
from tests.support.simulator import eventually
from tests.support.webhook import (
    WebhookRig,
    WebhookService,
    completed_event,
    documented_bodies,
    documented_events,
    publish_events,
    verified,
)

Json = dict[str, Any]

# Fast settings for tests; each test overrides what it is about.
FAST: dict[str, str] = {
    "WEBHOOK_ALLOW_PRIVATE": "true",
    "WEBHOOK_RETRY_SCHEDULE_SECONDS": "0,0.2,0.4",
    "WEBHOOK_TIMEOUT_SECONDS": "1",
    "WEBHOOK_POLL_SECONDS": "0.2",
    "WEBHOOK_CLAIM_LEASE_SECONDS": "3",
    "WEBHOOK_ACK_WAIT_SECONDS": "2",
    "CONSUMER_BACKOFF_SECONDS": "0.2",
}


@pytest.fixture(scope="module")
def rig(log_dir: Path, mongo_url: str) -> Iterator[WebhookRig]:
    work_dir = log_dir / "webhook_rig"
    work_dir.mkdir(exist_ok=True)
    running = WebhookRig(work_dir=work_dir, mongo_url=mongo_url)
    running.start()
    yield running
    running.stop()


@pytest.fixture
async def rig_broker(rig: WebhookRig) -> AsyncIterator[NatsBroker]:
    from fast_depends.msgspec import MsgSpecSerializer

    broker = NatsBroker(rig.nats.url, serializer=MsgSpecSerializer())
    await broker.connect()
    yield broker
    await broker.stop()


@pytest.fixture
def client(rig: WebhookRig) -> Json:
    return rig.new_client()


@pytest.fixture
async def db(mongo_url: str) -> AsyncIterator[AsyncDatabase[Document]]:
    """The webhook services' database for one test (each test's deliveries are its own)."""
    mongo: AsyncMongoClient[Document] = AsyncMongoClient(mongo_url)
    database = mongo[f"webhook_{uuid.uuid4().hex[:10]}"]
    yield database
    await mongo.drop_database(database.name)
    await mongo.close()


@pytest.fixture
def receivers() -> Iterator[Receivers]:
    opened = Receivers()
    yield opened
    opened.close()


@dataclass
class Harness:
    """What a test drives: the rig, a broker on its NATS, this test's database, receivers and a client."""

    rig: WebhookRig
    broker: NatsBroker
    db: AsyncDatabase[Document]
    receivers: Receivers
    client: Json
    services: list[WebhookService] = field(default_factory=list)

    async def start_service(self, **env: str) -> WebhookService:
        service = self.rig.webhook_service(mongo_db=self.db.name, **{**FAST, **env})
        self.services.append(service)
        await service.start()
        return service

    @property
    def secret(self) -> str:
        secret: str = self.client["webhookSecret"]
        return secret

    def event(self, url: str) -> CaseEvent:
        return completed_event(self.client["clientId"], url)

    async def publish(self, events: list[CaseEvent]) -> None:
        await publish_events(self.broker, events)

    async def delivery(self, event_id: str) -> Json | None:
        return await self.db.deliveries.find_one({"_id": event_id})

    async def settled(self, event_id: str, *, timeout: float = 20.0) -> Json:
        """The delivery record once it has left `pending` (delivered, failed or gone)."""

        async def finished() -> Json | None:
            record = await self.delivery(event_id)
            return record if record is not None and record["state"] != "pending" else None

        return await eventually(finished, timeout=timeout, what=f"delivery of {event_id} to finish")


@pytest.fixture
async def hooks(
    rig: WebhookRig, rig_broker: NatsBroker, db: AsyncDatabase[Document], receivers: Receivers, client: Json
) -> AsyncIterator[Harness]:
    harness = Harness(rig=rig, broker=rig_broker, db=db, receivers=receivers, client=client)
    yield harness
    for service in harness.services:
        service.stop()


def statuses(record: Json) -> list[int | None]:
    return [attempt["status"] for attempt in record["attempts"]]


async def test_each_event_type_arrives_signed_and_exactly_as_offload_documents_it(hooks: Harness) -> None:
    await hooks.start_service()
    receiver = hooks.receivers.open()
    events = documented_events(hooks.client["clientId"], receiver.url())
    await hooks.publish(list(events.values()))

    received = await receiver.wait_for(4)
    expected = documented_bodies(next(iter(events.values())).data.case_id)
    by_type = {verified(r, hooks.secret)["event_type"]: r for r in received}
    assert set(by_type) == set(expected)
    for event_type, request in by_type.items():
        body = verified(request, hooks.secret)
        assert body == expected[event_type]
        assert request.headers["webhook-id"] == body["event_id"] == events[event_type].event_id
        assert request.headers["content-type"] == "application/json"
        assert request.headers["webhook-signature"].startswith("v1,")
        record = await hooks.settled(body["event_id"])
        assert record["state"] == "delivered"
        [attempt] = record["attempts"]
        assert attempt["status"] == 200
        assert attempt["error"] is None
        assert isinstance(attempt["at"], int)
        assert isinstance(attempt["latencyMs"], int)
        assert attempt["latencyMs"] >= 0
        assert (record["caseId"], record["clientId"]) == (body["data"]["caseId"], hooks.client["clientId"])


async def test_a_rotated_secret_signs_the_next_delivery(hooks: Harness) -> None:
    await hooks.start_service()
    receiver = hooks.receivers.open()
    await hooks.publish([hooks.event(receiver.url())])
    [before] = await receiver.wait_for(1)
    verified(before, hooks.secret)

    new_secret = await hooks.rig.rotate_secret(hooks.client["clientId"])
    assert new_secret != hooks.secret
    await hooks.publish([hooks.event(receiver.url())])
    after = (await receiver.wait_for(2))[1]
    verified(after, new_secret)
    with pytest.raises(WebhookVerificationError):
        verified(after, hooks.secret)


async def test_non_2xx_and_timeouts_are_retried_on_the_schedule_until_a_2xx(hooks: Harness) -> None:
    await hooks.start_service(WEBHOOK_RETRY_SCHEDULE_SECONDS="0,0.2,0.2,0.2,0.2")
    # 500, then an answer later than WEBHOOK_TIMEOUT_SECONDS (1 s), then 503, then 204.
    receiver = hooks.receivers.open(Reply(500), Reply(200, delay_seconds=3), Reply(503), Reply(204))
    event = hooks.event(receiver.url())
    await hooks.publish([event])

    record = await hooks.settled(event.event_id)
    assert record["state"] == "delivered"
    assert statuses(record) == [500, None, 503, 204]
    assert [a["error"] for a in record["attempts"]] == [
        "HTTP 500: not a 2xx response",
        "timeout",
        "HTTP 503: not a 2xx response",
        None,
    ]
    assert record["attempts"][1]["latencyMs"] >= 1000
    times = [a["at"] for a in record["attempts"]]
    assert times == sorted(times)
    received = receiver.received
    assert len(received) == 4
    # Every attempt carries the same id and body, each signed for its own attempt.
    assert {r.headers["webhook-id"] for r in received} == {event.event_id}
    assert {r.body for r in received} == {received[0].body}
    for request in received:
        verified(request, hooks.secret)


async def test_an_unreachable_endpoint_is_retried_until_the_schedule_runs_out(hooks: Harness) -> None:
    await hooks.start_service()
    event = hooks.event(f"http://127.0.0.1:{free_port()}/hook")
    await hooks.publish([event])

    record = await hooks.settled(event.event_id)
    assert record["state"] == "failed"
    assert record["nextAttemptAt"] is None
    assert statuses(record) == [None, None, None]
    # The client's log says what it may know; the refused port is not echoed back.
    assert {a["error"] for a in record["attempts"]} == {"connection failed"}


async def test_410_gone_stops_retrying(hooks: Harness) -> None:
    await hooks.start_service()
    receiver = hooks.receivers.open(default=Reply(410))
    event = hooks.event(receiver.url())
    await hooks.publish([event])

    record = await hooks.settled(event.event_id)
    assert record["state"] == "gone"
    assert statuses(record) == [410]
    assert record["nextAttemptAt"] is None
    assert len(receiver.received) == 1


async def test_redirects_are_failures_and_never_followed(hooks: Harness) -> None:
    await hooks.start_service()
    elsewhere = hooks.receivers.open()
    redirecting = hooks.receivers.open(default=Reply(302, location=elsewhere.url()))
    event = hooks.event(redirecting.url())
    await hooks.publish([event])

    record = await hooks.settled(event.event_id)
    assert record["state"] == "failed"
    assert statuses(record) == [302, 302, 302]
    assert {a["error"] for a in record["attempts"]} == {"HTTP 302: redirects are not followed"}
    assert len(redirecting.received) == 3
    assert elsewhere.received == []


@pytest.mark.slow
async def test_the_schedule_survives_a_kill_of_the_webhook_service(hooks: Harness) -> None:
    # The third attempt is due 3 s after the second: time enough to kill the service in between.
    service = await hooks.start_service(WEBHOOK_RETRY_SCHEDULE_SECONDS="0,0.2,3")
    receiver = hooks.receivers.open(Reply(500), Reply(500), default=Reply(200))
    event = hooks.event(receiver.url())
    await hooks.publish([event])

    async def failed_twice() -> Json | None:
        record = await hooks.delivery(event.event_id)
        return record if record is not None and len(record["attempts"]) == 2 else None

    await eventually(failed_twice, what="two failed attempts")
    service.kill()
    stored = await hooks.delivery(event.event_id)
    assert stored is not None
    assert (stored["state"], statuses(stored)) == ("pending", [500, 500])

    await service.start()
    record = await hooks.settled(event.event_id)
    assert record["state"] == "delivered"
    assert statuses(record) == [500, 500, 200]
    assert [r.headers["webhook-id"] for r in receiver.received] == [event.event_id] * 3


@pytest.mark.slow
async def test_an_attempt_cut_short_by_a_killed_replica_is_retried_after_its_lease(hooks: Harness) -> None:
    service = await hooks.start_service(WEBHOOK_TIMEOUT_SECONDS="20", WEBHOOK_CLAIM_LEASE_SECONDS="3")
    # The first request hangs; the service dies while waiting for it.
    receiver = hooks.receivers.open(Reply(200, delay_seconds=15), default=Reply(200))
    event = hooks.event(receiver.url())
    await hooks.publish([event])
    await receiver.wait_for(1)
    service.kill()
    stored = await hooks.delivery(event.event_id)
    assert stored is not None
    assert (stored["state"], stored["attempts"], stored["claim"] is not None) == ("pending", [], True)

    await service.start()
    record = await hooks.settled(event.event_id)
    assert record["state"] == "delivered"
    assert statuses(record) == [200]
    assert [r.headers["webhook-id"] for r in receiver.received] == [event.event_id] * 2


async def test_a_graceful_stop_lets_the_attempt_in_flight_finish_and_be_recorded(hooks: Harness) -> None:
    service = await hooks.start_service(WEBHOOK_TIMEOUT_SECONDS="10")
    receiver = hooks.receivers.open(Reply(200, delay_seconds=1.5))
    event = hooks.event(receiver.url())
    await hooks.publish([event])
    await receiver.wait_for(1)
    assert await asyncio.to_thread(service.stop) == 0

    stored = await hooks.delivery(event.event_id)
    assert stored is not None
    assert (stored["state"], statuses(stored)) == ("delivered", [200])


async def test_two_replicas_never_send_the_same_attempt_twice(hooks: Harness) -> None:
    await hooks.start_service()
    await hooks.start_service()
    receiver = hooks.receivers.open()
    events = [hooks.event(receiver.url()) for _ in range(40)]
    await hooks.publish(events)

    records = [await hooks.settled(event.event_id) for event in events]
    assert {r["state"] for r in records} == {"delivered"}
    assert [len(r["attempts"]) for r in records] == [1] * 40
    # Nothing is pending any more, so nothing else can arrive: exactly one request per event.
    ids = [r.headers["webhook-id"] for r in receiver.received]
    assert sorted(ids) == sorted(e.event_id for e in events)


@pytest.mark.slow
async def test_a_burst_of_100_events_survives_a_kill_and_each_arrives_at_least_once(hooks: Harness) -> None:
    service = await hooks.start_service()
    receiver = hooks.receivers.open()
    events = [hooks.event(receiver.url()) for _ in range(100)]
    publishing = asyncio.create_task(hooks.publish(events))

    async def consuming() -> int | None:
        stored = await hooks.db.deliveries.count_documents({})
        return stored if stored >= 5 else None

    # Killed first while events are still being taken from JetStream (some stored, few or none sent), then
    # again while they are being sent.
    await eventually(consuming, what="the first deliveries to be stored")
    service.kill()
    await publishing
    await service.start()
    await receiver.wait_for(30)
    service.kill()
    assert len(receiver.received) < 100, "the kill came too late to test anything"
    await service.start()
    expected_ids = {e.event_id for e in events}

    async def all_arrived() -> set[str] | None:
        ids = {r.headers["webhook-id"] for r in receiver.received}
        return ids if ids >= expected_ids else None

    await eventually(all_arrived, timeout=60, what="all 100 events")
    by_id: dict[str, list[bytes]] = defaultdict(list)
    for request in receiver.received:
        body = verified(request, hooks.secret)
        assert body["event_id"] == request.headers["webhook-id"]
        by_id[request.headers["webhook-id"]].append(request.body)
    assert set(by_id) == expected_ids
    # A duplicate is the same event: same webhook-id and byte-identical body, so clients can drop it.
    assert all(len(set(bodies)) == 1 for bodies in by_id.values())
    assert await hooks.db.deliveries.count_documents({"state": "delivered"}) == 100


async def test_private_destinations_are_refused_recorded_and_never_called(hooks: Harness) -> None:
    service = await hooks.start_service(WEBHOOK_ALLOW_PRIVATE="false")
    receiver = hooks.receivers.open()
    port = receiver.port
    refused = {
        "http://10.0.0.1/hook": "10.0.0.1 is a private address",
        "http://172.16.0.1/hook": "172.16.0.1 is a private address",
        "http://192.168.1.1/hook": "192.168.1.1 is a private address",
        f"http://127.0.0.1:{port}/hook": "127.0.0.1 is a loopback address",
        "http://169.254.169.254/latest/meta-data": "169.254.169.254 is a link-local address",
        f"http://0.0.0.0:{port}/hook": "0.0.0.0 is an unspecified address",
        f"http://[::1]:{port}/hook": "::1 is a loopback address",
        "http://[fe80::1]/hook": "fe80::1 is a link-local address",
        "http://[fd00::1]/hook": "fd00::1 is a private address",
        f"http://[::ffff:127.0.0.1]:{port}/hook": "::ffff:127.0.0.1 is a loopback address (IPv4 127.0.0.1 inside IPv6)",
        f"http://localhost:{port}/hook": "localhost resolves to ",
    }
    events: dict[str, CaseEvent] = {url: hooks.event(url) for url in refused}
    await hooks.publish(list(events.values()))

    outcomes: dict[str, tuple[str, list[int | None], str]] = {}
    for url, event in events.items():
        record = await hooks.settled(event.event_id)
        [attempt] = record["attempts"]
        outcomes[url] = (record["state"], statuses(record), attempt["error"])
    # The client's delivery log never names the resolved address (it could map the internal network with it)...
    assert outcomes == {url: ("failed", [None], "destination not allowed or not resolvable") for url in refused}
    # ...while the service's own log keeps the reason for the operator.
    details: dict[str, str] = {
        str(line["event_id"]): str(line.get("detail") or "")
        for line in service.process.json_log_lines()
        if line.get("msg") == "webhook attempt recorded"
    }
    for url, event in events.items():
        assert details[event.event_id].startswith(f"destination refused: {refused[url]}"), (url, details)
    assert "a loopback address" in details[events[f"http://localhost:{port}/hook"].event_id]
    assert receiver.received == []
