"""The AgentMail path through the whole stack as `make run` wires it: adapter process → simulator process →
Svix-signed webhook → gateway process → adapter → JetStream, and the transcript and attachment link after it."""

from __future__ import annotations

import uuid
from typing import cast

import httpx
from faststream.nats import NatsBroker

from deploy.processes import Stack
from shared.contracts.agentmail import (
    ATTACHMENT_LINK,
    MESSAGE_RECEIVED,
    SEND,
    TRANSCRIPT,
    AttachmentLink,
    GetAttachmentLink,
    GetTranscript,
    MessageReceived,
    Rejected,
    SendEmail,
    Sent,
    Transcript,
)
from shared.messaging.rpc import request
from tests.support.simulator import SimulatorControl, eventually, published


async def test_an_agreeing_counterparty_reply_reaches_jetstream_and_the_transcript(
    stack: Stack, raw_broker: NatsBroker
) -> None:
    case_id = f"e2e-{uuid.uuid4().hex[:8]}"
    email = SendEmail(
        case_id=case_id, attempt=1, to=["agree.robin@sim.example"], subject="Signed NDA", text="Could you sign our NDA?"
    )
    sent = await request(raw_broker, SEND, email, cast("type[Sent | Rejected]", Sent), timeout=15)
    assert isinstance(sent, Sent)

    async def reply() -> list[MessageReceived]:
        events = await published(raw_broker, MESSAGE_RECEIVED, MessageReceived)
        return [event for event in events if event.thread_id == sent.thread_id]

    [event] = await eventually(reply, what="the scripted reply as a MessageReceived event")
    assert event.from_address == "agree.robin@sim.example"
    assert "attached" in event.text
    [attachment] = event.attachments

    transcript = await request(raw_broker, TRANSCRIPT, GetTranscript(thread_id=sent.thread_id), Transcript, timeout=15)
    assert [(m.direction, m.message_id) for m in transcript.messages] == [
        ("outbound", sent.message_id),
        ("inbound", event.message_id),
    ]
    assert transcript.messages[1].attachments == [attachment]

    link = await request(
        raw_broker,
        ATTACHMENT_LINK,
        GetAttachmentLink(message_id=event.message_id, attachment_id=attachment.attachment_id),
        AttachmentLink,
        timeout=15,
    )
    async with httpx.AsyncClient() as anonymous:
        assert (await anonymous.get(link.download_url)).content.startswith(b"%PDF-")

    control = SimulatorControl(stack.simulator.url)
    try:
        deliveries = await control.deliveries(event.event_id)
    finally:
        await control.aclose()
    assert [attempt["status"] for attempt in deliveries[0]["attempts"]][-1] == 200


async def test_the_webhook_ingress_is_open_but_refuses_unsigned_bodies(api: httpx.AsyncClient) -> None:
    response = await api.post("/webhooks/agentmail", content=b'{"type": "event"}')
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "INVALID_REQUEST"
    assert response.headers["x-request-id"]
    schema = (await api.get("/schema/openapi.json")).json()
    operation = schema["paths"]["/webhooks/agentmail"]["post"]
    assert operation["summary"]
    assert {"200", "400", "503"} <= set(operation["responses"])
    assert not operation.get("security")
