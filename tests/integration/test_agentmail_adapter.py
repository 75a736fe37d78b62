"""The AgentMail adapter's NATS requests and webhook ingestion, against real NATS, MongoDB and the simulator.

The adapter's handlers run in-process on a broker of their own (a fresh database per test); the gateway runs
in-process under uvicorn; the simulator is a process whose webhooks go to that gateway. This module has its own
nats-server so that no other adapter (the e2e stack's) answers its requests or publishes to its stream.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import httpx
import msgspec
import pytest
import uvicorn
from fast_depends.msgspec import MsgSpecSerializer
from faststream.nats import NatsBroker
from nats.js.errors import NotFoundError
from prometheus_client import REGISTRY
from pymongo.asynchronous.database import AsyncDatabase
from svix.webhooks import Webhook

from deploy.processes import NatsServer, Simulator, free_port
from services.agentmail_adapter.bounds import MESSAGE_TEXT_MAX_BYTES, SUBJECT_MAX_CHARS
from services.agentmail_adapter.client import AgentMailClient
from services.agentmail_adapter.handlers import AgentMailApi, attempt_label, register
from services.agentmail_adapter.model import StoredMessage
from services.agentmail_adapter.store import (
    HANDLED_EVENT_TTL,
    INBOUND_EVENTS,
    INDEXES,
    MESSAGES,
    MessageStore,
)
from services.agentmail_adapter.webhooks import WebhookVerifier
from services.gateway.app import create_app
from shared.blobs import object_bucket
from shared.contracts.agentmail import (
    ATTACHMENT_LINK,
    DELIVERY_EVENT,
    MESSAGE_RECEIVED,
    REPLY,
    SEND,
    TRANSCRIPT,
    AttachmentLink,
    DeliveryEvent,
    GetAttachmentLink,
    GetTranscript,
    MessageReceived,
    Rejected,
    ReplyEmail,
    SendEmail,
    SendOutcome,
    Sent,
    Transcript,
)
from shared.errors import ErrorCode, ServiceError
from shared.failures import DEPENDENCY_PROBLEMS
from shared.messaging.broker import create_broker
from shared.messaging.jetstream import ensure_streams
from shared.messaging.rpc import request
from shared.mongo import Document, ensure_indexes
from shared.settings import AgentMailSettings, GatewaySettings, load_settings
from shared.subjects import AGENTMAIL_EVENTS, AGENTMAIL_INGRESS_BODIES, Service
from shared.transcript_budget import TRANSCRIPT_MAX_BYTES
from tests.support.simulator import (
    INBOX,
    WEBHOOK_SECRET,
    SimulatorControl,
    eventually,
    published,
    running_simulator,
)

type Json = dict[str, Any]

GATEWAY_PORT = free_port()
GATEWAY_URL = f"http://127.0.0.1:{GATEWAY_PORT}"


@pytest.fixture(scope="module")
def nats(log_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = NatsServer(log_dir=log_dir, store_dir=tmp_path_factory.mktemp("agentmail_jetstream"))
    server.log_path = log_dir / "nats_agentmail_adapter.log"
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def simulator(log_dir: Path) -> Iterator[Simulator]:
    with running_simulator(log_dir, webhook_url=f"{GATEWAY_URL}/webhooks/agentmail") as running:
        yield running


@pytest.fixture(scope="module")
async def gateway(nats: NatsServer, mongo_url: str) -> AsyncIterator[httpx.AsyncClient]:
    settings = load_settings(
        # server_url: the gateway and the adapter connect as their own NATS users, with their own permissions.
        GatewaySettings,
        {"NATS_URL": nats.server_url, "MONGO_URL": mongo_url, "GATEWAY_PORT": str(GATEWAY_PORT)},
    )
    app = create_app(settings, create_broker(settings, Service.GATEWAY))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=GATEWAY_PORT, log_config=None, lifespan="on"))
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 (uvicorn exposes a flag, not an event)
        await asyncio.sleep(0.02)
    async with httpx.AsyncClient(base_url=GATEWAY_URL, timeout=15) as client:
        yield client
    server.should_exit = True
    await task


@pytest.fixture
async def sim(simulator: Simulator) -> AsyncIterator[SimulatorControl]:
    control = SimulatorControl(simulator.url)
    await control.reset()
    yield control
    await control.aclose()


@pytest.fixture
async def adapter(
    nats: NatsServer, simulator: Simulator, mongo_url: str, mongo_db: AsyncDatabase[Document]
) -> AsyncIterator[MessageStore]:
    """The adapter's handlers on their own broker, as `python -m services.agentmail_adapter` wires them."""
    settings = load_settings(
        AgentMailSettings,
        {
            "NATS_URL": nats.server_url,
            "MONGO_URL": mongo_url,
            "AGENTMAIL_BASE_URL": simulator.url,
            "AGENTMAIL_MAX_RETRIES": "1",
            "AGENTMAIL_RETRY_BASE_SECONDS": "0.01",
        },
    )
    broker = create_broker(settings, Service.AGENTMAIL_ADAPTER)
    mail = AgentMailClient(settings)
    store = MessageStore(mongo_db)
    register(
        AgentMailApi(
            broker=broker,
            mail=mail,
            store=store,
            verifier=WebhookVerifier(settings.agentmail_webhook_secret),
            settings=settings,
        )
    )
    await ensure_indexes(mongo_db, INDEXES)
    await broker.connect()
    await ensure_streams(broker, [AGENTMAIL_EVENTS], replicas=1)
    await broker.start()
    yield store
    await broker.stop()
    await mail.aclose()


@pytest.fixture
async def client(nats: NatsServer) -> AsyncIterator[NatsBroker]:
    broker = NatsBroker(nats.url, serializer=MsgSpecSerializer())
    await broker.connect()
    yield broker
    await broker.stop()


async def ask[T](client: NatsBroker, subject: str, payload: msgspec.Struct, reply_type: type[T]) -> T:
    return await request(client, subject, payload, reply_type, timeout=15)


async def send_or_reply(client: NatsBroker, subject: str, payload: SendEmail | ReplyEmail) -> SendOutcome:
    """SEND or REPLY; their reply type is a union, which `request`'s `type[T]` parameter cannot spell."""
    return await ask(client, subject, payload, cast("type[Sent | Rejected]", SendOutcome))


async def events_for(client: NatsBroker, event_id: str) -> list[MessageReceived]:
    return [e for e in await published(client, MESSAGE_RECEIVED, MessageReceived) if e.event_id == event_id]


def first_email(case_id: str, to: str = "someone@example.com", attempt: int = 1) -> SendEmail:
    return SendEmail(case_id=case_id, attempt=attempt, to=[to], subject="Signed W-9", text="Could you send your W-9?")


def signed(body: bytes, *, at: datetime | None = None, secret: str = WEBHOOK_SECRET) -> dict[str, str]:
    msg_id = f"msg_{uuid.uuid4().hex}"
    moment = at or datetime.now(UTC)
    return {
        "svix-id": msg_id,
        "svix-timestamp": str(int(moment.timestamp())),
        "svix-signature": Webhook(secret).sign(msg_id, moment, body.decode()),
        "content-type": "application/json",
    }


def received_webhook(**message: Any) -> tuple[str, bytes]:
    """A `message.received` body as AgentMail sends it; `message` overrides fields of the message."""
    event_id = uuid.uuid4().hex
    thread_id = str(uuid.uuid4())
    body = {
        "type": "event",
        "event_type": "message.received",
        "event_id": event_id,
        "message": {
            "inbox_id": INBOX,
            "thread_id": thread_id,
            "message_id": f"<{uuid.uuid4()}@mail.example.com>",
            "labels": ["received", "unread"],
            "timestamp": "2026-09-01T10:00:00.250Z",
            "from": "Jane Lead <jane@example.com>",
            "from_": "Jane Lead <jane@example.com>",
            "to": [INBOX],
            "subject": "Re: Signed W-9",
            "text": "Sure.\n\n> quoted",
            "extracted_text": "Sure.",
            "size": 10,
            "updated_at": "2026-09-01T10:00:00.250Z",
            "created_at": "2026-09-01T10:00:00.250Z",
            "organization_id": "an undeclared field",
            **message,
        },
        "thread": {"inbox_id": INBOX, "thread_id": thread_id, "message_count": 1},
    }
    return event_id, json.dumps(body).encode()


# ---- requests ---------------------------------------------------------------------------------------------


async def test_send_email__sends_once_records_it_and_a_repeat_is_answered_from_the_store(
    adapter: MessageStore, client: NatsBroker, sim: SimulatorControl
) -> None:
    sent = await send_or_reply(client, SEND, first_email("case-a"))
    assert isinstance(sent, Sent)
    again = await send_or_reply(client, SEND, first_email("case-a"))
    assert again == sent
    [email] = await sim.outbox()
    assert email["message_id"] == sent.message_id
    assert [c["idempotency_key"] for c in await sim.calls("send")] == ["case-a.1"]
    stored = await adapter.find(sent.message_id)
    assert stored is not None
    assert (stored.direction, stored.thread_id, stored.case_id, stored.attempt) == (
        "outbound",
        sent.thread_id,
        "case-a",
        1,
    )
    assert (stored.from_address, stored.to, stored.subject) == (INBOX, ["someone@example.com"], "Signed W-9")


async def test_an_email_agentmail_sent_without_our_record_is_recorded_from_message_sent_under_its_label(
    adapter: MessageStore, sim: SimulatorControl, gateway: httpx.AsyncClient
) -> None:
    """What a lost answer leaves: AgentMail sent the email, the adapter never heard back. Its `message.sent`
    webhook records it under the (case, attempt) its label names; mail without the label is no case's."""
    labelled = await sim.api.post(
        f"/inboxes/{INBOX}/messages/send",
        json={"to": ["lost@example.com"], "subject": "W-9", "text": "Send it?", "labels": [attempt_label("case-x", 3)]},
        headers={"Idempotency-Key": "case-x.3"},
    )
    unlabelled = await sim.api.post(
        f"/inboxes/{INBOX}/messages/send", json={"to": ["other@example.com"], "subject": "Hi", "text": "No case's."}
    )
    assert labelled.status_code == 200, labelled.text
    assert unlabelled.status_code == 200, unlabelled.text
    sent_id, other_id = labelled.json()["message_id"], unlabelled.json()["message_id"]
    stored = await eventually(lambda: adapter.find(sent_id), what="the email recorded from message.sent")
    assert (stored.direction, stored.case_id, stored.attempt, stored.thread_id) == (
        "outbound",
        "case-x",
        3,
        labelled.json()["thread_id"],
    )
    assert (stored.to, stored.subject, stored.text) == (["lost@example.com"], "W-9", "Send it?")
    assert await adapter.sent_for_attempt("case-x", 3) == stored  # a repeated send is answered from it

    async def unlabelled_event_handled() -> bool | None:
        deliveries = await sim.deliveries()
        handled = [d for d in deliveries if d["event_type"] == "message.sent" and other_id in d["body"]]
        return True if handled and all(d["delivered"] for d in handled) else None

    await eventually(unlabelled_event_handled, what="the unlabelled email's message.sent acknowledged")
    assert await adapter.find(other_id) is None


async def an_email_we_have_no_record_of(
    adapter: MessageStore, mongo_db: AsyncDatabase[Document], sim: SimulatorControl, case_id: str
) -> Json:
    """A labelled email AgentMail sent for (case_id, 1) while the adapter holds no record of it: the state a
    delivery event or a reply is in when it beats both the send's answer (lost) and its `message.sent`."""
    response = await sim.api.post(
        f"/inboxes/{INBOX}/messages/send",
        json={
            "to": ["vendor@example.com"],
            "subject": "W-9",
            "text": "Send it?",
            "labels": [attempt_label(case_id, 1)],
        },
        headers={"Idempotency-Key": f"{case_id}.1"},
    )
    assert response.status_code == 200, response.text
    sent: Json = response.json()
    # Its message.sent has been handled (so no late one records it behind the test's back); then the record goes.
    await eventually(lambda: adapter.find(sent["message_id"]), what="the email recorded from message.sent")
    await mongo_db[MESSAGES].delete_one({"_id": sent["message_id"]})
    assert await adapter.case_of_thread(sent["thread_id"]) is None
    return sent


async def test_a_complaint_that_beats_the_record_of_its_email_still_names_the_case(
    adapter: MessageStore,
    mongo_db: AsyncDatabase[Document],
    client: NatsBroker,
    sim: SimulatorControl,
    gateway: httpx.AsyncClient,
) -> None:
    """The chaos soak's complained case that ended REJECTED: the complaint named no case, the case service
    found none within its thread-match retries and dropped it, and the follow-up went to a blocked address.
    The email itself says which case sent it (its label), so the adapter reads it from AgentMail and records it."""
    sent = await an_email_we_have_no_record_of(adapter, mongo_db, sim, "case-complained")
    event_id = await sim.delivery_event(sent["message_id"], "complained")

    async def complaint() -> DeliveryEvent | None:
        events = await published(client, DELIVERY_EVENT, DeliveryEvent)
        return next((e for e in events if e.event_id == event_id), None)

    event = await eventually(complaint, what="the complaint's DeliveryEvent")
    assert (event.kind, event.message_id, event.case_id) == ("complained", sent["message_id"], "case-complained")
    recorded = await adapter.find(sent["message_id"])
    assert recorded is not None
    assert (recorded.case_id, recorded.attempt, recorded.thread_id) == ("case-complained", 1, sent["thread_id"])


async def test_a_reply_that_beats_the_record_of_the_email_it_answers_still_names_the_case(
    adapter: MessageStore,
    mongo_db: AsyncDatabase[Document],
    client: NatsBroker,
    sim: SimulatorControl,
    gateway: httpx.AsyncClient,
) -> None:
    """Same race for a counterparty's reply: without its case it waits out the case service's thread-match
    retries and is stored as unmatched, and the case never reads it. The email it answers names the case."""
    sent = await an_email_we_have_no_record_of(adapter, mongo_db, sim, "case-answered")
    injected = await sim.inject(
        from_="vendor@example.com",
        text="Attached.",
        in_reply_to=sent["message_id"],
        thread_id=sent["thread_id"],
        subject="Re: W-9",
    )
    [event] = await eventually(lambda: events_for(client, injected["event_id"]), what="MessageReceived")
    assert (event.thread_id, event.case_id) == (sent["thread_id"], "case-answered")
    assert await adapter.case_of_thread(sent["thread_id"]) == "case-answered"


async def test_a_reply_to_an_email_of_no_case_names_no_case(
    adapter: MessageStore, client: NatsBroker, sim: SimulatorControl, gateway: httpx.AsyncClient
) -> None:
    """The lookup by the answered email reads only our own mail: a reply to an unlabelled email or to a
    message AgentMail does not know is no case's (and is still published, for the case service to store)."""
    unlabelled = await sim.send("vendor@example.com")
    injected = await sim.inject(from_="vendor@example.com", text="Hello.", in_reply_to=unlabelled["message_id"])
    unknown_id, unknown = received_webhook(in_reply_to="<not-ours@elsewhere.example>")
    answered = await gateway.post("/webhooks/agentmail", content=unknown, headers=signed(unknown))
    assert answered.status_code == 200, answered.text
    for event_id in (injected["event_id"], unknown_id):
        [event] = await eventually(lambda: events_for(client, event_id), what="MessageReceived")  # noqa: B023
        assert event.case_id is None


async def test_send_email__a_rejected_recipient_is_an_ok_rejection(adapter: MessageStore, client: NatsBroker) -> None:
    outcome = await send_or_reply(client, SEND, first_email("case-r", to="reject@sim.example"))
    assert isinstance(outcome, Rejected)
    assert "reject@sim.example" in outcome.reason


async def test_send_email__agentmail_down_after_retries_is_service_unavailable(
    adapter: MessageStore, client: NatsBroker, sim: SimulatorControl
) -> None:
    await sim.arm_fault("send", count=5, status=503)
    with pytest.raises(ServiceError) as error:
        await send_or_reply(client, SEND, first_email("case-d"))
    assert error.value.code is ErrorCode.SERVICE_UNAVAILABLE
    assert len(await sim.calls("send")) == 2  # AGENTMAIL_MAX_RETRIES=1
    assert error.value.kind == "transient"


async def test_send_email__a_400_is_a_terminal_reply_with_the_reason_and_not_retried(
    adapter: MessageStore, client: NatsBroker, sim: SimulatorControl
) -> None:
    await sim.arm_fault("send", count=3, status=400, message="to: not an address")
    with pytest.raises(ServiceError) as refused:
        await send_or_reply(client, SEND, first_email("case-400"))
    assert (refused.value.code, refused.value.kind) == (ErrorCode.INTERNAL_ERROR, "terminal")
    assert "400 validation_error: to: not an address" in refused.value.message
    assert len(await sim.calls("send")) == 1
    assert await sim.outbox() == []


async def test_send_email__refused_credentials_are_misconfigured_reported_not_ready_and_cleared_by_a_success(
    adapter: MessageStore, client: NatsBroker, sim: SimulatorControl
) -> None:
    await sim.arm_fault("send", count=2, status=401, code="unknown_api_key")
    try:
        for _ in range(2):
            with pytest.raises(ServiceError) as refused:
                await send_or_reply(client, SEND, first_email("case-401"))
            assert (refused.value.code, refused.value.kind) == (ErrorCode.SERVICE_UNAVAILABLE, "misconfigured")
        # What the adapter's health report carries (shared.runtime), so the gateway's /readyz says not ready.
        assert "unknown_api_key" in DEPENDENCY_PROBLEMS.current()["agentmail"]
        assert REGISTRY.get_sample_value("caseflow_dependency_misconfigured", {"dependency": "agentmail"}) == 1
        sent = await send_or_reply(client, SEND, first_email("case-401"))
        assert isinstance(sent, Sent)
        assert "agentmail" not in DEPENDENCY_PROBLEMS.current()
        assert REGISTRY.get_sample_value("caseflow_dependency_misconfigured", {"dependency": "agentmail"}) == 0
        assert [c["status"] for c in await sim.calls("send")] == [401, 401, 200]
    finally:
        DEPENDENCY_PROBLEMS.clear("agentmail")


async def test_send_email__a_403_on_our_keys_permissions_is_misconfigured_and_a_bare_403_terminal(
    adapter: MessageStore, client: NatsBroker, sim: SimulatorControl
) -> None:
    await sim.arm_fault("send", status=403, code="missing_permission")
    await sim.arm_fault("send", status=403, code="forbidden")
    try:
        with pytest.raises(ServiceError) as permission:
            await send_or_reply(client, SEND, first_email("case-403"))
        assert permission.value.kind == "misconfigured"
        with pytest.raises(ServiceError) as forbidden:
            await send_or_reply(client, SEND, first_email("case-403"))
        assert forbidden.value.kind == "terminal"
    finally:
        DEPENDENCY_PROBLEMS.clear("agentmail")


async def test_reply_email__stays_in_the_thread_and_the_transcript_lists_the_thread_in_order(
    adapter: MessageStore, client: NatsBroker, sim: SimulatorControl, gateway: httpx.AsyncClient
) -> None:
    first = await send_or_reply(client, SEND, first_email("case-t"))
    assert isinstance(first, Sent)
    follow_up = ReplyEmail(case_id="case-t", attempt=2, in_reply_to_message_id=first.message_id, text="Any news?")
    second = await send_or_reply(client, REPLY, follow_up)
    assert isinstance(second, Sent)
    assert second.thread_id == first.thread_id
    assert await send_or_reply(client, REPLY, follow_up) == second
    assert len(await sim.outbox()) == 2

    injected = await sim.inject(
        from_="Someone <someone@example.com>", text="Here it is.", in_reply_to=second.message_id
    )

    async def three() -> Transcript | None:
        transcript = await ask(client, TRANSCRIPT, GetTranscript(thread_id=first.thread_id), Transcript)
        return transcript if len(transcript.messages) == 3 else None

    transcript = await eventually(three, what="the inbound reply in the transcript")
    assert [(m.direction, m.message_id) for m in transcript.messages] == [
        ("outbound", first.message_id),
        ("outbound", second.message_id),
        ("inbound", injected["message"]["message_id"]),
    ]
    assert [m.to for m in transcript.messages] == [["someone@example.com"], ["someone@example.com"], [INBOX]]
    assert [m.subject for m in transcript.messages] == ["Signed W-9", "Re: Signed W-9", "Re: Signed W-9"]
    assert transcript.messages[2].text == "Here it is."
    assert transcript.messages[2].from_address == "someone@example.com"
    empty = await ask(client, TRANSCRIPT, GetTranscript(thread_id=str(uuid.uuid4())), Transcript)
    assert empty.messages == []


async def test_attachment_link__a_fresh_download_link_and_any_failure_is_internal_error(
    adapter: MessageStore, client: NatsBroker, sim: SimulatorControl
) -> None:
    injected = (await sim.inject(from_="a@example.com", text="Attached", attachments=[{"filename": "w9.pdf"}]))[
        "message"
    ]
    wanted = GetAttachmentLink(
        message_id=injected["message_id"], attachment_id=injected["attachments"][0]["attachment_id"]
    )
    link = await ask(client, ATTACHMENT_LINK, wanted, AttachmentLink)
    async with httpx.AsyncClient() as anonymous:
        assert (await anonymous.get(link.download_url)).content.startswith(b"%PDF-")
    await sim.arm_fault("get_attachment", count=5, status=500)
    with pytest.raises(ServiceError) as failed:
        await ask(client, ATTACHMENT_LINK, wanted, AttachmentLink)
    assert failed.value.code is ErrorCode.INTERNAL_ERROR
    unknown = GetAttachmentLink(message_id=injected["message_id"], attachment_id=str(uuid.uuid4()))
    with pytest.raises(ServiceError) as missing:
        await ask(client, ATTACHMENT_LINK, unknown, AttachmentLink)
    assert missing.value.code is ErrorCode.INTERNAL_ERROR


# ---- webhooks through the gateway -------------------------------------------------------------------------


async def test_a_scripted_reply_arrives_through_the_gateway_as_one_message_received_event(
    adapter: MessageStore, client: NatsBroker, sim: SimulatorControl, gateway: httpx.AsyncClient
) -> None:
    sent = await send_or_reply(client, SEND, first_email("case-g", to="agree.jane@sim.example"))
    assert isinstance(sent, Sent)

    async def reply_event() -> list[MessageReceived]:
        events = await published(client, MESSAGE_RECEIVED, MessageReceived)
        return [e for e in events if e.thread_id == sent.thread_id]

    [event] = await eventually(reply_event, what="MessageReceived for the scripted reply")
    assert event.from_address == "agree.jane@sim.example"
    assert event.in_reply_to == sent.message_id
    assert event.case_id == "case-g"  # the thread → case map from the adapter's record of the send
    assert "attached" in event.text
    assert ">" not in event.text  # extracted_text: the reply without the quoted email
    assert not event.auto_submitted
    assert [(a.filename, a.content_type) for a in event.attachments] == [("signed-document.pdf", "application/pdf")]
    stored = await adapter.find(event.message_id)
    assert stored is not None
    assert (stored.direction, stored.event_id, stored.text) == ("inbound", event.event_id, event.text)
    [delivery] = await sim.deliveries(event.event_id)
    assert [attempt["status"] for attempt in delivery["attempts"]] == [200]


async def test_delivery_webhooks_become_delivery_events(
    adapter: MessageStore, client: NatsBroker, sim: SimulatorControl, gateway: httpx.AsyncClient
) -> None:
    bounced = await send_or_reply(client, SEND, first_email("case-b", to="bounce@sim.example"))
    delivered = await send_or_reply(client, SEND, first_email("case-ok"))
    assert isinstance(bounced, Sent)
    assert isinstance(delivered, Sent)

    async def kinds() -> dict[str, DeliveryEvent] | None:
        events = await published(client, DELIVERY_EVENT, DeliveryEvent)
        mine = {e.message_id: e for e in events if e.message_id in (bounced.message_id, delivered.message_id)}
        return mine if len(mine) == 2 else None

    events = await eventually(kinds, what="two delivery events")
    assert (events[bounced.message_id].kind, events[bounced.message_id].detail) == ("bounced", "Permanent/General")
    assert events[delivered.message_id].kind == "delivered"
    assert events[delivered.message_id].thread_id == delivered.thread_id
    assert events[delivered.message_id].inbox_id == INBOX
    # The case that sent each message, from the adapter's record of the send.
    assert (events[bounced.message_id].case_id, events[delivered.message_id].case_id) == ("case-b", "case-ok")


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(lambda body: {}, id="missing"),
        pytest.param(lambda body: signed(body, secret="whsec_" + "d3Jvbmctc2VjcmV0LXdyb25nLXNlY3JldA=="), id="wrong"),
        pytest.param(lambda body: signed(body, at=datetime.now(UTC) - timedelta(minutes=6)), id="stale"),
        pytest.param(lambda body: {**signed(body), "svix-signature": "not-a-signature"}, id="malformed"),
    ],
)
async def test_a_missing_wrong_stale_or_malformed_signature_is_400_and_publishes_nothing(
    adapter: MessageStore, client: NatsBroker, gateway: httpx.AsyncClient, headers: Any
) -> None:
    event_id, body = received_webhook()
    response = await gateway.post("/webhooks/agentmail", content=body, headers=headers(body))
    assert response.status_code == 400
    assert response.json()["ok"] is False
    assert response.json()["error"]["code"] == "INVALID_REQUEST"
    assert await events_for(client, event_id) == []
    assert await adapter.find(json.loads(body)["message"]["message_id"]) is None


async def test_the_same_webhook_three_times_is_one_event_and_one_stored_message(
    adapter: MessageStore, client: NatsBroker, gateway: httpx.AsyncClient, mongo_db: AsyncDatabase[Document]
) -> None:
    event_id, body = received_webhook()
    headers = signed(body)
    answers = [(await gateway.post("/webhooks/agentmail", content=body, headers=headers)).json() for _ in range(3)]
    assert [answer["data"] for answer in answers] == [
        {"eventId": event_id, "duplicate": False},
        {"eventId": event_id, "duplicate": True},
        {"eventId": event_id, "duplicate": True},
    ]
    [event] = await events_for(client, event_id)
    assert (event.text, event.from_address, event.subject) == ("Sure.", "jane@example.com", "Re: Signed W-9")
    assert event.received_at == 1788256800250
    assert await mongo_db[MESSAGES].count_documents({"eventId": event_id}) == 1


async def test_a_crash_after_storing_or_after_publishing_still_ends_with_exactly_one_event(
    adapter: MessageStore, client: NatsBroker, gateway: httpx.AsyncClient, mongo_db: AsyncDatabase[Document]
) -> None:
    # Crashed after storing the message, before publishing: the redelivery publishes.
    event_id, body = received_webhook()
    message = json.loads(body)["message"]
    await adapter.record(
        StoredMessage(
            message_id=message["message_id"],
            inbox_id=INBOX,
            thread_id=message["thread_id"],
            direction="inbound",
            from_address="jane@example.com",
            to=[INBOX],
            subject="Re: Signed W-9",
            text="Sure.",
            timestamp=1,
            recorded_at=1,
            event_id=event_id,
        )
    )
    first = await gateway.post("/webhooks/agentmail", content=body, headers=signed(body))
    assert first.json()["data"]["duplicate"] is False
    assert len(await events_for(client, event_id)) == 1

    # Crashed after publishing, before marking the event handled: the redelivery does not publish twice.
    await mongo_db[INBOUND_EVENTS].delete_one({"_id": event_id})
    again = await gateway.post("/webhooks/agentmail", content=body, headers=signed(body))
    assert again.json()["data"]["duplicate"] is False
    assert len(await events_for(client, event_id)) == 1
    assert await mongo_db[INBOUND_EVENTS].count_documents({"_id": event_id}) == 1
    # The dedupe record expires on its own (TTL index), a week after it was handled.
    handled = await mongo_db[INBOUND_EVENTS].find_one({"_id": event_id})
    assert handled is not None
    assert (
        handled["expiresAt"] - dt.datetime.fromtimestamp(handled["handledAt"] / 1000, dt.UTC).replace(tzinfo=None)
        == HANDLED_EVENT_TTL
    )
    ttl = {index["name"]: index for index in await (await mongo_db[INBOUND_EVENTS].list_indexes()).to_list(None)}
    assert ttl["expires_ttl"]["expireAfterSeconds"] == 0


async def test_a_webhook_without_the_body_makes_the_adapter_fetch_the_message(
    adapter: MessageStore, client: NatsBroker, sim: SimulatorControl, gateway: httpx.AsyncClient
) -> None:
    injected = await sim.inject(from_="big@example.com", text="A very long answer.", body_in_webhook=False)
    [event] = await eventually(lambda: events_for(client, injected["event_id"]), what="MessageReceived")
    assert event.text == "A very long answer."
    assert len(await sim.calls("get_message")) == 1


async def test_auto_replies_are_flagged_and_html_only_mail_is_read_as_text(
    adapter: MessageStore, client: NatsBroker, gateway: httpx.AsyncClient
) -> None:
    auto_id, auto = received_webhook(headers={"Auto-Submitted": "auto-replied"})
    html_id, html = received_webhook(
        text=None, extracted_text=None, html="<div><p>Signed &amp; attached.</p><style>p{}</style><p>Jane</p></div>"
    )
    for body in (auto, html):
        assert (await gateway.post("/webhooks/agentmail", content=body, headers=signed(body))).status_code == 200
    [auto_event] = await events_for(client, auto_id)
    [html_event] = await events_for(client, html_id)
    assert auto_event.auto_submitted
    assert html_event.text == "Signed & attached.\nJane"


async def test_other_event_types_are_acknowledged_and_not_published(
    adapter: MessageStore, client: NatsBroker, gateway: httpx.AsyncClient
) -> None:
    body = json.dumps(
        {"type": "event", "event_type": "domain.verified", "event_id": "evt-domain", "domain": {}}
    ).encode()
    response = await gateway.post("/webhooks/agentmail", content=body, headers=signed(body))
    assert response.json() == {"ok": True, "data": {"eventId": "evt-domain", "duplicate": False}}
    assert await events_for(client, "evt-domain") == []


async def test_a_genuine_webhook_too_large_for_nats_is_accepted_at_once_and_its_text_stored_bounded(
    adapter: MessageStore, client: NatsBroker, sim: SimulatorControl, gateway: httpx.AsyncClient
) -> None:
    # ~3 MB of text, in the body twice (text and extracted_text): over the clients' 1 MiB limit and over what one
    # NATS message carries inline, so it travels through the object store.
    text = "word " * 600_000
    injected = await sim.inject(from_="huge@example.com", text=text)
    [event] = await eventually(lambda: events_for(client, injected["event_id"]), what="MessageReceived", timeout=30)
    assert event.text.startswith("word word")
    assert event.text.endswith("more characters not kept: the message is too large]")
    assert len(msgspec.json.encode(event.text)) <= MESSAGE_TEXT_MAX_BYTES
    stored = await adapter.find(event.message_id)
    assert stored is not None
    assert stored.text == event.text
    # AgentMail's first delivery was accepted (never a 413 to be retried until it gives up).
    [delivery] = await sim.deliveries(injected["event_id"])
    assert [attempt["status"] for attempt in delivery["attempts"]] == [200]
    # The body handed over through the object store is gone once the adapter answered.
    bodies = await object_bucket(client, AGENTMAIL_INGRESS_BODIES)
    try:
        remaining = [info.name for info in await bodies.list(ignore_deletes=True)]
    except NotFoundError:  # nats-py's answer for an empty bucket
        remaining = []
    assert remaining == []


# ---- bounds (services/agentmail_adapter/bounds.py) ----------------------------------------------------------


async def test_an_outgoing_subject_with_line_breaks_goes_out_on_one_line_and_bounded(
    adapter: MessageStore, client: NatsBroker, sim: SimulatorControl
) -> None:
    forged = "Signed W-9\r\nBcc: everyone@example.com\u202e" + " word" * 100
    email = msgspec.structs.replace(first_email("case-subject"), subject=forged)
    sent = await send_or_reply(client, SEND, email)
    assert isinstance(sent, Sent)
    [delivered] = await sim.outbox()
    assert delivered["subject"].startswith("Signed W-9 Bcc: everyone@example.com word word")
    assert len(delivered["subject"]) <= SUBJECT_MAX_CHARS
    assert not any(char in delivered["subject"] for char in "\r\n\u202e")
    stored = await adapter.find(sent.message_id)
    assert stored is not None
    assert stored.subject == delivered["subject"]


def stored_message(thread_id: str, index: int, text: str) -> StoredMessage:
    return StoredMessage(
        message_id=f"<{thread_id}-{index}@example.com>",
        inbox_id=INBOX,
        thread_id=thread_id,
        direction="inbound",
        from_address="someone@example.com",
        to=[INBOX],
        subject=f"Re: part {index}",
        text=text,
        timestamp=1_000 + index,
        recorded_at=1_000 + index,
    )


async def test_a_transcript_keeps_the_newest_messages_within_its_budget_and_counts_the_rest(
    adapter: MessageStore, client: NatsBroker
) -> None:
    thread_id = str(uuid.uuid4())
    # Six messages of a megabyte each (the thread is 6 MB) and, newest, one stored before the bound (3 MB).
    for index in range(6):
        await adapter.record(stored_message(thread_id, index, f"{index}" * 1_000_000))
    await adapter.record(stored_message(thread_id, 6, "\x00" * 3_000_000))
    reply = await ask(client, TRANSCRIPT, GetTranscript(thread_id=thread_id), Transcript)
    encoded = len(msgspec.json.encode(reply))
    assert encoded <= TRANSCRIPT_MAX_BYTES
    # The clipped newest (at most 1.5 MB) and one megabyte message fit the 2.5 MB budget; a second does not.
    assert [m.message_id for m in reply.messages] == [f"<{thread_id}-{i}@example.com>" for i in (5, 6)]
    assert reply.omitted == 5
    newest = reply.messages[-1]
    assert newest.text.endswith("more characters not kept: the message is too large]")
    assert len(msgspec.json.encode(newest.text)) <= MESSAGE_TEXT_MAX_BYTES
    for index in range(7, 9):
        await adapter.record(stored_message(thread_id, index, "short"))
    latest = await ask(client, TRANSCRIPT, GetTranscript(thread_id=thread_id), Transcript)
    assert [m.text for m in latest.messages][-2:] == ["short", "short"]
    assert latest.omitted == 9 - len(latest.messages)


async def test_a_huge_inbound_message_is_stored_and_published_whole_up_to_the_bound(
    adapter: MessageStore, client: NatsBroker, sim: SimulatorControl, gateway: httpx.AsyncClient
) -> None:
    megabyte = "m" * 1_000_000
    fits = await sim.inject(from_="big@example.com", text=megabyte, body_in_webhook=False)
    [event] = await eventually(lambda: events_for(client, fits["event_id"]), what="the 1 MB message")
    assert event.text == megabyte  # kept whole
    too_big = await sim.inject(from_="big@example.com", text="z" * 3_000_000, body_in_webhook=False)
    [cut] = await eventually(lambda: events_for(client, too_big["event_id"]), what="the 3 MB message")
    assert cut.text.startswith("z" * 1_000_000)
    assert cut.text.endswith("more characters not kept: the message is too large]")
    stored = await adapter.find(cut.message_id)
    assert stored is not None
    assert stored.text == cut.text
