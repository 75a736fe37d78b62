"""The case state machine: `transition(case, event) -> case`, pure, with every effect in the new case's outbox.

Statuses follow api.md: CREATED → RUNNING ⇄ INPUT_NEEDED → COMPLETED | FAILED | CANCELLED. Effects are
outbox messages: `case.cmd.*` (the worker sends an email, idempotent by case and attempt; applies an answer;
judges a reply) and `case.evt.*` (client webhooks). Events that repeat (a redelivered message, a second
confirmation of the same email) or that arrive after the case ended change nothing, so every handler can be
retried safely. The client's own requests (cancel, input) are events of this table too: `apply_request` gives
the contract's 409 when one does not apply. The worker, the scheduler and the store ask this module which
statuses are open or schedulable and whether an event still needs the agent, instead of repeating the rules.
`transition` also records every status change on the case's bounded timeline (`status_history`), so the write
that stores a change stores its entry.

The design decision a reader must know: **one email in flight**. A case has at most one requested, unconfirmed
send (`awaiting_send`); each distinct email gets a fresh attempt number (`last_attempt + 1`), which is its
AgentMail Idempotency-Key. Until the worker claims a send (`SendStarted`, body fixed on the case) a newer email
supersedes it; once claimed, a newer email waits in `queued_send` until the confirmation. Every step that waits
for a message carries a lease (`repair_at`), and the scheduler's `FollowUpDue` repairs what outlived it.

Anything that needs I/O or judgement (writing an email, judging a reply) happens before the event is built:
a judged reply arrives here as `ReplyJudged`, already carrying the agent's judgement.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import msgspec
from referencing.exceptions import Unresolvable

from services.case.agent.port import Judgement, TokenUsage
from services.case.domain import awaiting_confirmation, case_event, outbox_message, status_history, with_outbox
from services.case.model import (
    CaseRecord,
    EmailKind,
    InputRequestRecord,
    JudgeReplyCommand,
    QueuedSend,
    SendEmailCommand,
    TokenUsageRecord,
    UnjudgedReply,
)
from services.case.patterns import PatternError, ResultValidator
from shared.contracts.case import (
    CMD_INPUT_PROVIDED,
    CMD_JUDGE_REPLY,
    CMD_SEND,
    NOTHING_SCHEDULED,
    STATUS_HISTORY_LIMIT,
    TERMINAL_STATUSES,
    AttachmentMeta,
    Goal,
    InputProvidedCommand,
    StatusCause,
    StatusChange,
)
from shared.errors import ErrorCode, ServiceError
from shared.settings import CaseSettings
from shared.subjects import CASE_COMMANDS

# Statuses in which a case can still change, and those in which the scheduler sends follow-ups.
OPEN_STATUSES: Final = ("CREATED", "RUNNING", "INPUT_NEEDED")
SCHEDULABLE_STATUSES: Final = ("CREATED", "RUNNING")
# Default leases (real time, not scaled): how long a requested step may stay unconfirmed before the scheduler
# requests it again. The service takes them from its settings.
SEND_LEASE_MS: Final = 5 * 60_000
INPUT_LEASE_MS: Final = 5 * 60_000
REPLY_LEASE_MS: Final = 5 * 60_000
# How many handled message/input ids a case remembers for deduplication.
HANDLED_MEMORY: Final = 50

# What the reconciler repaired (the `kind` label of caseflow_reconciler_repairs_total).
type RepairKind = Literal["send_unconfirmed", "input_unapplied", "reply_unjudged"]
REPAIR_KINDS: Final[tuple[RepairKind, ...]] = ("send_unconfirmed", "input_unapplied", "reply_unjudged")


# ---- events ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CaseStarted:
    """The created command reached the worker."""


@dataclass(frozen=True, slots=True)
class SendStarted:
    """The worker is about to hand email `attempt` to the adapter with this body: from now on it is in flight."""

    attempt: int
    subject: str
    text: str


@dataclass(frozen=True, slots=True)
class EmailSent:
    attempt: int
    kind: EmailKind
    message_id: str
    thread_id: str
    sent_at: int
    # Tokens the agent spent writing it.
    usage: TokenUsage = field(default_factory=TokenUsage)


@dataclass(frozen=True, slots=True)
class SendRejected:
    """AgentMail refused the message (403 message_rejected)."""

    attempt: int
    reason: str


@dataclass(frozen=True, slots=True)
class SendFailed:
    """A terminal provider error (e.g. the provider says the request is invalid)."""

    attempt: int
    reason: str


@dataclass(frozen=True, slots=True)
class FollowUpDue:
    """The scheduler found the case due: nextActionAt or a lease (`repair_at`) has passed."""


@dataclass(frozen=True, slots=True)
class InboundEmail:
    message_id: str
    attachments: tuple[AttachmentMeta, ...] = ()
    thread_id: str | None = None


@dataclass(frozen=True, slots=True)
class ReplyReceived:
    """A counterparty message was matched to the case; it is judged next (`ReplyJudged`)."""

    message: InboundEmail


@dataclass(frozen=True, slots=True)
class ReplyJudged:
    message: InboundEmail
    judgement: Judgement


@dataclass(frozen=True, slots=True)
class InputProvided:
    """The client answered the input request (`POST /input`)."""

    input_request_id: str
    provided_context: str


@dataclass(frozen=True, slots=True)
class InputJudged:
    """The client's answer, applied to the knowledge, and the agent's judgement of the case with it."""

    input_request_id: str
    provided_context: str
    judgement: Judgement


@dataclass(frozen=True, slots=True)
class CancelRequested:
    """The client cancelled the case (`POST /cancel`)."""


@dataclass(frozen=True, slots=True)
class AgentStuck:
    """The agent could not write or judge; the client is asked to decide."""

    question: str
    source: str  # what the agent was doing (makes the input request id deterministic)


@dataclass(frozen=True, slots=True)
class DeliveryFailed:
    kind: Literal["bounced", "complained", "rejected"]
    message_id: str
    detail: str = ""


type Event = (
    CaseStarted
    | SendStarted
    | EmailSent
    | SendRejected
    | SendFailed
    | FollowUpDue
    | ReplyReceived
    | ReplyJudged
    | InputProvided
    | InputJudged
    | CancelRequested
    | DeliveryFailed
    | AgentStuck
)

DELIVERY_RESULT_STATUS = {"bounced": "BOUNCED", "complained": "COMPLAINED", "rejected": "REJECTED"}


@dataclass(frozen=True, slots=True)
class Timing:
    """The moment a transition happens and the timing rules it applies (follow-up hour, leases). The moment
    comes from the caller's injected shared.clock.Clock: the table itself never reads the time."""

    now: int  # Unix ms
    hour_ms: int  # one follow-up "hour" (FOLLOW_UP_HOUR_SECONDS, scaled for tests and demos)
    send_lease_ms: int = SEND_LEASE_MS
    input_lease_ms: int = INPUT_LEASE_MS
    reply_lease_ms: int = REPLY_LEASE_MS

    @classmethod
    def of(cls, settings: CaseSettings, now: int) -> Timing:
        """The service's clock at `now`: its follow-up hour and its leases."""
        return cls(
            now=now,
            hour_ms=int(settings.follow_up_hour_seconds * 1000),
            send_lease_ms=int(settings.send_lease_seconds * 1000),
            input_lease_ms=int(settings.input_lease_seconds * 1000),
            reply_lease_ms=int(settings.reply_lease_seconds * 1000),
        )


# ---- guards the worker, the scheduler and the API ask ------------------------------------------------------


def due_at(case: CaseRecord) -> int | None:
    """When the scheduler must next look at the case (Unix ms): its next action if it can be scheduled, the end
    of a lease, or, for a create not yet confirmed, its confirmation time, whichever comes first; None when
    nothing is due ever (the store's due and unconfirmed-create queries, as a time)."""
    times = [case.repair_at] if case.repair_at is not None else []
    if case.status in SCHEDULABLE_STATUSES and case.next_action_at != NOTHING_SCHEDULED:
        times.append(case.next_action_at)
    if awaiting_confirmation(case) and case.confirm_by is not None:
        times.append(case.confirm_by)
    return min(times, default=None)


def is_open(case: CaseRecord) -> bool:
    return case.status in OPEN_STATUSES


def send_wanted(case: CaseRecord, attempt: int) -> bool:
    """Whether email `attempt` is still the one the case wants sent (not superseded, cancelled or done)."""
    return is_open(case) and case.awaiting_send == attempt


def input_awaits_judgement(case: CaseRecord, input_request_id: str) -> bool:
    request = case.input_request
    return (
        case.status == "INPUT_NEEDED"
        and request is not None
        and request.id == input_request_id
        and input_request_id not in case.handled_input_ids
    )


def reply_awaits_judgement(case: CaseRecord, message_id: str) -> bool:
    return is_open(case) and any(reply.message_id == message_id for reply in case.unjudged_replies)


def request_refusal(case: CaseRecord, event: InputProvided | CancelRequested) -> ErrorCode | None:
    """Why a client's request does not apply to the case (the 409s of api.md, in the contract's order)."""
    match event:
        case CancelRequested():
            return ErrorCode.CASE_NOT_CANCELLABLE if case.status in TERMINAL_STATUSES else None
        case InputProvided():
            request = case.input_request
            if case.status != "INPUT_NEEDED" or request is None:
                return ErrorCode.CASE_NOT_WAITING_FOR_INPUT
            if request.status != "PENDING":
                return ErrorCode.INPUT_REQUEST_NOT_PENDING
            if request.id != event.input_request_id:
                return ErrorCode.INPUT_REQUEST_MISMATCH
            return None


def apply_request(case: CaseRecord, event: InputProvided | CancelRequested, clock: Timing) -> CaseRecord:
    """A client's request through the table: the contract's ServiceError when it does not apply."""
    refusal = request_refusal(case, event)
    if refusal is not None:
        raise ServiceError(refusal)
    return transition(case, event, clock)


def _answer_unapplied(case: CaseRecord) -> InputRequestRecord | None:
    """The resolved input request whose answer the worker has not yet applied."""
    request = case.input_request
    if (
        case.status == "INPUT_NEEDED"
        and request is not None
        and request.status == "RESOLVED"
        and request.provided_context is not None
        and request.id not in case.handled_input_ids
    ):
        return request
    return None


def _leases(case: CaseRecord, clock: Timing) -> list[tuple[RepairKind, int]]:
    """Each step of the case that waits for a message, with the time its lease ends."""
    if not is_open(case):
        return []
    leases: list[tuple[RepairKind, int]] = []
    if case.awaiting_send is not None:
        leases.append(("send_unconfirmed", (case.send_requested_at or 0) + clock.send_lease_ms))
    answer = _answer_unapplied(case)
    if answer is not None:
        leases.append(("input_unapplied", (answer.answer_queued_at or 0) + clock.input_lease_ms))
    leases.extend(("reply_unjudged", reply.noted_at + clock.reply_lease_ms) for reply in case.unjudged_replies)
    return leases


def repairs_due(case: CaseRecord, clock: Timing) -> list[RepairKind]:
    """The steps that were requested and not confirmed within their lease, read from the case alone."""
    return [kind for kind, ends in _leases(case, clock) if ends <= clock.now]


# ---- the table ---------------------------------------------------------------------------------------------


def transition(case: CaseRecord, event: Event, clock: Timing) -> CaseRecord:
    """The case after `event`; unchanged when the event is a repeat, late, or not applicable."""
    if case.status in TERMINAL_STATUSES:
        return case
    changed = _transition(case, event, clock)
    if changed is case:
        return case
    if changed.status != case.status:
        changed = _with_status_change(case, changed, _cause_of(event))
    repair_at = min((ends for _, ends in _leases(changed, clock)), default=None)
    if repair_at != changed.repair_at:
        changed = msgspec.structs.replace(changed, repair_at=repair_at)
    spent = _usage_of(event)
    if spent == TokenUsage():
        return changed
    total = changed.token_usage
    return msgspec.structs.replace(
        changed,
        token_usage=TokenUsageRecord(
            prompt_tokens=total.prompt_tokens + spent.prompt_tokens,
            completion_tokens=total.completion_tokens + spent.completion_tokens,
        ),
    )


def _with_status_change(before: CaseRecord, after: CaseRecord, cause: StatusCause) -> CaseRecord:
    """`after` with its new status appended to the timeline (bounded: the first entry and the newest ones)."""
    history = [*status_history(before), StatusChange(status=after.status, at=after.updated_at, cause=cause)]
    omitted = before.status_history_omitted
    excess = len(history) - STATUS_HISTORY_LIMIT
    if excess > 0:
        history = [history[0], *history[1 + excess :]]
        omitted += excess
    return msgspec.structs.replace(after, status_history=history, status_history_omitted=omitted)


def _cause_of(event: Event) -> StatusCause:
    match event:
        case EmailSent():
            return "email_sent"
        case ReplyJudged():
            return "reply_judged"
        case InputJudged():
            return "input_judged"
        case AgentStuck():
            return "agent_stuck"
        case FollowUpDue():
            return "follow_up_due"
        case SendRejected():
            return "send_rejected"
        case SendFailed():
            return "send_failed"
        case DeliveryFailed():
            return "delivery_failed"
        case CancelRequested():
            return "cancel_requested"
        case CaseStarted() | SendStarted() | ReplyReceived() | InputProvided():
            # These events never change the status; should one ever do, the timeline says so rather than fail.
            return "unrecorded"


def _usage_of(event: Event) -> TokenUsage:
    match event:
        case EmailSent():
            return event.usage
        case ReplyJudged() | InputJudged():
            return event.judgement.usage
        case _:
            return TokenUsage()


def _transition(case: CaseRecord, event: Event, clock: Timing) -> CaseRecord:
    match event:
        case CaseStarted():
            return _started(case, clock)
        case SendStarted():
            if case.awaiting_send != event.attempt or case.send_claimed:
                return case
            return msgspec.structs.replace(
                case, send_claimed=True, outgoing_subject=event.subject, outgoing_text=event.text
            )
        case EmailSent():
            return _email_sent(case, event, clock)
        case SendRejected():
            if event.attempt != case.awaiting_send:
                return case
            return _fail(case, "REJECTED", event.reason, clock)
        case SendFailed():
            if event.attempt != case.awaiting_send:
                return case
            return _fail(case, "send_failed", event.reason, clock)
        case FollowUpDue():
            return _follow_up_due(case, clock)
        case ReplyReceived():
            return _reply_received(case, event.message, clock)
        case ReplyJudged():
            return _reply_judged(case, event, clock)
        case InputProvided():
            return _input_provided(case, event, clock)
        case InputJudged():
            return _input_judged(case, event, clock)
        case CancelRequested():
            return _cancelled(case, clock)
        case DeliveryFailed():
            return _fail(case, DELIVERY_RESULT_STATUS[event.kind], event.detail or None, clock)
        case AgentStuck():
            if case.status == "INPUT_NEEDED":
                return case
            return _need_input(case, event.question, clock, source=event.source)


# ---- transitions -----------------------------------------------------------------------------------------


def _touch(case: CaseRecord, clock: Timing, **changes: Any) -> CaseRecord:
    """A client-visible change: updatedAt strictly increases, so every event id is unique."""
    return msgspec.structs.replace(case, updated_at=max(clock.now, case.updated_at + 1), **changes)


# The fields of the email in flight, cleared once it is confirmed, failed or abandoned.
_NO_SEND_IN_FLIGHT: Final[dict[str, Any]] = {
    "awaiting_send": None,
    "awaiting_kind": None,
    "awaiting_in_reply_to": None,
    "send_requested_at": None,
    "send_claimed": False,
    "outgoing_subject": None,
    "outgoing_text": None,
}


def _with_thread(case: CaseRecord, thread_id: str | None) -> dict[str, Any]:
    """The thread fields once `thread_id` is known to belong to the case (empty when nothing changes)."""
    threads = case.thread_ids if case.thread_ids or case.thread_id is None else [case.thread_id]
    if thread_id is None or (thread_id in threads and threads == case.thread_ids):
        return {}
    return {
        "thread_id": case.thread_id or thread_id,
        "thread_ids": threads if thread_id in threads else [*threads, thread_id],
    }


def _send_command(case: CaseRecord, clock: Timing) -> CaseRecord:
    """Owe the worker `case.cmd.send` for the email in flight (its first request or a repeat after the lease)."""
    attempt, kind = case.awaiting_send, case.awaiting_kind
    if attempt is None or kind is None:
        return case
    command = SendEmailCommand(
        case_id=case.case_id,
        attempt=attempt,
        kind=kind,
        in_reply_to=case.awaiting_in_reply_to,
        draft_subject=case.outgoing_subject,
        draft_text=case.outgoing_text,
    )
    message = outbox_message(
        subject=CMD_SEND,
        stream_name=CASE_COMMANDS.name,
        # A re-request after the lease gets a new id: the first one may be gone (parked or expired).
        msg_id=f"send:{case.case_id}:{attempt}:{clock.now}",
        payload=command,
    )
    requested = msgspec.structs.replace(case, send_requested_at=clock.now)
    if requested.status in SCHEDULABLE_STATUSES:
        requested = msgspec.structs.replace(requested, next_action_at=clock.now + clock.send_lease_ms)
    return with_outbox(requested, [message], now=clock.now)


def _request_send(
    case: CaseRecord,
    clock: Timing,
    *,
    kind: EmailKind,
    in_reply_to: str | None,
    draft_subject: str | None = None,
    draft_text: str | None = None,
) -> CaseRecord:
    """Ask for a new email under a new attempt number. It supersedes an email requested but not yet being
    sent; an email already being sent is never superseded: the new one waits for its confirmation."""
    if case.awaiting_send is not None and case.send_claimed:
        queued = QueuedSend(kind=kind, in_reply_to=in_reply_to, draft_subject=draft_subject, draft_text=draft_text)
        return msgspec.structs.replace(case, queued_send=queued)
    attempt = max(case.last_attempt, case.attempt_count, case.awaiting_send or 0) + 1
    requested = msgspec.structs.replace(
        case,
        **{
            **_NO_SEND_IN_FLIGHT,
            "awaiting_send": attempt,
            "awaiting_kind": kind,
            "awaiting_in_reply_to": in_reply_to,
            "outgoing_subject": draft_subject if draft_text is not None else None,
            "outgoing_text": draft_text,
        },
        last_attempt=attempt,
        queued_send=None,
    )
    return _send_command(requested, clock)


def _started(case: CaseRecord, clock: Timing) -> CaseRecord:
    if case.status != "CREATED" or case.awaiting_send is not None or case.attempt_count > 0:
        return case
    started = msgspec.structs.replace(case, pending_create=False)
    return _request_send(started, clock, kind="first", in_reply_to=None)


def _email_sent(case: CaseRecord, event: EmailSent, clock: Timing) -> CaseRecord:
    if event.attempt != case.awaiting_send:
        return case  # a repeated confirmation, or of an email that was never the one in flight
    follow_ups = case.follow_ups_since_reply + (1 if event.kind == "follow_up" else 0)
    sent = _touch(
        case,
        clock,
        **_NO_SEND_IN_FLIGHT,
        **_with_thread(case, event.thread_id),
        attempt_count=case.attempt_count + 1,
        follow_ups_since_reply=follow_ups,
        last_message_id=event.message_id,
        pending_create=False,
    )
    if case.status == "INPUT_NEEDED":
        # Confirmed after the case paused for input: the email is counted, the pause stays.
        return sent
    sent = msgspec.structs.replace(
        sent, status="RUNNING", next_action_at=event.sent_at + case.follow_up_delay_hours * clock.hour_ms
    )
    queued = case.queued_send
    if queued is None:
        return sent
    return _request_send(
        msgspec.structs.replace(sent, queued_send=None),
        clock,
        kind=queued.kind,
        in_reply_to=queued.in_reply_to,
        draft_subject=queued.draft_subject,
        draft_text=queued.draft_text,
    )


def _repair(case: CaseRecord, kinds: list[RepairKind], clock: Timing) -> CaseRecord:
    """Request again, from the case alone, every step whose lease has passed (each renews its lease)."""
    repaired = case
    if "send_unconfirmed" in kinds:
        # Same attempt (and, once claimed, the same body): the adapter and AgentMail deduplicate it.
        repaired = _send_command(repaired, clock)
    answer = _answer_unapplied(repaired)
    if "input_unapplied" in kinds and answer is not None and answer.provided_context is not None:
        repaired = _queue_answer(repaired, answer, answer.provided_context, clock)
    if "reply_unjudged" in kinds:
        due = {r.message_id for r in repaired.unjudged_replies if r.noted_at + clock.reply_lease_ms <= clock.now}
        messages = [
            outbox_message(
                subject=CMD_JUDGE_REPLY,
                stream_name=CASE_COMMANDS.name,
                msg_id=f"judge:{case.case_id}:{message_id}:{clock.now}",
                payload=JudgeReplyCommand(case_id=case.case_id, message_id=message_id),
            )
            for message_id in sorted(due)
        ]
        renewed = [
            msgspec.structs.replace(r, noted_at=clock.now) if r.message_id in due else r
            for r in repaired.unjudged_replies
        ]
        repaired = with_outbox(msgspec.structs.replace(repaired, unjudged_replies=renewed), messages, now=clock.now)
    return repaired


def _follow_up_due(case: CaseRecord, clock: Timing) -> CaseRecord:
    kinds = repairs_due(case, clock)
    if kinds:
        return _repair(case, kinds, clock)
    if case.status not in SCHEDULABLE_STATUSES or clock.now < case.next_action_at:
        return case
    if case.awaiting_send is not None:
        return case  # one email in flight; its lease brings it back here
    if case.unjudged_replies:
        # The counterparty wrote and the reply is still being judged: no follow-up over it.
        earliest = min(reply.noted_at for reply in case.unjudged_replies) + clock.reply_lease_ms
        return msgspec.structs.replace(case, next_action_at=max(earliest, clock.now + 1))
    if case.status == "CREATED":
        return _request_send(case, clock, kind="first", in_reply_to=None)
    if case.follow_ups_since_reply >= case.max_attempts:
        return _fail(case, "max_retries", None, clock)
    return _request_send(case, clock, kind="follow_up", in_reply_to=case.last_message_id)


def _fail(case: CaseRecord, result_status: str, reason: str | None, clock: Timing) -> CaseRecord:
    failed = _touch(
        case,
        clock,
        **_NO_SEND_IN_FLIGHT,
        status="FAILED",
        result_status=result_status,
        failure_reason=reason,
        next_action_at=NOTHING_SCHEDULED,
        queued_send=None,
    )
    return with_outbox(failed, [case_event(failed, "case.failed")], now=clock.now)


def _cancelled(case: CaseRecord, clock: Timing) -> CaseRecord:
    cancelled = _touch(
        case,
        clock,
        **_NO_SEND_IN_FLIGHT,
        status="CANCELLED",
        result_status="cancelled",
        next_action_at=NOTHING_SCHEDULED,
        queued_send=None,
    )
    return with_outbox(cancelled, [case_event(cancelled, "case.cancelled")], now=clock.now)


def _remember(ids: list[str], new_id: str) -> list[str]:
    return [*ids, new_id][-HANDLED_MEMORY:]


def _reply_received(case: CaseRecord, message: InboundEmail, clock: Timing) -> CaseRecord:
    threads = _with_thread(case, message.thread_id)
    known = message.message_id in case.handled_message_ids or any(
        reply.message_id == message.message_id for reply in case.unjudged_replies
    )
    if known:
        return msgspec.structs.replace(case, **threads) if threads else case
    unjudged = UnjudgedReply(
        message_id=message.message_id,
        thread_id=message.thread_id or case.thread_id or "",
        noted_at=clock.now,
        attachments=list(message.attachments),
    )
    return msgspec.structs.replace(case, **threads, unjudged_replies=[*case.unjudged_replies, unjudged])


def _reply_judged(case: CaseRecord, event: ReplyJudged, clock: Timing) -> CaseRecord:
    message = event.message
    if message.message_id in case.handled_message_ids:
        return case
    known = {attachment.attachment_id for attachment in case.attachments}
    attachments = [*case.attachments, *(a for a in message.attachments if a.attachment_id not in known)]
    seen = msgspec.structs.replace(
        case,
        **_with_thread(case, message.thread_id),
        handled_message_ids=_remember(case.handled_message_ids, message.message_id),
        unjudged_replies=[reply for reply in case.unjudged_replies if reply.message_id != message.message_id],
        follow_ups_since_reply=0,
        last_message_id=message.message_id,
        last_inbound_message_id=message.message_id,
        attachments=attachments,
    )
    return _apply_judgement(seen, event.judgement, clock, reply_to=message.message_id, source=message.message_id)


def _queue_answer(case: CaseRecord, request: InputRequestRecord, provided_context: str, clock: Timing) -> CaseRecord:
    """Owe the worker the client's answer (`case.cmd.input_provided`); a repeat after the lease gets a new id."""
    first = request.answer_queued_at is None
    command = outbox_message(
        subject=CMD_INPUT_PROVIDED,
        stream_name=CASE_COMMANDS.name,
        msg_id=f"input:{case.case_id}:{request.id}" + ("" if first else f":{clock.now}"),
        payload=InputProvidedCommand(
            case_id=case.case_id, input_request_id=request.id, provided_context=provided_context
        ),
    )
    queued = msgspec.structs.replace(
        request, status="RESOLVED", provided_context=provided_context, answer_queued_at=clock.now
    )
    return with_outbox(msgspec.structs.replace(case, input_request=queued), [command], now=clock.now)


def _input_provided(case: CaseRecord, event: InputProvided, clock: Timing) -> CaseRecord:
    request = case.input_request
    if request_refusal(case, event) is not None or request is None:
        return case
    return _queue_answer(_touch(case, clock), request, event.provided_context, clock)


def _input_judged(case: CaseRecord, event: InputJudged, clock: Timing) -> CaseRecord:
    request = case.input_request
    if not input_awaits_judgement(case, event.input_request_id) or request is None:
        return case
    informed = msgspec.structs.replace(
        with_human_context(case, event.provided_context),
        handled_input_ids=_remember(case.handled_input_ids, event.input_request_id),
        input_request=msgspec.structs.replace(request, status="RESOLVED"),
    )
    return _apply_judgement(
        informed, event.judgement, clock, reply_to=case.last_inbound_message_id, source=event.input_request_id
    )


def with_human_context(case: CaseRecord, provided_context: str) -> CaseRecord:
    """The client's answer appended to `goal.knowledge.additionalHumanContext` (api.md, "Input")."""
    knowledge = case.goal.knowledge
    if isinstance(knowledge, dict):
        updated: dict[str, Any] = dict(knowledge)
    elif knowledge is None:
        updated = {}
    else:
        updated = {"text": knowledge}
    previous = updated.get("additionalHumanContext")
    history = list(previous) if isinstance(previous, list) else ([previous] if previous else [])
    updated["additionalHumanContext"] = [*history, provided_context]
    return msgspec.structs.replace(case, goal=Goal(objective=case.goal.objective, knowledge=updated))


def _apply_judgement(
    case: CaseRecord, judgement: Judgement, clock: Timing, *, reply_to: str | None, source: str
) -> CaseRecord:
    match judgement.outcome:
        case "GOAL_ACHIEVED":
            problem = result_problem(case.result_schema, judgement.result)
            if problem is not None:
                question = (
                    "The counterparty appears to have done what was asked, but the result could not be "
                    f"confirmed against your resultSchema ({problem}). Please review the thread and tell me "
                    "what the result should be."
                )
                return _need_input(case, question, clock, source=source)
            completed = _touch(
                case,
                clock,
                status="COMPLETED",
                result_status="goal_achieved",
                result=judgement.result if judgement.result is not None else {},
                next_action_at=NOTHING_SCHEDULED,
                queued_send=None,
                **_NO_SEND_IN_FLIGHT,
            )
            return with_outbox(completed, [case_event(completed, "case.completed")], now=clock.now)
        case "REQUIRES_REPLY":
            running = _touch(case, clock, status="RUNNING")
            draft = judgement.reply
            return _request_send(
                running,
                clock,
                kind="reply",
                in_reply_to=reply_to,
                draft_subject=draft.subject if draft else None,
                draft_text=draft.text if draft else None,
            )
        case "NEEDS_INPUT":
            question = judgement.question or "The counterparty needs an answer I do not have. How should I respond?"
            return _need_input(case, question, clock, source=source)
        case "REFUSED":
            return _fail(case, "failed_rejected", judgement.reason or None, clock)
        case "WAIT":
            if case.status == "INPUT_NEEDED" or case.next_action_at == NOTHING_SCHEDULED:
                # Coming back from a pause: restart the follow-up clock.
                return _touch(
                    case,
                    clock,
                    status="RUNNING",
                    next_action_at=clock.now + case.follow_up_delay_hours * clock.hour_ms,
                )
            return _touch(case, clock, status="RUNNING")


def _need_input(case: CaseRecord, question: str, clock: Timing, *, source: str) -> CaseRecord:
    request = InputRequestRecord(
        # Derived from what caused it, so recomputing the same transition gives the same id.
        id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"caseflow:{case.case_id}:{source}")),
        question=question,
        status="PENDING",
        requested_at=max(clock.now, case.updated_at + 1),
    )
    # An email already being sent stays in flight (its confirmation is counted, the pause stays); one not yet
    # being sent, or waiting behind it, is dropped: follow-ups pause while the client decides.
    in_flight: dict[str, Any] = {} if case.send_claimed else _NO_SEND_IN_FLIGHT
    paused = _touch(
        case,
        clock,
        **in_flight,
        status="INPUT_NEEDED",
        input_request=request,
        next_action_at=NOTHING_SCHEDULED,
        queued_send=None,
    )
    return with_outbox(paused, [case_event(paused, "case.input_needed")], now=clock.now)


def result_problem(schema: dict[str, Any] | None, result: dict[str, Any] | None) -> str | None:
    """Why `result` does not satisfy `schema` (None when it does, or when there is no schema)."""
    if schema is None:
        return None
    if result is None:
        return "no result was extracted"
    try:
        # RE2 for every pattern: the result holds text the counterparty wrote.
        error = next(iter(sorted(ResultValidator(schema).iter_errors(result), key=str)), None)
    except (PatternError, Unresolvable) as exc:
        # Refused at create since these checks exist; a case stored before them fails here, not in a loop.
        return f"resultSchema cannot be used: {exc}"
    if error is None:
        return None
    where = ".".join(str(part) for part in error.absolute_path)
    return f"{where}: {error.message}" if where else error.message
