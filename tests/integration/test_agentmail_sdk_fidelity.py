"""Fidelity of the simulator, checked by the official `agentmail` SDK (AsyncAgentMail) pointed at it.

Every call the adapter relies on goes through the SDK's own request building and typed response parsing:
create an inbox, create a webhook, send, receive the scripted reply's signed webhook (verified with `svix`
and parsed into the SDK's event model), get the thread, get a message, get an attachment and download it,
reply. The SDK's models accept unknown fields, so each result is also checked field by field.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from agentmail import (
    AgentMailEnvironment,
    AsyncAgentMail,
    AttachmentResponse,
    Message,
    MessageReceivedEvent,
    SendMessageResponse,
    Thread,
)
from agentmail.core.api_error import ApiError
from agentmail.inboxes import CreateInboxRequest, Inbox
from agentmail.webhooks import Webhook
from svix.webhooks import Webhook as SvixVerifier

from deploy.processes import Simulator
from tests.support.simulator import API_KEY, SimulatorControl, WebhookSink, eventually, running_simulator


@pytest.fixture(scope="module")
def simulator(log_dir: Path) -> Iterator[Simulator]:
    with running_simulator(log_dir) as running:
        yield running


@pytest.fixture
async def sink() -> AsyncIterator[WebhookSink]:
    endpoint = WebhookSink()
    await endpoint.start()
    yield endpoint
    await endpoint.stop()


@pytest.fixture
async def sdk(simulator: Simulator) -> AsyncIterator[AsyncAgentMail]:
    control = SimulatorControl(simulator.url)
    await control.reset()
    await control.aclose()
    async with httpx.AsyncClient(timeout=10) as http:
        environment = AgentMailEnvironment(http=simulator.url, websockets="ws://127.0.0.1:9")
        yield AsyncAgentMail(api_key=API_KEY, environment=environment, httpx_client=http)


async def test_the_official_sdk_drives_every_call_of_the_subset(sdk: AsyncAgentMail, sink: WebhookSink) -> None:
    inbox = await sdk.inboxes.create(
        request=CreateInboxRequest(
            username="sdk-outreach", domain="sim.example", display_name="Caseflow", client_id="sdk"
        )
    )
    assert isinstance(inbox, Inbox)
    assert (inbox.inbox_id, inbox.email, inbox.display_name) == (
        "sdk-outreach@sim.example",
        "sdk-outreach@sim.example",
        "Caseflow",
    )
    fetched_inbox = await sdk.inboxes.get(inbox.inbox_id)
    assert isinstance(fetched_inbox, Inbox)
    assert fetched_inbox.pod_id == inbox.pod_id

    webhook = await sdk.webhooks.create(
        url=sink.url, event_types=["message.received", "message.delivered"], inbox_ids=[inbox.inbox_id]
    )
    assert isinstance(webhook, Webhook)
    assert webhook.secret.startswith("whsec_")
    assert webhook.enabled

    sent = await sdk.inboxes.messages.send(
        inbox.inbox_id,
        to=["agree.jane@sim.example"],
        subject="Signed W-9",
        text="Could you send us your signed W-9?",
        idempotency_key="sdk-case.1",
    )
    assert isinstance(sent, SendMessageResponse)
    replayed = await sdk.inboxes.messages.send(
        inbox.inbox_id,
        to=["agree.jane@sim.example"],
        subject="Signed W-9",
        text="Could you send us your signed W-9?",
        idempotency_key="sdk-case.1",
    )
    assert replayed.message_id == sent.message_id

    hooks = await eventually(
        lambda: _now(sink.of_type("message.received")), what="the scripted reply's message.received webhook"
    )
    SvixVerifier(webhook.secret).verify(hooks[0].body, hooks[0].headers)
    event = MessageReceivedEvent.model_validate(json.loads(hooks[0].body))
    assert event.event_type == "message.received"
    assert event.message.thread_id == sent.thread_id
    assert event.thread.last_message_id == event.message.message_id
    assert all(hook.headers["svix-id"] for hook in sink.received)
    assert {json.loads(hook.body)["event_type"] for hook in sink.received} <= {"message.received", "message.delivered"}

    thread = await sdk.inboxes.threads.get(inbox.inbox_id, sent.thread_id)
    assert isinstance(thread, Thread)
    assert (thread.message_count, thread.count, len(thread.messages)) == (2, 2, 2)
    assert all(isinstance(message, Message) for message in thread.messages)
    assert thread.messages[0].labels == ["sent"]
    assert thread.messages[1].from_ == "Jane <agree.jane@sim.example>"
    paged = await sdk.inboxes.threads.get(inbox.inbox_id, sent.thread_id, limit=1)
    assert paged.next_page_token
    assert [m.message_id for m in paged.messages] == [thread.last_message_id]

    reply = await sdk.inboxes.messages.get(inbox.inbox_id, thread.last_message_id)
    assert isinstance(reply, Message)
    assert reply.in_reply_to == sent.message_id
    assert reply.extracted_text is not None
    assert "attached" in reply.extracted_text
    assert reply.attachments is not None

    attachment = await sdk.inboxes.messages.get_attachment(
        inbox.inbox_id, reply.message_id, reply.attachments[0].attachment_id
    )
    assert isinstance(attachment, AttachmentResponse)
    assert attachment.filename == "signed-document.pdf"
    async with httpx.AsyncClient() as anonymous:
        content = (await anonymous.get(attachment.download_url)).content
    assert content.startswith(b"%PDF-")
    assert len(content) == attachment.size

    answer = await sdk.inboxes.messages.reply(
        inbox.inbox_id, reply.message_id, text="Thank you, received.", idempotency_key="sdk-case.2"
    )
    assert isinstance(answer, SendMessageResponse)
    assert answer.thread_id == sent.thread_id
    answered = await sdk.inboxes.messages.get(inbox.inbox_id, answer.message_id)
    assert answered.to == ["Jane <agree.jane@sim.example>"]
    assert answered.subject == "Re: Signed W-9"


async def test_sdk_errors_come_from_agentmail_error_bodies(sdk: AsyncAgentMail) -> None:
    with pytest.raises(ApiError) as missing:
        await sdk.inboxes.get("nobody@sim.example")
    assert missing.value.status_code == 404
    with pytest.raises(ApiError) as rejected:
        await sdk.inboxes.messages.send("caseflow@sim.example", to=["reject@sim.example"], subject="s", text="t")
    assert rejected.value.status_code == 403
    assert type(rejected.value).__name__ == "MessageRejectedError"


async def _now[T](value: T) -> T:
    return value
