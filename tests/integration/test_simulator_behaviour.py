"""The AgentMail simulator as a black box over HTTP: scripted counterparties, signed webhooks, control API, faults.

One simulator process per module, its webhooks going to an in-process endpoint that records them; each test
starts from `POST /_sim/reset`. Waits are `eventually(...)` polls on outcomes, never fixed sleeps, except where
a test proves that something does *not* happen.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from svix.webhooks import Webhook

from deploy.processes import Simulator
from tests.support.simulator import (
    INBOX,
    WEBHOOK_SECRET,
    Json,
    ReceivedWebhook,
    SimulatorControl,
    WebhookSink,
    eventually,
    running_simulator,
)

REPLY_DELAY = 0.1


@pytest.fixture(scope="module")
async def sink() -> AsyncIterator[WebhookSink]:
    endpoint = WebhookSink()
    await endpoint.start()
    yield endpoint
    await endpoint.stop()


@pytest.fixture(scope="module")
def simulator(log_dir: Path, sink: WebhookSink) -> Iterator[Simulator]:
    with running_simulator(log_dir, webhook_url=sink.url, reply_delay_seconds=str(REPLY_DELAY)) as running:
        yield running


@pytest.fixture
async def sim(simulator: Simulator, sink: WebhookSink) -> AsyncIterator[SimulatorControl]:
    control = SimulatorControl(simulator.url)
    await control.reset()
    sink.received.clear()
    sink.statuses.clear()
    yield control
    await control.aclose()


def event_of(hook: ReceivedWebhook) -> Json:
    """The webhook's JSON after checking its Svix signature, as the adapter will."""
    Webhook(WEBHOOK_SECRET).verify(hook.body, hook.headers)
    event: Json = json.loads(hook.body)
    return event


async def replies_in(sim: SimulatorControl, thread_id: str, count: int) -> list[Json]:
    async def received() -> list[Json] | None:
        messages = (await sim.thread(thread_id))["messages"]
        inbound = [m for m in messages if "received" in m["labels"]]
        return inbound if len(inbound) >= count else None

    return await eventually(received, what=f"{count} replies in {thread_id}")


async def reply_as_agent(sim: SimulatorControl, message_id: str, text: str) -> Json:
    response = await sim.api.post(f"/inboxes/{INBOX}/messages/{message_id}/reply", json={"text": text})
    assert response.status_code == 200, response.text
    return dict(response.json())


async def download(sim: SimulatorControl, message: Json) -> tuple[Json, bytes]:
    attachment = message["attachments"][0]
    link = await sim.api.get(
        f"/inboxes/{INBOX}/messages/{message['message_id']}/attachments/{attachment['attachment_id']}"
    )
    assert link.status_code == 200, link.text
    async with httpx.AsyncClient() as anonymous:  # download URLs need no Authorization
        content = (await anonymous.get(link.json()["download_url"])).content
    return attachment, content


# ---- scripted counterparties ------------------------------------------------------------------------------


async def test_agree__replies_in_the_thread_agreeing_with_a_signed_pdf_and_a_signed_webhook(
    sim: SimulatorControl, sink: WebhookSink
) -> None:
    sent = await sim.send("agree.jane-doe@sim.example")
    [reply] = await replies_in(sim, sent["thread_id"], 1)
    assert reply["from"] == "Jane Doe <agree.jane-doe@sim.example>"
    assert reply["subject"] == "Re: Signed W-9"
    assert reply["in_reply_to"] == sent["message_id"]
    assert "agree" in reply["extracted_text"]
    assert "attached" in reply["extracted_text"]
    assert "> Could you send us your W-9?" in reply["text"]  # the full text quotes the agent's email
    attachment, content = await download(sim, reply)
    assert (attachment["filename"], attachment["content_type"]) == ("signed-document.pdf", "application/pdf")
    assert content.startswith(b"%PDF-")
    assert content.rstrip().endswith(b"%%EOF")
    assert len(content) == attachment["size"]

    hooks = await eventually(lambda: _async(sink.of_type("message.received")), what="message.received webhook")
    event = event_of(hooks[0])
    assert event["type"] == "event"
    assert event["message"]["message_id"] == reply["message_id"]
    assert event["thread"]["thread_id"] == sent["thread_id"]
    assert event["thread"]["message_count"] == 2
    assert [event_of(hook)["event_type"] for hook in sink.received][:2] == ["message.sent", "message.delivered"]


async def test_ask__asks_a_question_only_the_client_can_answer_then_agrees_after_the_next_email(
    sim: SimulatorControl,
) -> None:
    sent = await sim.send("ask@sim.example")
    [question] = await replies_in(sim, sent["thread_id"], 1)
    assert "?" in question["extracted_text"]
    assert "signed electronically" in question["extracted_text"]
    assert "attachments" not in question
    await reply_as_agent(sim, question["message_id"], "An electronically signed PDF is fine.")
    _, agreement = await replies_in(sim, sent["thread_id"], 2)
    assert "attached" in agreement["extracted_text"]
    assert agreement["attachments"][0]["filename"] == "signed-document.pdf"


async def test_chat__asks_something_the_agent_can_answer_then_agrees_after_the_answer(sim: SimulatorControl) -> None:
    sent = await sim.send("chat.sam@sim.example")
    [question] = await replies_in(sim, sent["thread_id"], 1)
    assert "what exactly you need" in question["extracted_text"]
    await reply_as_agent(sim, question["message_id"], "We need your signed W-9 for our vendor records.")
    _, agreement = await replies_in(sim, sent["thread_id"], 2)
    assert "signed the document" in agreement["extracted_text"]
    assert len(agreement["attachments"]) == 1


async def test_refuse__declines_clearly_without_an_attachment(sim: SimulatorControl) -> None:
    sent = await sim.send("refuse@sim.example")
    [refusal] = await replies_in(sim, sent["thread_id"], 1)
    assert "won't be able to" in refusal["extracted_text"]
    assert "decline" in refusal["extracted_text"]
    assert "attachments" not in refusal


async def test_silent_and_unscripted_recipients__are_delivered_and_never_answered(
    sim: SimulatorControl, sink: WebhookSink
) -> None:
    silent = await sim.send("silent@sim.example")
    other = await sim.send("someone@example.com")
    await eventually(lambda: _async(sink.of_type("message.delivered")[1:]), what="two delivered webhooks")
    await asyncio.sleep(REPLY_DELAY * 5)  # proving an absence: well past the reply delay
    for sent in (silent, other):
        assert (await sim.thread(sent["thread_id"]))["message_count"] == 1
    assert sink.of_type("message.received") == []


async def test_bounce__a_permanent_bounce_event_and_later_sends_are_rejected(
    sim: SimulatorControl, sink: WebhookSink
) -> None:
    sent = await sim.send("bounce@sim.example")
    hooks = await eventually(lambda: _async(sink.of_type("message.bounced")), what="bounce webhook")
    bounce = event_of(hooks[0])["bounce"]
    assert bounce["message_id"] == sent["message_id"]
    assert (bounce["type"], bounce["sub_type"]) == ("Permanent", "General")
    assert bounce["recipients"] == [{"address": "bounce@sim.example", "status": "bounced"}]
    assert sink.of_type("message.delivered") == []
    again = await sim.api.post(
        f"/inboxes/{INBOX}/messages/send", json={"to": "bounce@sim.example", "subject": "x", "text": "y"}
    )
    assert again.status_code == 403
    assert again.json()["code"] == "message_rejected"


async def test_complain__delivered_then_a_complaint_and_the_address_is_blocked(
    sim: SimulatorControl, sink: WebhookSink
) -> None:
    sent = await sim.send("complain@sim.example")
    hooks = await eventually(lambda: _async(sink.of_type("message.complained")), what="complaint webhook")
    complaint = event_of(hooks[0])["complaint"]
    assert complaint["message_id"] == sent["message_id"]
    assert complaint["type"] == "abuse"
    assert complaint["recipients"] == ["complain@sim.example"]
    assert len(sink.of_type("message.delivered")) == 1
    again = await sim.api.post(
        f"/inboxes/{INBOX}/messages/send", json={"to": "complain@sim.example", "subject": "x", "text": "y"}
    )
    assert again.json()["code"] == "message_rejected"


async def test_reject__the_send_itself_is_refused_with_403_message_rejected(sim: SimulatorControl) -> None:
    response = await sim.api.post(
        f"/inboxes/{INBOX}/messages/send", json={"to": ["reject@sim.example"], "subject": "Hi", "text": "Hello"}
    )
    assert response.status_code == 403
    body = response.json()
    assert (body["name"], body["code"]) == ("MessageRejectedError", "message_rejected")
    assert "reject@sim.example" in body["message"]
    assert await sim.outbox() == []


# ---- control API ------------------------------------------------------------------------------------------


async def test_inject__a_fresh_email_with_an_attachment_and_a_reply_into_a_thread(
    sim: SimulatorControl, sink: WebhookSink
) -> None:
    fresh = await sim.inject(
        from_="Vendor <vendor@example.com>",
        subject="Our invoice",
        text="Invoice attached.",
        attachments=[{"filename": "invoice.txt", "content_type": "text/plain", "content": _b64(b"total: 42")}],
        headers={"Auto-Submitted": "no"},
    )
    message = fresh["message"]
    assert message["labels"] == ["received", "unread"]
    assert message["to"] == [INBOX]
    assert message["headers"] == {"Auto-Submitted": "no"}
    _, content = await download(sim, message)
    assert content == b"total: 42"
    hooks = await eventually(lambda: _async(sink.of_type("message.received")), what="received webhook")
    assert event_of(hooks[0])["event_id"] == fresh["event_id"]

    sent = await sim.send("someone@example.com")
    reply = (await sim.inject(from_="someone@example.com", text="Got it, thanks.", thread_id=sent["thread_id"]))[
        "message"
    ]
    assert reply["thread_id"] == sent["thread_id"]
    assert reply["in_reply_to"] == sent["message_id"]
    assert reply["subject"] == "Re: Signed W-9"
    without_body = await sim.inject(from_="x@example.com", text="long body", body_in_webhook=False)
    hooks = await eventually(
        lambda: _async([h for h in sink.of_type("message.received") if without_body["event_id"].encode() in h.body])
    )
    assert "text" not in event_of(hooks[0])["message"]


async def test_delivery_event__is_signed_and_delivered_and_blocks_the_address(
    sim: SimulatorControl, sink: WebhookSink
) -> None:
    sent = await sim.send("someone@example.com")
    event_id = await sim.delivery_event(sent["message_id"], "rejected", reason="Recipient unsubscribed")
    hooks = await eventually(lambda: _async(sink.of_type("message.rejected")), what="rejected webhook")
    event = event_of(hooks[0])
    assert event["event_id"] == event_id
    assert event["reject"]["reason"] == "Recipient unsubscribed"
    blocked = await sim.api.post(
        f"/inboxes/{INBOX}/messages/send", json={"to": "someone@example.com", "subject": "x", "text": "y"}
    )
    assert blocked.status_code == 403
    missing = await sim.control.post("/delivery-events", json={"message_id": "<nope@x>", "kind": "bounced"})
    assert missing.status_code == 404


async def test_outbox_lists_sends_and_reset_forgets_everything_and_cancels_pending_replies(
    sim: SimulatorControl, sink: WebhookSink
) -> None:
    first = await sim.send("someone@example.com")
    await sim.send("agree@sim.example")
    assert [m["message_id"] for m in await sim.outbox("someone@")] == [first["message_id"]]
    assert len(await sim.outbox()) == 2
    await sim.arm_fault("send", status=500)
    await sim.reset()
    assert await sim.outbox() == []
    assert (await sim.api.get(f"/inboxes/{INBOX}/threads/{first['thread_id']}")).status_code == 404
    assert (await sim.control.get("/faults")).json() == {"faults": []}
    assert (await sim.api.get(f"/inboxes/{INBOX}")).status_code == 200  # the configured inbox survives
    await asyncio.sleep(REPLY_DELAY * 5)  # proving an absence: the scripted reply was cancelled
    assert sink.of_type("message.received") == []


async def test_failed_webhook_deliveries_are_retried_with_the_same_svix_id_and_fresh_signatures(
    sim: SimulatorControl, sink: WebhookSink
) -> None:
    sink.statuses.extend([500, 503])
    injected = await sim.inject(from_="a@example.com", text="hello")

    async def delivered() -> list[Json] | None:
        found = await sim.deliveries(injected["event_id"])
        return found if found and found[0]["delivered"] else None

    [delivery] = await eventually(delivered, what="delivery after retries")
    assert [attempt["status"] for attempt in delivery["attempts"]] == [500, 503, 200]
    attempts = [h for h in sink.received if injected["event_id"].encode() in h.body]
    assert len(attempts) == 3
    assert len({hook.headers["svix-id"] for hook in attempts}) == 1
    for hook in attempts:
        event_of(hook)  # each attempt is validly signed

    again = await sim.redeliver(injected["event_id"])
    assert again[0]["svix_id"] == delivery["svix_id"]
    await eventually(lambda: _async([h for h in sink.received if injected["event_id"].encode() in h.body][3:]))


async def test_faults__status_with_retry_after_then_normal_service_and_every_call_logged(
    sim: SimulatorControl,
) -> None:
    await sim.arm_fault("send", count=2, status=429, retry_after=3)
    body = {"to": "someone@example.com", "subject": "s", "text": "t"}
    for _ in range(2):
        limited = await sim.api.post(f"/inboxes/{INBOX}/messages/send", json=body)
        assert limited.status_code == 429
        assert limited.headers["retry-after"] == "3"
        assert limited.json() == {
            "name": "TooManyRequestsError",
            "code": "rate_limit_exceeded",
            "message": "Injected fault (TooManyRequestsError)",
        }
    assert (await sim.api.post(f"/inboxes/{INBOX}/messages/send", json=body)).status_code == 200
    assert [(c["status"], c["faulted"]) for c in await sim.calls("send")] == [(429, True), (429, True), (200, False)]


async def test_faults__latency_delays_the_answer_after_the_work_is_done(sim: SimulatorControl) -> None:
    await sim.arm_fault("send", latency_seconds=2)
    with pytest.raises(httpx.ReadTimeout):
        await sim.api.post(
            f"/inboxes/{INBOX}/messages/send",
            json={"to": "someone@example.com", "subject": "s", "text": "t"},
            timeout=0.3,
        )
    assert len(await sim.outbox()) == 1  # the send happened; only the answer was late


async def test_idempotency_key__replays_the_original_and_refuses_a_different_body(sim: SimulatorControl) -> None:
    url = f"/inboxes/{INBOX}/messages/send"
    body = {"to": "someone@example.com", "subject": "s", "text": "t"}
    first = await sim.api.post(url, json=body, headers={"Idempotency-Key": "case-1.1"})
    replay = await sim.api.post(url, json=body, headers={"Idempotency-Key": "case-1.1"})
    assert replay.json() == first.json()
    assert len(await sim.outbox()) == 1
    conflict = await sim.api.post(url, json={**body, "text": "other"}, headers={"Idempotency-Key": "case-1.1"})
    assert (conflict.status_code, conflict.json()["code"]) == (409, "conflict")
    for bad in ("", "has:colon"):
        invalid = await sim.api.post(url, json=body, headers={"Idempotency-Key": bad})
        assert (invalid.status_code, invalid.json()["name"]) == (400, "ValidationError")


@pytest.mark.parametrize(
    ("authorization", "code"),
    [(None, "missing_authorization"), ("Bearer am_wrong", "unknown_api_key"), ("Basic abc", "invalid_token_type")],
)
async def test_v0_requires_the_bearer_api_key(simulator: Simulator, authorization: str | None, code: str) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    async with httpx.AsyncClient(base_url=simulator.url) as client:
        response = await client.get(f"/v0/inboxes/{INBOX}", headers=headers)
    assert response.status_code == 401
    assert response.json() == {"name": "UnauthorizedError", "code": code, "message": response.json()["message"]}


async def test_errors_use_agentmail_bodies(sim: SimulatorControl) -> None:
    no_recipient = await sim.api.post(f"/inboxes/{INBOX}/messages/send", json={"subject": "s", "text": "t"})
    assert no_recipient.status_code == 400
    assert no_recipient.json()["errors"] == [{"path": ["to"], "message": "to, cc, or bcc must be specified"}]
    bad_uuid = await sim.api.get(f"/inboxes/{INBOX}/threads/not-a-uuid")
    assert (bad_uuid.status_code, bad_uuid.json()["code"]) == (400, "validation_error")
    unknown = await sim.api.get(f"/inboxes/{INBOX}/messages/%3Cnope%40agentmail.sim%3E")
    assert unknown.json() == {"name": "NotFoundError", "code": "not_found", "message": "Message not found"}
    bad_body = await sim.api.post(f"/inboxes/{INBOX}/messages/send", json={"to": 5})
    assert (bad_body.status_code, bad_body.json()["errors"][0]["path"]) == (400, ["to"])


async def _async[T](value: T) -> T:
    return value


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
