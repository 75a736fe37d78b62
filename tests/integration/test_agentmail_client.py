"""The adapter's AgentMail client against the simulator over real HTTP: every call in the subset, the retry
policy (408, 409, 429 with Retry-After, 5xx, timeouts under one Idempotency-Key; never 400/422), the failure
class of each answer (transient, misconfigured, terminal), rejections, and paging.

The client's `sleep` is replaced by one that records the waits the policy chose and then really waits (for at
most a few milliseconds), so the tests assert the policy's decisions without measuring time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from deploy.processes import Simulator, free_port
from services.agentmail_adapter.client import (
    AgentMailError,
    AgentMailMisconfigured,
    AgentMailRefused,
    AgentMailUnavailable,
    MessageRejected,
)
from services.agentmail_adapter.payloads import CreateInbox, CreateWebhook, ReplyMessage, SendMessage, SentMessage
from shared.failures import DEPENDENCY_PROBLEMS
from shared.settings import AgentMailSettings, load_settings
from tests.support.agentmail_client import AgentMailTestClient
from tests.support.simulator import INBOX, SimulatorControl, running_simulator

W9 = SendMessage(to=["someone@example.com"], subject="Signed W-9", text="Could you send us your signed W-9?")


@pytest.fixture(scope="module")
def simulator(log_dir: Path) -> Iterator[Simulator]:
    with running_simulator(log_dir) as running:
        yield running


@pytest.fixture
async def sim(simulator: Simulator) -> AsyncIterator[SimulatorControl]:
    control = SimulatorControl(simulator.url)
    await control.reset()
    yield control
    await control.aclose()


class RecordedWaits(list[float]):
    async def __call__(self, seconds: float) -> None:
        self.append(seconds)
        await asyncio.sleep(min(seconds, 0.01))


@pytest.fixture
def waits() -> RecordedWaits:
    return RecordedWaits()


def settings_for(simulator: Simulator, **overrides: str) -> AgentMailSettings:
    return load_settings(
        AgentMailSettings,
        {
            "AGENTMAIL_BASE_URL": simulator.url,
            "AGENTMAIL_MAX_RETRIES": "3",
            "AGENTMAIL_RETRY_BASE_SECONDS": "0.05",
            "AGENTMAIL_RETRY_MAX_SECONDS": "5",
            **overrides,
        },
    )


@pytest.fixture
async def client(simulator: Simulator, waits: RecordedWaits) -> AsyncIterator[AgentMailTestClient]:
    mail = AgentMailTestClient(settings_for(simulator), sleep=waits)
    yield mail
    await mail.aclose()


async def send(mail: AgentMailTestClient, key: str = "case-1.1") -> SentMessage:
    result = await mail.send_message(INBOX, W9, idempotency_key=key)
    assert isinstance(result, SentMessage)
    return result


async def test_send_reply_and_read_back_with_message_ids_encoded_in_paths(
    client: AgentMailTestClient, sim: SimulatorControl
) -> None:
    sent = await send(client)
    assert sent.message_id.startswith("<")
    assert "@" in sent.message_id
    replied = await client.reply_to_message(
        INBOX, sent.message_id, ReplyMessage(text="Just following up."), idempotency_key="case-1.2"
    )
    assert isinstance(replied, SentMessage)
    assert replied.thread_id == sent.thread_id
    message = await client.get_message(INBOX, replied.message_id)
    assert message.in_reply_to == sent.message_id
    assert message.to == ["someone@example.com"]
    assert message.subject == "Re: Signed W-9"
    outbox = await sim.outbox()
    assert [m["message_id"] for m in outbox] == [sent.message_id, replied.message_id]
    assert [c["idempotency_key"] for c in await sim.calls("send")] == ["case-1.1"]
    [read] = await sim.calls("get_message")
    assert replied.message_id in read["path"]
    assert "%3C" in read["raw_path"]  # `<`, `>` and `@` travel percent-encoded
    assert "%40" in read["raw_path"]


async def test_inbox_create_is_idempotent_by_client_id_and_get_finds_it(client: AgentMailTestClient) -> None:
    created = await client.create_inbox(CreateInbox(username="outreach", domain="sim.example", client_id="tenant-1"))
    again = await client.create_inbox(CreateInbox(username="ignored", client_id="tenant-1"))
    assert again.inbox_id == created.inbox_id == "outreach@sim.example"
    assert (await client.get_inbox("outreach@sim.example")).email == "outreach@sim.example"
    with pytest.raises(AgentMailError) as missing:
        await client.get_inbox("nobody@sim.example")
    assert (missing.value.status, missing.value.code) == (404, "not_found")


async def test_webhook_create_returns_its_signing_secret(client: AgentMailTestClient) -> None:
    webhook = await client.create_webhook(
        CreateWebhook(url="https://example.com/hooks", event_types=["message.received"], client_id="caseflow")
    )
    assert webhook.secret.startswith("whsec_")
    assert webhook.event_types == ["message.received"]
    assert webhook.enabled


async def test_attachment_link_downloads_the_real_bytes(client: AgentMailTestClient, sim: SimulatorControl) -> None:
    injected = await sim.inject(from_="agree@sim.example", text="Attached.", attachments=[{"filename": "w9.pdf"}])
    message = await client.get_message(INBOX, injected["message"]["message_id"])
    attachment = message.attachments[0]
    link = await client.get_attachment(INBOX, message.message_id, attachment.attachment_id)
    assert link.expires_at
    async with httpx.AsyncClient() as anonymous:
        content = (await anonymous.get(link.download_url)).content
    assert content.startswith(b"%PDF-")
    assert len(content) == attachment.size


async def test_429_with_retry_after_is_retried_after_exactly_that_wait(
    client: AgentMailTestClient, sim: SimulatorControl, waits: RecordedWaits
) -> None:
    await sim.arm_fault("send", count=2, status=429, retry_after=2)
    await send(client)
    assert waits == [2.0, 2.0]
    calls = await sim.calls("send")
    assert [c["status"] for c in calls] == [429, 429, 200]
    assert {c["idempotency_key"] for c in calls} == {"case-1.1"}
    assert len(await sim.outbox()) == 1


async def test_500_and_503_are_retried_with_bounded_exponential_backoff(
    client: AgentMailTestClient, sim: SimulatorControl, waits: RecordedWaits
) -> None:
    await sim.arm_fault("get_inbox", count=1, status=500)
    await sim.arm_fault("get_inbox", count=1, status=503)
    assert (await client.get_inbox(INBOX)).inbox_id == INBOX
    assert [c["status"] for c in await sim.calls("get_inbox")] == [500, 503, 200]
    assert len(waits) == 2
    assert 0 <= waits[0] <= 0.05
    assert 0 <= waits[1] <= 0.1


async def test_a_timeout_then_a_retry_sends_exactly_one_email(simulator: Simulator, sim: SimulatorControl) -> None:
    await sim.arm_fault("send", latency_seconds=3)
    mail = AgentMailTestClient(settings_for(simulator, AGENTMAIL_TIMEOUT_SECONDS="0.5"))
    try:
        first = await send(mail)
    finally:
        await mail.aclose()
    calls = await sim.calls("send")
    assert len(calls) == 2
    assert calls[0]["faulted"]
    assert {c["idempotency_key"] for c in calls} == {"case-1.1"}
    outbox = await sim.outbox()
    assert [m["message_id"] for m in outbox] == [first.message_id]


@pytest.mark.parametrize("status", [400, 422])
async def test_400_and_422_are_final_and_not_retried(
    client: AgentMailTestClient, sim: SimulatorControl, waits: RecordedWaits, status: int
) -> None:
    await sim.arm_fault("send", count=3, status=status)
    with pytest.raises(AgentMailError) as error:
        await send(client)
    assert isinstance(error.value, AgentMailRefused)
    assert error.value.kind == "terminal"
    assert error.value.status == status
    assert len(await sim.calls("send")) == 1
    assert waits == []


async def test_transient_failures_that_outlast_the_retries_are_unavailable(
    client: AgentMailTestClient, sim: SimulatorControl
) -> None:
    await sim.arm_fault("send", count=10, status=503)
    with pytest.raises(AgentMailUnavailable):
        await send(client)
    assert len(await sim.calls("send")) == 4  # the first attempt and AGENTMAIL_MAX_RETRIES=3 retries


async def test_a_retry_after_beyond_the_maximum_delay_stops_at_once(
    client: AgentMailTestClient, sim: SimulatorControl, waits: RecordedWaits
) -> None:
    await sim.arm_fault("send", status=429, retry_after=60)
    with pytest.raises(AgentMailUnavailable) as error:
        await send(client)
    assert error.value.status == 429
    assert waits == []
    assert len(await sim.outbox()) == 0


async def test_an_unreachable_api_is_retried_then_unavailable(waits: RecordedWaits) -> None:
    settings = load_settings(
        AgentMailSettings,
        {"AGENTMAIL_BASE_URL": f"http://127.0.0.1:{free_port()}", "AGENTMAIL_MAX_RETRIES": "2"},
    )
    mail = AgentMailTestClient(settings, sleep=waits)
    try:
        with pytest.raises(AgentMailUnavailable, match="ConnectError"):
            await mail.get_inbox(INBOX)
    finally:
        await mail.aclose()
    assert len(waits) == 2


async def test_403_message_rejected_is_a_typed_rejection_and_other_403s_are_errors(
    client: AgentMailTestClient, sim: SimulatorControl
) -> None:
    rejected = await client.send_message(
        INBOX, SendMessage(to=["reject@sim.example"], subject="Hi", text="Hello"), idempotency_key="case-2.1"
    )
    assert isinstance(rejected, MessageRejected)
    assert "reject@sim.example" in rejected.reason
    sent = await send(client)
    await sim.delivery_event(sent.message_id, "bounced")
    bounced_again = await client.reply_to_message(
        INBOX, sent.message_id, ReplyMessage(text="Again?"), idempotency_key="case-1.2"
    )
    assert isinstance(bounced_again, MessageRejected)
    await sim.arm_fault("send", status=403, code="missing_permission")
    with pytest.raises(AgentMailError) as forbidden:
        await send(client, key="case-3.1")
    assert forbidden.value.code == "missing_permission"
    assert isinstance(forbidden.value, AgentMailMisconfigured)
    DEPENDENCY_PROBLEMS.clear("agentmail")


async def test_a_wrong_api_key_is_a_final_401(simulator: Simulator) -> None:
    mail = AgentMailTestClient(settings_for(simulator, AGENTMAIL_API_KEY="am_wrong"))
    try:
        with pytest.raises(AgentMailMisconfigured) as error:
            await mail.get_inbox(INBOX)
        assert "unknown_api_key" in DEPENDENCY_PROBLEMS.current()["agentmail"]
    finally:
        await mail.aclose()
        DEPENDENCY_PROBLEMS.clear("agentmail")
    assert (error.value.status, error.value.code, error.value.kind) == (401, "unknown_api_key", "misconfigured")


async def test_408_and_409_are_retried_under_the_same_key(
    client: AgentMailTestClient, sim: SimulatorControl, waits: RecordedWaits
) -> None:
    await sim.arm_fault("send", count=1, status=408)
    await sim.arm_fault("send", count=1, status=409)
    await send(client)
    assert [c["status"] for c in await sim.calls("send")] == [408, 409, 200]
    assert len(waits) == 2


async def test_a_50_message_thread_reads_the_same_paged_and_unpaged(
    client: AgentMailTestClient, sim: SimulatorControl
) -> None:
    first = await send(client)
    last_id = first.message_id
    for n in range(2, 51):
        if n % 2:
            result = await client.reply_to_message(
                INBOX, last_id, ReplyMessage(text=f"Message {n}"), idempotency_key=f"case-1.{n}"
            )
            assert isinstance(result, SentMessage)
            last_id = result.message_id
        else:
            injected = await sim.inject(from_="someone@example.com", text=f"Message {n}", in_reply_to=last_id)
            last_id = injected["message"]["message_id"]

    unpaged = await client.get_thread(INBOX, first.thread_id)
    assert unpaged.next_page_token is None
    assert len(unpaged.messages) == 50

    newest = await client.get_thread(INBOX, first.thread_id, limit=20)
    assert newest.count == 20
    assert newest.next_page_token
    assert [m.message_id for m in newest.messages] == [m.message_id for m in unpaged.messages[30:]]

    calls_before = len(await sim.calls("get_thread"))
    paged = await client.get_thread_messages(INBOX, first.thread_id, page_size=20)
    assert [m.message_id for m in paged] == [m.message_id for m in unpaged.messages]
    assert [m.extracted_text or "" for m in paged][1:3] == ["Message 2", "Message 3"]
    assert len(await sim.calls("get_thread")) - calls_before == 3
