"""The case state machine as a table of (state, event) → expectation. Pure: no I/O, no clock but the given one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
import pytest

from services.case import domain
from services.case.agent.port import Draft, Judgement
from services.case.lifecycle import (
    SEND_LEASE_MS,
    AgentStuck,
    CancelRequested,
    CaseStarted,
    DeliveryFailed,
    EmailSent,
    Event,
    FollowUpDue,
    InboundEmail,
    InputJudged,
    InputProvided,
    ReplyJudged,
    ReplyReceived,
    SendFailed,
    SendRejected,
    SendStarted,
    Timing,
    apply_request,
    due_at,
    repairs_due,
    request_refusal,
    transition,
    with_human_context,
)
from services.case.model import (
    CaseRecord,
    InputRequestRecord,
    JudgeReplyCommand,
    QueuedSend,
    SendEmailCommand,
    from_document,
    to_document,
)
from shared.contracts.case import (
    CMD_INPUT_PROVIDED,
    CMD_JUDGE_REPLY,
    CMD_SEND,
    NOTHING_SCHEDULED,
    STATUS_HISTORY_LIMIT,
    AttachmentMeta,
    CaseEvent,
    InputProvidedCommand,
    NewCase,
    StatusChange,
)
from shared.errors import ErrorCode, ServiceError

HOUR = 1_000  # one scaled follow-up hour, in ms
T0 = 1_000_000
SCHEMA = {"type": "object", "properties": {"signed": {"type": "boolean"}}, "required": ["signed"]}
PDF = AttachmentMeta(
    attachment_id="att-1",
    name="w9.pdf",
    size=10,
    type="application/pdf",
    message_id="<in-1@sim.example>",
    inbox_id="caseflow@sim.example",
    received_at=T0,
)


def clock(now: int = T0) -> Timing:
    return Timing(now=now, hour_ms=HOUR)


def new(**changes: Any) -> CaseRecord:
    body = msgspec.convert(
        {
            "channel": "EMAIL",
            "goal": {"objective": "Collect a signed W-9", "knowledge": "Vendor onboarding"},
            "counterparty": {"address": "ap@vendor.example", "name": "Maya"},
            "senderPersona": {"name": "Avery"},
            "maxAttempts": 2,
            "followUpDelayHours": 72,
            "resultSchema": SCHEMA,
            "clientWebhookUrl": "https://hooks.example.com/x",
        },
        NewCase,
    )
    record = domain.new_case(case_id="c1", client_id="alice", body=body, now=T0 - 10)
    record = msgspec.structs.replace(record, outbox=[], outbox_pending_since=None, pending_create=False)
    return msgspec.structs.replace(record, **changes)


def running(**changes: Any) -> CaseRecord:
    base = {
        "status": "RUNNING",
        "attempt_count": 1,
        "last_attempt": 1,
        "thread_id": "th-1",
        "thread_ids": ["th-1"],
        "last_message_id": "<out-1@sim.example>",
        "next_action_at": T0,
    }
    return new(**{**base, **changes})


def waiting(**changes: Any) -> CaseRecord:
    request = InputRequestRecord(id="ir-1", question="PDF ok?", status="PENDING", requested_at=T0 - 5)
    return running(status="INPUT_NEEDED", input_request=request, next_action_at=NOTHING_SCHEDULED, **changes)


def reply(outcome: str, **judgement: Any) -> ReplyJudged:
    return ReplyJudged(
        message=InboundEmail(message_id="<in-1@sim.example>", attachments=(PDF,)),
        judgement=Judgement(outcome=outcome, **judgement),  # type: ignore[arg-type]
    )


def sends(case: CaseRecord) -> list[SendEmailCommand]:
    return [msgspec.json.decode(m.payload, type=SendEmailCommand) for m in case.outbox if m.subject == CMD_SEND]


def events(case: CaseRecord) -> list[CaseEvent]:
    return [msgspec.json.decode(m.payload, type=CaseEvent) for m in case.outbox if m.subject.startswith("case.evt.")]


@dataclass(frozen=True)
class Row:
    name: str
    before: CaseRecord
    event: Event
    status: str
    result_status: str | None = None
    send: tuple[int, str] | None = None  # (attempt, kind) of the email requested
    event_type: str | None = None  # the client webhook event owed
    attempt_count: int | None = None


TABLE = [
    Row("created: start asks for the first email", new(), CaseStarted(), "CREATED", send=(1, "first")),
    Row(
        "created: first send confirmed",
        new(awaiting_send=1, awaiting_kind="first"),
        EmailSent(attempt=1, kind="first", message_id="<out-1>", thread_id="th-1", sent_at=T0),
        "RUNNING",
        attempt_count=1,
    ),
    Row(
        "created: first send rejected",
        new(awaiting_send=1),
        SendRejected(attempt=1, reason="blocked"),
        "FAILED",
        result_status="REJECTED",
        event_type="case.failed",
    ),
    Row(
        "created: first send failed for good",
        new(awaiting_send=1),
        SendFailed(attempt=1, reason="invalid recipient"),
        "FAILED",
        result_status="send_failed",
        event_type="case.failed",
    ),
    Row("running: follow-up due with budget", running(), FollowUpDue(), "RUNNING", send=(2, "follow_up")),
    Row(
        "running: follow-up due, budget spent",
        running(attempt_count=3, follow_ups_since_reply=2),
        FollowUpDue(),
        "FAILED",
        result_status="max_retries",
        event_type="case.failed",
    ),
    Row(
        "running: a reply resets the budget",
        running(attempt_count=3, follow_ups_since_reply=0),
        FollowUpDue(),
        "RUNNING",
        send=(4, "follow_up"),
    ),
    Row("running: not yet due", running(next_action_at=T0 + 1), FollowUpDue(), "RUNNING"),
    Row(
        "running: goal achieved with a valid result",
        running(),
        reply("GOAL_ACHIEVED", result={"signed": True}),
        "COMPLETED",
        result_status="goal_achieved",
        event_type="case.completed",
    ),
    Row(
        "running: goal achieved but the result does not validate",
        running(),
        reply("GOAL_ACHIEVED", result={"signed": "yes"}),
        "INPUT_NEEDED",
        event_type="case.input_needed",
    ),
    Row(
        "running: requires reply",
        running(),
        reply("REQUIRES_REPLY", reply=Draft(subject="Re: W-9", text="It is for onboarding.")),
        "RUNNING",
        send=(2, "reply"),
    ),
    Row(
        "running: needs input",
        running(),
        reply("NEEDS_INPUT", question="Is a PDF fine?"),
        "INPUT_NEEDED",
        event_type="case.input_needed",
    ),
    Row(
        "running: refused",
        running(),
        reply("REFUSED", reason="Policy forbids it."),
        "FAILED",
        result_status="failed_rejected",
        event_type="case.failed",
    ),
    Row("running: wait", running(), reply("WAIT"), "RUNNING"),
    Row(
        "running: bounce",
        running(),
        DeliveryFailed(kind="bounced", message_id="<out-1>"),
        "FAILED",
        result_status="BOUNCED",
        event_type="case.failed",
    ),
    Row(
        "running: complaint",
        running(),
        DeliveryFailed(kind="complained", message_id="<out-1>"),
        "FAILED",
        result_status="COMPLAINED",
        event_type="case.failed",
    ),
    Row(
        "running: rejection event",
        running(),
        DeliveryFailed(kind="rejected", message_id="<out-1>"),
        "FAILED",
        result_status="REJECTED",
        event_type="case.failed",
    ),
    Row(
        "input needed: input leads to a reply",
        waiting(last_inbound_message_id="<in-0>"),
        InputJudged(
            input_request_id="ir-1",
            provided_context="A PDF is fine.",
            judgement=Judgement(outcome="REQUIRES_REPLY", reply=Draft(subject="Re", text="A PDF is fine.")),
        ),
        "RUNNING",
        send=(2, "reply"),
    ),
    Row(
        "input needed: input completes the goal",
        waiting(),
        InputJudged(
            input_request_id="ir-1",
            provided_context="It was received by post.",
            judgement=Judgement(outcome="GOAL_ACHIEVED", result={"signed": True}),
        ),
        "COMPLETED",
        result_status="goal_achieved",
        event_type="case.completed",
    ),
    Row(
        "input needed: stale input id changes nothing",
        waiting(),
        InputJudged(input_request_id="ir-0", provided_context="x", judgement=Judgement(outcome="WAIT")),
        "INPUT_NEEDED",
    ),
    Row("input needed: follow-ups are paused", waiting(), FollowUpDue(), "INPUT_NEEDED"),
    Row(
        "running: the agent cannot proceed",
        running(awaiting_send=2, awaiting_kind="follow_up"),
        AgentStuck(question="The model token budget for this case is spent.", source="compose:2"),
        "INPUT_NEEDED",
        event_type="case.input_needed",
    ),
]


@pytest.mark.parametrize("row", TABLE, ids=[row.name for row in TABLE])
def test_transition_table(row: Row) -> None:
    after = transition(row.before, row.event, clock())
    assert after.status == row.status
    assert after.result_status == row.result_status
    requested = sends(after)
    assert [(c.attempt, c.kind) for c in requested] == ([row.send] if row.send else [])
    owed = events(after)
    assert [e.event_type for e in owed] == ([row.event_type] if row.event_type else [])
    if row.attempt_count is not None:
        assert after.attempt_count == row.attempt_count
    if after.status in {"COMPLETED", "FAILED", "INPUT_NEEDED"}:
        assert after.next_action_at == NOTHING_SCHEDULED
    if owed:
        assert owed[0].timestamp == after.updated_at > row.before.updated_at
        assert owed[0].event_id == f"evt_c1_{owed[0].event_type.replace('.', '_')}_{after.updated_at}"
    # A status change is recorded on the timeline by the same transition; anything else leaves it alone.
    if after.status == row.before.status:
        assert after.status_history == row.before.status_history
    else:
        assert after.status_history[:-1] == row.before.status_history
        assert (after.status_history[-1].status, after.status_history[-1].at) == (after.status, after.updated_at)


@pytest.mark.parametrize("status", ["COMPLETED", "FAILED", "CANCELLED"])
@pytest.mark.parametrize(
    "event",
    [
        CaseStarted(),
        FollowUpDue(),
        EmailSent(attempt=9, kind="follow_up", message_id="<late>", thread_id="th-1", sent_at=T0),
        reply("GOAL_ACHIEVED", result={"signed": True}),
        DeliveryFailed(kind="bounced", message_id="<out-1>"),
    ],
)
def test_terminal_cases_ignore_late_events(status: str, event: Event) -> None:
    terminal = running(status=status, next_action_at=NOTHING_SCHEDULED)
    assert transition(terminal, event, clock()) == terminal


@pytest.mark.parametrize(
    ("before", "event"),
    [
        (
            running(handled_message_ids=["<in-1@sim.example>"]),
            reply("GOAL_ACHIEVED", result={"signed": True}),
        ),
        (
            running(attempt_count=2),
            EmailSent(attempt=2, kind="follow_up", message_id="<out-2>", thread_id="th-1", sent_at=T0),
        ),
        (running(attempt_count=2), SendRejected(attempt=2, reason="late")),
        (new(awaiting_send=1, awaiting_kind="first"), CaseStarted()),
        (
            waiting(handled_input_ids=["ir-1"]),
            InputJudged(input_request_id="ir-1", provided_context="again", judgement=Judgement(outcome="WAIT")),
        ),
    ],
)
def test_duplicate_events_change_nothing(before: CaseRecord, event: Event) -> None:
    assert transition(before, event, clock()) == before


def test_first_email_confirmation_schedules_the_follow_up_one_delay_later() -> None:
    after = transition(
        new(awaiting_send=1, awaiting_kind="first"),
        EmailSent(attempt=1, kind="first", message_id="<out-1>", thread_id="th-9", sent_at=T0),
        clock(T0 + 5),
    )
    assert after.next_action_at == T0 + 72 * HOUR
    assert (after.thread_id, after.last_message_id, after.awaiting_send) == ("th-9", "<out-1>", None)


def test_a_silent_counterparty_gets_max_attempts_plus_one_emails_then_max_retries() -> None:
    case = transition(new(), CaseStarted(), clock())
    now = T0
    emails = 0
    while case.status != "FAILED":
        (command,) = sends(case) or [None]  # type: ignore[list-item]
        if command is not None:
            emails += 1
            case = msgspec.structs.replace(case, outbox=[])
            case = transition(
                case,
                EmailSent(
                    attempt=command.attempt, kind=command.kind, message_id=f"<o{emails}>", thread_id="t", sent_at=now
                ),
                clock(now),
            )
        now = case.next_action_at
        case = transition(case, FollowUpDue(), clock(now))
        assert emails <= 10
    assert emails == 3  # maxAttempts 2 → first email + 2 follow-ups
    assert case.result_status == "max_retries"
    assert case.updated_at == T0 + 3 * 72 * HOUR  # one delay after the last follow-up


def test_an_unconfirmed_send_is_requested_again_with_the_same_attempt_after_the_lease() -> None:
    asked = transition(running(), FollowUpDue(), clock())
    assert asked.next_action_at == T0 + SEND_LEASE_MS
    cleared = msgspec.structs.replace(asked, outbox=[])
    again = transition(cleared, FollowUpDue(), clock(T0 + SEND_LEASE_MS))
    assert [(c.attempt, c.kind) for c in sends(again)] == [(2, "follow_up")]
    assert sends(again)[0].in_reply_to == "<out-1@sim.example>"


def test_a_reply_records_attachments_once_and_its_message_as_the_one_to_answer() -> None:
    after = transition(running(), reply("WAIT"), clock())
    assert after.attachments == [PDF]
    assert after.last_inbound_message_id == "<in-1@sim.example>"
    assert after.follow_ups_since_reply == 0
    assert after.next_action_at == T0  # WAIT keeps the schedule


def test_needs_input_creates_a_pending_request_flattened_into_the_event() -> None:
    after = transition(running(), reply("NEEDS_INPUT", question="Is a PDF fine?"), clock())
    assert after.input_request is not None
    assert (after.input_request.question, after.input_request.status) == ("Is a PDF fine?", "PENDING")
    assert after.input_request.requested_at == after.updated_at
    data = events(after)[0].data
    assert (data.input_request, data.input_request_id, data.input_request_status, data.input_requested_at) == (
        "Is a PDF fine?",
        after.input_request.id,
        "PENDING",
        after.updated_at,
    )
    # Recomputing the same transition gives the same request id (so a retried handler is harmless).
    assert transition(running(), reply("NEEDS_INPUT", question="Is a PDF fine?"), clock()).input_request == (
        after.input_request
    )


def test_a_result_that_does_not_validate_never_completes() -> None:
    for result in (None, {}, {"signed": "yes"}, {"other": 1}):
        after = transition(running(), reply("GOAL_ACHIEVED", result=result), clock())
        assert after.status == "INPUT_NEEDED"
        assert after.result is None
        assert after.input_request is not None
        assert "resultSchema" in after.input_request.question


def test_without_a_schema_any_result_completes() -> None:
    after = transition(running(result_schema=None), reply("GOAL_ACHIEVED"), clock())
    assert (after.status, after.result) == ("COMPLETED", {})


@pytest.mark.parametrize(
    ("knowledge", "expected"),
    [
        (None, {"additionalHumanContext": ["PDF is fine"]}),
        ("Vendor onboarding", {"text": "Vendor onboarding", "additionalHumanContext": ["PDF is fine"]}),
        ({"vendor": "N"}, {"vendor": "N", "additionalHumanContext": ["PDF is fine"]}),
        (
            {"additionalHumanContext": ["earlier"]},
            {"additionalHumanContext": ["earlier", "PDF is fine"]},
        ),
    ],
)
def test_input_is_appended_to_the_knowledge(knowledge: Any, expected: dict[str, Any]) -> None:
    case = running()
    case = msgspec.structs.replace(case, goal=msgspec.structs.replace(case.goal, knowledge=knowledge))
    assert with_human_context(case, "PDF is fine").goal.knowledge == expected


def test_input_marks_the_request_resolved_and_restarts_the_clock_on_wait() -> None:
    after = transition(
        waiting(),
        InputJudged(input_request_id="ir-1", provided_context="Hold on", judgement=Judgement(outcome="WAIT")),
        clock(),
    )
    assert after.status == "RUNNING"
    assert after.input_request is not None
    assert after.input_request.status == "RESOLVED"
    assert after.next_action_at == T0 + 72 * HOUR
    assert isinstance(after.goal.knowledge, dict)
    assert after.goal.knowledge["additionalHumanContext"] == ["Hold on"]


def test_model_tokens_are_added_up_on_the_case_and_not_twice_for_a_repeat() -> None:
    from services.case.agent.port import TokenUsage

    judged = ReplyJudged(
        message=InboundEmail(message_id="<in-7>"),
        judgement=Judgement(outcome="WAIT", usage=TokenUsage(prompt_tokens=100, completion_tokens=20)),
    )
    once = transition(running(), judged, clock())
    assert (once.token_usage.prompt_tokens, once.token_usage.completion_tokens) == (100, 20)
    assert transition(once, judged, clock()) == once
    sent = EmailSent(
        attempt=2, kind="follow_up", message_id="<o2>", thread_id="th-1", sent_at=T0, usage=TokenUsage(50, 10)
    )
    twice = transition(msgspec.structs.replace(once, awaiting_send=2, awaiting_kind="follow_up"), sent, clock())
    assert (twice.token_usage.prompt_tokens, twice.token_usage.completion_tokens) == (150, 30)


# ---- one email in flight, a fresh attempt number per distinct email ------------------------------------------


def sending_follow_up(*, claimed: bool, **changes: Any) -> CaseRecord:
    """Follow-up attempt 2 requested; `claimed`: the worker has started sending it (its body is fixed)."""
    base: dict[str, Any] = {
        "last_attempt": 2,
        "awaiting_send": 2,
        "awaiting_kind": "follow_up",
        "awaiting_in_reply_to": "<out-1@sim.example>",
        "send_requested_at": T0,
        "next_action_at": T0 + SEND_LEASE_MS,
    }
    if claimed:
        base |= {"send_claimed": True, "outgoing_subject": "Re: W-9", "outgoing_text": "Just following up."}
    return running(**{**base, **changes})


def confirmed(attempt: int, kind: str = "follow_up") -> EmailSent:
    return EmailSent(attempt=attempt, kind=kind, message_id=f"<out-{attempt}>", thread_id="th-1", sent_at=T0)  # type: ignore[arg-type]


ANSWER = reply("REQUIRES_REPLY", reply=Draft(subject="Re: W-9", text="It is for onboarding."))


@dataclass(frozen=True)
class InFlightRow:
    name: str
    before: CaseRecord
    event: Event
    status: str
    awaiting_send: int | None
    send: tuple[int, str] | None = None  # the email requested by this event
    queued: str | None = None  # the kind of the email waiting behind the one in flight
    attempt_count: int | None = None


IN_FLIGHT = [
    InFlightRow(
        "a reply judged while a follow-up is requested but not yet being sent supersedes it under a new number",
        sending_follow_up(claimed=False),
        ANSWER,
        "RUNNING",
        awaiting_send=3,
        send=(3, "reply"),
    ),
    InFlightRow(
        "a reply judged while a follow-up is being sent waits for it: nothing new is requested",
        sending_follow_up(claimed=True),
        ANSWER,
        "RUNNING",
        awaiting_send=2,
        queued="reply",
    ),
    InFlightRow(
        "the follow-up's confirmation requests the waiting reply under the next number",
        sending_follow_up(claimed=True, queued_send=QueuedSend(kind="reply", in_reply_to="<in-1>", draft_text="Hi")),
        confirmed(2),
        "RUNNING",
        awaiting_send=3,
        send=(3, "reply"),
        attempt_count=2,
    ),
    InFlightRow(
        "needs input while a follow-up is being sent: the follow-up stays in flight",
        sending_follow_up(claimed=True),
        reply("NEEDS_INPUT", question="Is a PDF fine?"),
        "INPUT_NEEDED",
        awaiting_send=2,
    ),
    InFlightRow(
        "needs input while a follow-up is only requested: the follow-up is dropped",
        sending_follow_up(claimed=False),
        reply("NEEDS_INPUT", question="Is a PDF fine?"),
        "INPUT_NEEDED",
        awaiting_send=None,
    ),
    InFlightRow(
        "a send confirmed late during INPUT_NEEDED is counted and the pause stays",
        sending_follow_up(
            claimed=True,
            status="INPUT_NEEDED",
            next_action_at=NOTHING_SCHEDULED,
            input_request=InputRequestRecord(id="ir-1", question="PDF ok?", status="PENDING", requested_at=T0),
        ),
        confirmed(2),
        "INPUT_NEEDED",
        awaiting_send=None,
        attempt_count=2,
    ),
    InFlightRow(
        "the confirmation of a superseded attempt changes nothing",
        sending_follow_up(claimed=False, last_attempt=3, awaiting_send=3, awaiting_kind="reply"),
        confirmed(2),
        "RUNNING",
        awaiting_send=3,
        attempt_count=1,
    ),
    InFlightRow(
        "a claim for a superseded attempt changes nothing",
        sending_follow_up(claimed=False, last_attempt=3, awaiting_send=3, awaiting_kind="reply"),
        SendStarted(attempt=2, subject="Re", text="stale body"),
        "RUNNING",
        awaiting_send=3,
    ),
    InFlightRow(
        "a follow-up is not due while a reply is in flight",
        sending_follow_up(claimed=True, next_action_at=T0),
        FollowUpDue(),
        "RUNNING",
        awaiting_send=2,
    ),
]


@pytest.mark.parametrize("row", IN_FLIGHT, ids=[row.name for row in IN_FLIGHT])
def test_one_email_in_flight(row: InFlightRow) -> None:
    after = transition(row.before, row.event, clock())
    assert after.status == row.status
    assert after.awaiting_send == row.awaiting_send
    assert [(c.attempt, c.kind) for c in sends(after)] == ([row.send] if row.send else [])
    assert (after.queued_send.kind if after.queued_send else None) == row.queued
    if row.attempt_count is not None:
        assert after.attempt_count == row.attempt_count
    if row.status == "INPUT_NEEDED":
        assert after.input_request is not None
        assert after.input_request.status == "PENDING"
        assert after.next_action_at == NOTHING_SCHEDULED


def test_a_claim_fixes_the_body_and_a_repeat_after_the_lease_carries_it() -> None:
    claimed = transition(
        sending_follow_up(claimed=False), SendStarted(attempt=2, subject="Re: W-9", text="Body A"), clock()
    )
    assert (claimed.send_claimed, claimed.outgoing_text) == (True, "Body A")
    # A second claim of the same attempt (a racing delivery with another body) does not replace it.
    assert transition(claimed, SendStarted(attempt=2, subject="Re", text="Body B"), clock()) == claimed
    again = transition(claimed, FollowUpDue(), clock(T0 + SEND_LEASE_MS))
    (command,) = sends(again)
    assert (command.attempt, command.draft_text) == (2, "Body A")


def test_no_two_different_bodies_ever_share_an_attempt_number() -> None:
    """A counterparty who answers every email at once, while each email is at every stage of its send."""
    bodies: dict[int, set[str]] = {}
    case = transition(new(), CaseStarted(), clock())
    now = T0
    for step in range(12):
        now += 10
        (command,) = sends(case)
        case = msgspec.structs.replace(case, outbox=[])
        body = command.draft_text or f"composed for {command.attempt}"
        if step % 3 == 0:
            # The reply is judged before the worker claims the send: the requested email is superseded.
            case = transition(
                case, reply("REQUIRES_REPLY", reply=Draft(subject="Re", text=f"reply {step}")), clock(now)
            )
            case = msgspec.structs.replace(case, handled_message_ids=[])
            continue
        case = transition(case, SendStarted(attempt=command.attempt, subject="s", text=body), clock(now))
        bodies.setdefault(command.attempt, set()).add(body)
        if step % 3 == 1:
            # The reply is judged while the email is being sent: it waits, then goes out under the next number.
            case = transition(
                case, reply("REQUIRES_REPLY", reply=Draft(subject="Re", text=f"reply {step}")), clock(now)
            )
            case = msgspec.structs.replace(case, handled_message_ids=[])
            assert sends(case) == []
        case = transition(
            case,
            EmailSent(attempt=command.attempt, kind=command.kind, message_id=f"<o{step}>", thread_id="t", sent_at=now),
            clock(now),
        )
        if not sends(case):
            case = transition(case, FollowUpDue(), clock(case.next_action_at))
    assert all(len(texts) == 1 for texts in bodies.values()), bodies
    assert case.last_attempt > case.attempt_count  # superseded numbers are never reused


# ---- the client's requests are events of the table -----------------------------------------------------------


@pytest.mark.parametrize("status", ["CREATED", "RUNNING", "INPUT_NEEDED"])
def test_cancel_ends_an_open_case_and_drops_the_email_in_flight(status: str) -> None:
    before = sending_follow_up(claimed=True, status=status)
    after = apply_request(before, CancelRequested(), clock())
    assert (after.status, after.result_status, after.next_action_at) == ("CANCELLED", "cancelled", NOTHING_SCHEDULED)
    assert (after.awaiting_send, after.repair_at, sends(after)) == (None, None, [])
    assert [e.event_type for e in events(after)] == ["case.cancelled"]
    # The late confirmation of the email that was in flight changes nothing.
    assert transition(after, confirmed(2), clock()) == after


@pytest.mark.parametrize("status", ["COMPLETED", "FAILED", "CANCELLED"])
def test_cancel_of_a_terminal_case_is_409(status: str) -> None:
    with pytest.raises(ServiceError) as refused:
        apply_request(running(status=status), CancelRequested(), clock())
    assert refused.value.code is ErrorCode.CASE_NOT_CANCELLABLE
    assert request_refusal(running(), CancelRequested()) is None


# ---- the reconciler: leases read from the case alone, each repair once ---------------------------------------


def lease_clock(now: int) -> Timing:
    return Timing(now=now, hour_ms=HOUR, send_lease_ms=1_000, input_lease_ms=2_000, reply_lease_ms=3_000)


def answered() -> CaseRecord:
    """INPUT_NEEDED with its request RESOLVED at T0 and the answer not applied."""
    return apply_request(waiting(), InputProvided(input_request_id="ir-1", provided_context="Yes"), lease_clock(T0))


def test_an_answer_not_applied_within_its_lease_is_queued_again_once() -> None:
    case = msgspec.structs.replace(answered(), outbox=[])
    assert case.repair_at == T0 + 2_000
    assert repairs_due(case, lease_clock(T0 + 1_999)) == []
    assert transition(case, FollowUpDue(), lease_clock(T0 + 1_999)) == case
    assert repairs_due(case, lease_clock(T0 + 2_000)) == ["input_unapplied"]
    repaired = transition(case, FollowUpDue(), lease_clock(T0 + 2_000))
    (command,) = repaired.outbox
    assert command.subject == CMD_INPUT_PROVIDED
    assert msgspec.json.decode(command.payload, type=InputProvidedCommand).provided_context == "Yes"
    assert (repaired.status, repaired.repair_at) == ("INPUT_NEEDED", T0 + 4_000)
    # Run twice: the lease was renewed, so the second run repairs nothing.
    assert repairs_due(repaired, lease_clock(T0 + 2_000)) == []
    assert transition(repaired, FollowUpDue(), lease_clock(T0 + 2_000)) == repaired
    # Once applied, nothing is left to repair.
    applied = transition(
        repaired,
        InputJudged(input_request_id="ir-1", provided_context="Yes", judgement=Judgement(outcome="WAIT")),
        lease_clock(T0 + 2_500),
    )
    assert (applied.status, applied.repair_at) == ("RUNNING", None)


def test_a_reply_noted_but_not_judged_within_its_lease_is_judged_again_once() -> None:
    inbound = InboundEmail(message_id="<in-9>", thread_id="th-2")
    noted = transition(running(next_action_at=T0 + 72 * HOUR), ReplyReceived(message=inbound), lease_clock(T0))
    assert [r.message_id for r in noted.unjudged_replies] == ["<in-9>"]
    assert noted.thread_ids == ["th-1", "th-2"]
    assert noted.repair_at == T0 + 3_000
    # A redelivered event notes it once.
    assert transition(noted, ReplyReceived(message=inbound), lease_clock(T0 + 5)) == noted
    repaired = transition(noted, FollowUpDue(), lease_clock(T0 + 3_000))
    (command,) = repaired.outbox
    assert command.subject == CMD_JUDGE_REPLY
    assert msgspec.json.decode(command.payload, type=JudgeReplyCommand).message_id == "<in-9>"
    assert transition(repaired, FollowUpDue(), lease_clock(T0 + 3_000)) == repaired
    judged = transition(repaired, ReplyJudged(message=inbound, judgement=Judgement(outcome="WAIT")), lease_clock(T0))
    assert (judged.unjudged_replies, judged.repair_at) == ([], None)


def test_no_follow_up_goes_out_over_a_reply_still_being_judged() -> None:
    noted = transition(running(), ReplyReceived(message=InboundEmail(message_id="<in-9>")), lease_clock(T0))
    later = transition(noted, FollowUpDue(), lease_clock(T0 + 10))
    assert sends(later) == []
    assert later.next_action_at == T0 + 3_000


def test_a_send_past_its_lease_is_requested_again_once_and_counted_as_a_repair() -> None:
    asked = msgspec.structs.replace(transition(running(), FollowUpDue(), lease_clock(T0)), outbox=[])
    assert asked.repair_at == T0 + 1_000
    assert repairs_due(asked, lease_clock(T0 + 1_000)) == ["send_unconfirmed"]
    again = transition(asked, FollowUpDue(), lease_clock(T0 + 1_000))
    assert [(c.attempt, c.kind) for c in sends(again)] == [(2, "follow_up")]
    assert transition(again, FollowUpDue(), lease_clock(T0 + 1_000)) == again


def test_a_send_claimed_during_input_needed_is_repaired_too() -> None:
    paused = transition(sending_follow_up(claimed=True), reply("NEEDS_INPUT", question="PDF?"), lease_clock(T0))
    assert paused.repair_at == T0 + 1_000  # the send's lease, though follow-ups are paused
    again = transition(msgspec.structs.replace(paused, outbox=[]), FollowUpDue(), lease_clock(T0 + 1_000))
    assert [(c.attempt, c.draft_text) for c in sends(again)] == [(2, "Just following up.")]
    assert again.status == "INPUT_NEEDED"


def test_every_thread_is_recorded_once() -> None:
    case = transition(new(awaiting_send=1, awaiting_kind="first"), confirmed(1, "first"), clock())
    assert (case.thread_id, case.thread_ids) == ("th-1", ["th-1"])
    fresh = transition(case, ReplyReceived(message=InboundEmail(message_id="<in-2>", thread_id="th-2")), clock())
    again = transition(fresh, ReplyReceived(message=InboundEmail(message_id="<in-3>", thread_id="th-2")), clock())
    assert (again.thread_id, again.thread_ids) == ("th-1", ["th-1", "th-2"])


# ---- the status timeline -------------------------------------------------------------------------------------


def timeline(case: CaseRecord) -> list[tuple[str, str]]:
    return [(change.status, change.cause) for change in case.status_history]


def test_the_ask_path_records_each_status_once_with_what_caused_it() -> None:
    case = transition(new(), CaseStarted(), clock(T0))
    case = transition(
        case, EmailSent(attempt=1, kind="first", message_id="<o1>", thread_id="th-1", sent_at=T0), clock(T0 + 1)
    )
    case = transition(case, reply("NEEDS_INPUT", question="PDF ok?"), clock(T0 + 2))
    assert case.input_request is not None
    request_id = case.input_request.id
    case = apply_request(case, InputProvided(request_id, "PDF is fine"), clock(T0 + 3))
    assert case.status == "INPUT_NEEDED"  # the answer is queued; the status moves once it is judged
    case = transition(
        case,
        InputJudged(request_id, "PDF is fine", Judgement(outcome="GOAL_ACHIEVED", result={"signed": True})),
        clock(T0 + 4),
    )
    assert timeline(case) == [
        ("CREATED", "created"),
        ("RUNNING", "email_sent"),
        ("INPUT_NEEDED", "reply_judged"),
        ("COMPLETED", "input_judged"),
    ]
    assert [change.at for change in case.status_history] == [T0 - 10, T0 + 1, T0 + 2, T0 + 4]
    assert case.status_history_omitted == 0
    # Events after the end change nothing, the timeline included.
    assert transition(case, FollowUpDue(), clock(T0 + 5)) == case


@pytest.mark.parametrize(
    ("before", "event", "cause"),
    [
        (running(awaiting_send=2, awaiting_kind="follow_up"), SendRejected(attempt=2, reason="no"), "send_rejected"),
        (running(awaiting_send=2, awaiting_kind="follow_up"), SendFailed(attempt=2, reason="400"), "send_failed"),
        (running(), DeliveryFailed(kind="bounced", message_id="<out-1@sim.example>"), "delivery_failed"),
        (running(follow_ups_since_reply=2), FollowUpDue(), "follow_up_due"),
        (running(), AgentStuck(question="?", source="write"), "agent_stuck"),
        (running(), CancelRequested(), "cancel_requested"),
        (running(), reply("REFUSED", reason="no"), "reply_judged"),
    ],
)
def test_each_way_out_of_running_names_its_cause(before: CaseRecord, event: Event, cause: str) -> None:
    after = transition(before, event, clock())
    assert after.status != before.status
    assert after.status_history[-1] == StatusChange(status=after.status, at=after.updated_at, cause=cause)  # type: ignore[arg-type]


def test_a_case_bouncing_between_running_and_input_needed_keeps_its_first_and_newest_changes() -> None:
    case = transition(
        new(awaiting_send=1, awaiting_kind="first"),
        EmailSent(attempt=1, kind="first", message_id="<o1>", thread_id="th-1", sent_at=T0),
        clock(T0),
    )
    bounces = 30
    for n in range(bounces):
        now = T0 + 10 * (n + 1)
        case = transition(
            case, ReplyJudged(InboundEmail(f"<in-{n}>"), Judgement(outcome="NEEDS_INPUT", question="?")), clock(now)
        )
        assert case.input_request is not None
        case = transition(
            case, InputJudged(case.input_request.id, f"answer {n}", Judgement(outcome="WAIT")), clock(now + 5)
        )
    recorded = 2 + 2 * bounces  # CREATED, RUNNING, then INPUT_NEEDED and RUNNING per bounce
    assert len(case.status_history) == STATUS_HISTORY_LIMIT
    assert case.status_history_omitted == recorded - STATUS_HISTORY_LIMIT
    assert case.status_history[0] == StatusChange(status="CREATED", at=T0 - 10, cause="created")
    assert case.status_history[-1] == StatusChange(status="RUNNING", at=case.updated_at, cause="input_judged")
    assert case.status_history[-2].status == "INPUT_NEEDED"
    times = [change.at for change in case.status_history]
    assert times == sorted(times)


def test_a_case_stored_before_timelines_reads_and_records_from_a_derived_start() -> None:
    document = to_document(running(updated_at=T0 - 3))
    del document["statusHistory"], document["statusHistoryOmitted"]
    legacy = from_document(document)
    assert (legacy.status_history, legacy.status_history_omitted) == ([], 0)
    assert [(c.status, c.at, c.cause) for c in domain.view(legacy).status_history] == [
        ("CREATED", legacy.created_at, "created"),
        ("RUNNING", T0 - 3, "unrecorded"),
    ]
    assert domain.view(new(status_history=[])).status_history == [
        StatusChange(status="CREATED", at=T0 - 10, cause="created")
    ]
    after = transition(legacy, reply("NEEDS_INPUT", question="?"), clock())
    assert timeline(after) == [("CREATED", "created"), ("RUNNING", "unrecorded"), ("INPUT_NEEDED", "reply_judged")]
    assert domain.view(after).status_history == after.status_history


def test_a_create_awaiting_its_confirmation_is_due_at_its_confirmation_time_and_then_at_its_send_lease() -> None:
    """The case's timer fires at `confirmBy` while nothing started it (the worker then settles the create), and
    once started at the end of its first send's lease; a case created without a confirmation time has none."""
    unconfirmed = new(confirm_by=T0 + 5_000)
    assert due_at(unconfirmed) == T0 + 5_000
    started = transition(unconfirmed, CaseStarted(), lease_clock(T0))
    assert started.awaiting_send == 1
    assert due_at(started) == T0 + 1_000  # the send's lease (lease_clock: 1 s), no longer the confirmation time
    assert due_at(new()) is None
