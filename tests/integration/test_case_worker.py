"""The case worker, its scheduler/reconciler, the store and the outbox relay against a real nats-server and the
embedded MongoDB, with the rules agent and a stub adapter responder on the adapter's real subjects.

Each test drives the real JetStream consumers and request/reply handlers of the case service; nothing of NATS
or MongoDB is mocked. States that a lost or parked message would leave behind are written into the case
document directly, because that is all the reconciler may rely on.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import msgspec
import pytest
from prometheus_client import REGISTRY
from pymongo.asynchronous.database import AsyncDatabase

from deploy.processes import NatsServer
from services.case.lifecycle import RepairKind
from services.case.model import InputRequestRecord, UnjudgedReply, to_document
from services.case.store import UNMATCHED_MESSAGES
from shared.clock import now_ms
from shared.contracts import agentmail, case
from shared.contracts.case import NOTHING_SCHEDULED
from shared.errors import ErrorCode, ServiceError
from shared.messaging.jetstream import publish_durable
from shared.messaging.rpc import request
from shared.mongo import Document
from shared.subjects import AGENTMAIL_EVENTS, CASE_EVENTS
from shared.transcript_budget import TRANSCRIPT_MAX_BYTES
from tests.support.case_service import CLIENT, CaseHarness, case_service

VENDOR = "maya@vendor.example"
SIGNED = "Here is the signed W-9, attached."
ASKS_THE_AGENT = "Which document do you need exactly?"
ASKS_THE_CLIENT = "Can we send it by post instead of email?"


@pytest.fixture(scope="module")
def nats(log_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = NatsServer(log_dir=log_dir, store_dir=tmp_path_factory.mktemp("case_worker_jetstream"))
    server.log_path = log_dir / "nats_case_worker.log"
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def harness(nats: NatsServer, mongo_url: str, mongo_db: AsyncDatabase[Document]) -> AsyncIterator[CaseHarness]:
    async with case_service(nats.url, mongo_url, mongo_db) as running:
        yield running


@pytest.fixture
async def leased(nats: NatsServer, mongo_url: str, mongo_db: AsyncDatabase[Document]) -> AsyncIterator[CaseHarness]:
    """Leases of one second, for the reconciler."""
    leases = {"SEND_LEASE_SECONDS": "1", "INPUT_LEASE_SECONDS": "1", "REPLY_LEASE_SECONDS": "1"}
    async with case_service(nats.url, mongo_url, mongo_db, **leases) as running:
        yield running


def repairs(kind: RepairKind) -> float:
    return REGISTRY.get_sample_value("caseflow_reconciler_repairs_total", {"kind": kind}) or 0.0


async def case_events(harness: CaseHarness, case_id: str) -> list[str]:
    js = harness.client.connection.jetstream()
    info = await js.stream_info(CASE_EVENTS.name)
    types: list[str] = []
    for sequence in range(info.state.first_seq, info.state.last_seq + 1):
        stored = await js.get_msg(CASE_EVENTS.name, sequence)
        event = msgspec.json.decode(stored.data or b"{}", type=case.CaseEvent)
        if event.data.case_id == case_id:
            types.append(event.event_type)
    return types


async def due_now(harness: CaseHarness, case_id: str) -> None:
    """Make the case's follow-up due (instead of waiting out followUpDelayHours)."""
    await harness.store.cases.update_one({"_id": case_id}, {"$set": {"nextActionAt": now_ms() - 1}})


# ---- inbound mail: nothing discarded -------------------------------------------------------------------------


async def test_a_reply_arriving_before_the_first_email_is_confirmed_is_judged_not_dropped(
    harness: CaseHarness,
) -> None:
    # Two open cases for the same counterparty: the address alone cannot tell them apart, only the thread can.
    other = await harness.running(VENDOR)
    early: list[agentmail.MessageReceived] = []

    async def reply_before_the_confirmation(sent: agentmail.SendEmail | agentmail.ReplyEmail, thread_id: str) -> None:
        if sent.case_id != other and not early:
            early.append(await harness.deliver(thread_id=thread_id, text=SIGNED, from_address=VENDOR))
            await asyncio.sleep(0.3)  # the worker sees the reply while the thread is on no case yet

    harness.adapter.before_answer = reply_before_the_confirmation
    case_id = await harness.create(VENDOR)
    done = await harness.until(case_id, lambda record: record.status == "COMPLETED")
    assert done.result_status == "goal_achieved"
    assert early[0].message_id in done.handled_message_ids
    assert done.unjudged_replies == []
    assert await harness.db[UNMATCHED_MESSAGES].count_documents({}) == 0
    assert (await harness.case(other)).handled_message_ids == []


async def test_a_reply_the_adapter_knows_the_case_of_is_taken_by_that_case_at_once(harness: CaseHarness) -> None:
    first, second = await harness.running(VENDOR), await harness.running(VENDOR)
    # The adapter recorded our send in this thread; the case document does not have it yet.
    known = await harness.deliver(thread_id="th-unrecorded", text=SIGNED, from_address=VENDOR, case_id=second)
    done = await harness.until(second, lambda record: record.status == "COMPLETED")
    assert known.message_id in done.handled_message_ids
    assert "th-unrecorded" in done.thread_ids
    assert (await harness.case(first)).status == "RUNNING"
    assert await harness.db[UNMATCHED_MESSAGES].count_documents({}) == 0


async def test_a_fresh_email_from_a_counterparty_with_two_open_cases_is_stored_unmatched_and_listed(
    harness: CaseHarness, mongo_url: str, mongo_db: AsyncDatabase[Document]
) -> None:
    first, second = await harness.running(VENDOR), await harness.running(VENDOR)
    fresh = await harness.deliver(
        thread_id="th-fresh", text="Which of your requests is this about?", from_address=VENDOR
    )
    stored = await _eventually_unmatched(harness, fresh.message_id)
    assert stored["reason"] == "ambiguous"
    assert sorted(stored["candidateCaseIds"]) == sorted([first, second])
    # A redelivered event stores it once, and neither case took it.
    await publish_durable(harness.client, agentmail.MESSAGE_RECEIVED, fresh, stream=AGENTMAIL_EVENTS, msg_id="again")
    await asyncio.sleep(2.5)
    assert await harness.db[UNMATCHED_MESSAGES].count_documents({}) == 1
    for case_id in (first, second):
        record = await harness.case(case_id)
        assert (record.handled_message_ids, record.unjudged_replies) == ([], [])

    (row,) = json.loads(await _unmatched_list("json", mongo_url, mongo_db.name))
    assert (row["messageId"], row["reason"], row["fromAddress"]) == (fresh.message_id, "ambiguous", VENDOR)
    table = await _unmatched_list("table", mongo_url, mongo_db.name)
    assert fresh.message_id in table
    assert "ambiguous" in table


async def _unmatched_list(output_format: str, mongo_url: str, db_name: str) -> str:
    """`services.auth.admin unmatched list` against the test database; its standard output."""
    listed = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "services.auth.admin", "unmatched", "list", "--format", output_format],
        env={**os.environ, "MONGO_URL": mongo_url, "MONGO_DB": db_name},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert listed.returncode == 0, listed.stderr
    return listed.stdout


async def test_mail_from_an_unknown_sender_is_stored_unmatched(harness: CaseHarness) -> None:
    stranger = await harness.deliver(thread_id="th-stranger", text="Hello?", from_address="who@nowhere.example")
    stored = await _eventually_unmatched(harness, stranger.message_id)
    assert (stored["reason"], stored["candidateCaseIds"]) == ("no_case", [])


async def _eventually_unmatched(harness: CaseHarness, message_id: str) -> Document:
    for _ in range(200):
        document = await harness.db[UNMATCHED_MESSAGES].find_one({"_id": message_id})
        if document is not None:
            return document
        await asyncio.sleep(0.05)
    raise AssertionError(f"{message_id} was never stored as unmatched")


async def test_a_second_thread_is_recorded_and_the_transcript_and_delivery_events_cover_it(
    harness: CaseHarness,
) -> None:
    case_id = await harness.running(VENDOR)
    first_thread = harness.adapter.first_thread(case_id)
    fresh = await harness.deliver(thread_id="th-second", text="Thanks, I will look into it.", from_address=VENDOR)
    judged = await harness.until(case_id, lambda record: fresh.message_id in record.handled_message_ids)
    assert (judged.thread_id, judged.thread_ids) == (first_thread, [first_thread, "th-second"])

    view = await request(
        harness.client,
        case.GET,
        case.GetCase(client_id=CLIENT, case_id=case_id, include_transcript=True),
        case.CaseView,
        timeout=5,
    )
    assert isinstance(view.conversation_messages, list)
    assert [(m.direction, m.message_id) for m in view.conversation_messages] == [
        ("outbound", f"<{case_id}.1@stub.example>"),
        ("inbound", fresh.message_id),
    ]
    assert isinstance(view.conversation_thread, str)
    assert "Thanks, I will look into it." in view.conversation_thread

    # A bounce in the second thread reaches the case (by thread: the event names no case).
    bounce = agentmail.DeliveryEvent(
        event_id="evt-bounce", kind="bounced", inbox_id="x", message_id="<m>", thread_id="th-second", at=now_ms()
    )
    await publish_durable(harness.client, agentmail.DELIVERY_EVENT, bounce, stream=AGENTMAIL_EVENTS, msg_id="b1")
    failed = await harness.until(case_id, lambda record: record.status == "FAILED")
    assert failed.result_status == "BOUNCED"


async def test_a_case_whose_threads_each_fit_the_bus_but_not_together_shows_the_newest_that_fit(
    harness: CaseHarness,
) -> None:
    case_id = await harness.running(VENDOR)
    first_thread = harness.adapter.first_thread(case_id)
    # Each thread alone is within the adapter's budget; the two together are over it.
    large = "x" * (TRANSCRIPT_MAX_BYTES * 3 // 5)
    harness.adapter.threads[first_thread].append(
        agentmail.TranscriptMessage(
            direction="inbound",
            message_id="<in-large-1@counterparty.example>",
            from_address=VENDOR,
            to=["caseflow@stub.example"],
            subject="Re: W-9",
            text=large,
            at=now_ms(),
        )
    )
    fresh = await harness.deliver(thread_id="th-large", text=large, from_address=VENDOR)
    await harness.until(case_id, lambda record: fresh.message_id in record.handled_message_ids)

    view = await request(
        harness.client,
        case.GET,
        case.GetCase(client_id=CLIENT, case_id=case_id, include_transcript=True),
        case.CaseView,
        timeout=10,
    )
    assert isinstance(view.conversation_messages, list)
    # The newest message is kept; the older large one and the first email before it are counted, not shown.
    assert [m.message_id for m in view.conversation_messages] == [fresh.message_id]
    assert view.conversation_messages_omitted == 2
    assert isinstance(view.conversation_thread, str)
    assert view.conversation_thread.startswith("[2 earlier messages not shown")


# ---- one email in flight -------------------------------------------------------------------------------------


async def test_a_bounce_arriving_before_the_send_is_confirmed_fails_the_case(harness: CaseHarness) -> None:
    async def bounce_before_the_confirmation(sent: agentmail.SendEmail | agentmail.ReplyEmail, thread_id: str) -> None:
        bounce = agentmail.DeliveryEvent(
            event_id=f"evt-bounce-{sent.case_id}",
            kind="bounced",
            inbox_id="x",
            message_id=f"<{sent.case_id}.1@stub.example>",
            thread_id=thread_id,
            at=now_ms(),
        )
        await publish_durable(
            harness.client, agentmail.DELIVERY_EVENT, bounce, stream=AGENTMAIL_EVENTS, msg_id=bounce.event_id
        )
        await asyncio.sleep(0.3)

    harness.adapter.before_answer = bounce_before_the_confirmation
    case_id = await harness.create(VENDOR)
    failed = await harness.until(case_id, lambda record: record.status == "FAILED")
    assert (failed.result_status, failed.attempt_count) == ("BOUNCED", 1)


async def test_a_reply_judged_while_a_follow_up_is_in_flight_goes_out_under_its_own_attempt(
    harness: CaseHarness,
) -> None:
    case_id = await harness.running(VENDOR)
    harness.adapter.hold_sends()
    await due_now(harness, case_id)
    assert await harness.worker.run_due() == 1
    await harness.until(case_id, lambda record: record.send_claimed and record.awaiting_send == 2)
    question = await harness.deliver(
        thread_id=harness.adapter.first_thread(case_id), text=ASKS_THE_AGENT, from_address=VENDOR
    )
    waiting = await harness.until(case_id, lambda record: record.queued_send is not None)
    assert (waiting.awaiting_send, waiting.queued_send and waiting.queued_send.kind) == (2, "reply")
    assert harness.adapter.attempts(case_id) == [1, 2]
    harness.adapter.release_sends()
    answered = await harness.until(case_id, lambda record: record.attempt_count == 3)
    assert harness.adapter.attempts(case_id) == [1, 2, 3]
    reply = harness.adapter.requests[-1]
    assert isinstance(reply, agentmail.ReplyEmail)
    assert reply.in_reply_to_message_id == question.message_id
    assert harness.adapter.conflicts == []
    assert harness.adapter.most_in_flight[case_id] == 1
    assert (answered.awaiting_send, answered.queued_send, answered.status) == (None, None, "RUNNING")


async def test_a_send_confirmed_late_during_input_needed_keeps_the_pause(harness: CaseHarness) -> None:
    case_id = await harness.running(VENDOR)
    harness.adapter.hold_sends()
    await due_now(harness, case_id)
    await harness.worker.run_due()
    await harness.until(case_id, lambda record: record.send_claimed and record.awaiting_send == 2)
    await harness.deliver(thread_id=harness.adapter.first_thread(case_id), text=ASKS_THE_CLIENT, from_address=VENDOR)
    paused = await harness.until(case_id, lambda record: record.status == "INPUT_NEEDED")
    assert paused.input_request is not None
    assert paused.input_request.status == "PENDING"
    harness.adapter.release_sends()
    counted = await harness.until(case_id, lambda record: record.attempt_count == 2)
    assert counted.status == "INPUT_NEEDED"
    assert counted.input_request == paused.input_request
    assert counted.next_action_at == NOTHING_SCHEDULED
    assert (counted.awaiting_send, counted.send_claimed) == (None, False)
    # The pause is real: the client's answer is accepted, and the case goes on.
    accepted = await request(
        harness.client,
        case.PROVIDE_INPUT,
        case.ProvideInput(
            client_id=CLIENT, case_id=case_id, input_request_id=paused.input_request.id, provided_context="Email only."
        ),
        case.InputAccepted,
        timeout=5,
    )
    assert accepted.accepted
    resumed = await harness.until(case_id, lambda record: paused.input_request.id in record.handled_input_ids)  # type: ignore[union-attr]
    assert resumed.status != "INPUT_NEEDED"


# ---- cancel through the lifecycle ----------------------------------------------------------------------------


async def test_cancel_goes_through_the_lifecycle_and_a_late_confirmation_changes_nothing(
    harness: CaseHarness,
) -> None:
    case_id = await harness.running(VENDOR)
    harness.adapter.hold_sends()
    await due_now(harness, case_id)
    await harness.worker.run_due()
    await harness.until(case_id, lambda record: record.send_claimed)
    view = await request(
        harness.client, case.CANCEL, case.CaseRef(client_id=CLIENT, case_id=case_id), case.CaseView, timeout=5
    )
    assert (view.status, view.result_status) == ("CANCELLED", "cancelled")
    with pytest.raises(ServiceError) as again:
        await request(
            harness.client, case.CANCEL, case.CaseRef(client_id=CLIENT, case_id=case_id), case.CaseView, timeout=5
        )
    assert again.value.code is ErrorCode.CASE_NOT_CANCELLABLE
    cancelled = await harness.case(case_id)
    harness.adapter.release_sends()
    await asyncio.sleep(1.0)  # the in-flight follow-up's confirmation arrives (and is ignored)
    assert await harness.case(case_id) == msgspec.structs.replace(
        cancelled, version=(await harness.case(case_id)).version
    )
    assert (await harness.case(case_id)).attempt_count == 1
    for _ in range(40):
        if "case.cancelled" in await case_events(harness, case_id):
            break
        await asyncio.sleep(0.05)
    assert await case_events(harness, case_id) == ["case.cancelled"]


# ---- the reconciler ------------------------------------------------------------------------------------------


async def test_the_reconciler_queues_again_an_answer_that_was_never_applied_once(leased: CaseHarness) -> None:
    case_id = await leased.running(VENDOR)
    lost = await leased.case(case_id)
    # The client's answer was accepted (RESOLVED) and its command lost: only the case document knows.
    request_record = InputRequestRecord(
        id="ir-lost",
        question="Can we send it by post?",
        status="RESOLVED",
        requested_at=now_ms() - 5_000,
        provided_context="Yes, by post is fine.",
        answer_queued_at=now_ms() - 2_000,
    )
    stuck = msgspec.structs.replace(
        lost,
        status="INPUT_NEEDED",
        input_request=request_record,
        next_action_at=NOTHING_SCHEDULED,
        repair_at=now_ms() - 1_000,
        version=lost.version + 1,
    )
    assert await leased.store.replace(stuck, expected_version=lost.version)
    before = repairs("input_unapplied")
    assert await leased.worker.run_due() == 1
    assert await leased.worker.run_due() == 0  # idempotent: the lease was renewed
    assert repairs("input_unapplied") == before + 1
    applied = await leased.until(case_id, lambda record: "ir-lost" in record.handled_input_ids)
    assert applied.status != "INPUT_NEEDED"
    assert applied.repair_at is None or applied.awaiting_send is not None


async def test_the_reconciler_judges_again_a_reply_stored_but_never_judged_once(leased: CaseHarness) -> None:
    case_id = await leased.running(VENDOR)
    thread_id = leased.adapter.first_thread(case_id)
    # The reply is in the adapter's store and noted on the case; its judgement never happened.
    message = agentmail.MessageReceived(
        event_id="evt-lost",
        inbox_id="caseflow@stub.example",
        message_id="<in-lost@vendor.example>",
        thread_id=thread_id,
        from_address=VENDOR,
        to=["caseflow@stub.example"],
        subject="Re: W-9",
        text=SIGNED,
        received_at=now_ms(),
    )
    leased.adapter.threads[thread_id].append(
        agentmail.TranscriptMessage(
            direction="inbound",
            message_id=message.message_id,
            from_address=VENDOR,
            to=message.to,
            subject=message.subject,
            text=message.text,
            at=message.received_at,
        )
    )
    noted = UnjudgedReply(message_id=message.message_id, thread_id=thread_id, noted_at=now_ms() - 2_000)
    await leased.store.cases.update_one(
        {"_id": case_id},
        {
            "$set": {
                "unjudgedReplies": [msgspec.to_builtins(noted)],
                "repairAt": now_ms() - 1_000,
                "nextActionAt": now_ms() + 3_600_000,
            },
            "$inc": {"version": 1},
        },
    )
    before = repairs("reply_unjudged")
    assert await leased.worker.run_due() == 1
    assert await leased.worker.run_due() == 0
    assert repairs("reply_unjudged") == before + 1
    done = await leased.until(case_id, lambda record: record.status == "COMPLETED")
    assert message.message_id in done.handled_message_ids
    assert done.unjudged_replies == []


async def test_the_reconciler_requests_again_a_send_past_its_lease_once(leased: CaseHarness) -> None:
    case_id = await leased.running(VENDOR)
    lost = await leased.case(case_id)
    # Follow-up 2 was requested and its command lost.
    stuck = msgspec.structs.replace(
        lost,
        last_attempt=2,
        awaiting_send=2,
        awaiting_kind="follow_up",
        awaiting_in_reply_to=lost.last_message_id,
        send_requested_at=now_ms() - 2_000,
        next_action_at=now_ms() - 1_000,
        repair_at=now_ms() - 1_000,
        version=lost.version + 1,
    )
    await leased.store.cases.replace_one({"_id": case_id}, to_document(stuck))
    before = repairs("send_unconfirmed")
    assert await leased.worker.run_due() == 1
    assert await leased.worker.run_due() == 0
    assert repairs("send_unconfirmed") == before + 1
    sent = await leased.until(case_id, lambda record: record.attempt_count == 2)
    assert leased.adapter.attempts(case_id) == [1, 2]
    assert (sent.status, sent.awaiting_send, sent.repair_at) == ("RUNNING", None, None)
