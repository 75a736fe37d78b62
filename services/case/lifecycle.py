"""The case state machine: `transition(case, event) -> case`, pure, with every effect in the new case's outbox.

Statuses follow api.md: CREATED → RUNNING ⇄ INPUT_NEEDED → COMPLETED | FAILED | CANCELLED. Effects are
outbox messages: `case.cmd.send` (the worker sends an email, idempotent by case and attempt) and `case.evt.*`
(client webhooks). Events that repeat (a redelivered message, a second confirmation of the same email) or
that arrive after the case ended change nothing, so every handler can be retried safely.

Anything that needs I/O or judgement (writing an email, judging a reply) happens before the event is built:
a judged reply arrives here as `ReplyJudged`, already carrying the agent's judgement.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec
from referencing.exceptions import Unresolvable

from services.case.agent.port import Judgement, TokenUsage
from services.case.domain import case_event, outbox_message, with_outbox
from services.case.model import CaseRecord, EmailKind, InputRequestRecord, SendEmailCommand, TokenUsageRecord
from services.case.patterns import PatternError, ResultValidator
from shared.contracts.case import CMD_SEND, NOTHING_SCHEDULED, TERMINAL_STATUSES, AttachmentMeta, Goal
from shared.subjects import CASE_COMMANDS

# How long a requested send may stay unconfirmed before the scheduler asks again (same attempt number,
# so the adapter's idempotency key makes the repeat harmless). Real time, not scaled.
SEND_LEASE_MS = 5 * 60_000
# How many handled message/input ids a case remembers for deduplication.
HANDLED_MEMORY = 50


# ---- events ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CaseStarted:
    """The created command reached the worker."""


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
    """The scheduler found the case due (nextActionAt has passed)."""


@dataclass(frozen=True, slots=True)
class InboundEmail:
    message_id: str
    attachments: tuple[AttachmentMeta, ...] = ()


@dataclass(frozen=True, slots=True)
class ReplyJudged:
    message: InboundEmail
    judgement: Judgement


@dataclass(frozen=True, slots=True)
class InputJudged:
    """The client's answer, applied to the knowledge, and the agent's judgement of the case with it."""

    input_request_id: str
    provided_context: str
    judgement: Judgement


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
    | EmailSent
    | SendRejected
    | SendFailed
    | FollowUpDue
    | ReplyJudged
    | InputJudged
    | DeliveryFailed
    | AgentStuck
)

DELIVERY_RESULT_STATUS = {"bounced": "BOUNCED", "complained": "COMPLAINED", "rejected": "REJECTED"}


@dataclass(frozen=True, slots=True)
class Clock:
    now: int  # Unix ms
    hour_ms: int  # one follow-up "hour" (FOLLOW_UP_HOUR_SECONDS, scaled for tests and demos)


def transition(case: CaseRecord, event: Event, clock: Clock) -> CaseRecord:
    """The case after `event`; unchanged when the event is a repeat, late, or not applicable."""
    if case.status in TERMINAL_STATUSES:
        return case
    changed = _transition(case, event, clock)
    spent = _usage_of(event)
    if changed is case or spent == TokenUsage():
        return changed
    total = changed.token_usage
    return msgspec.structs.replace(
        changed,
        token_usage=TokenUsageRecord(
            prompt_tokens=total.prompt_tokens + spent.prompt_tokens,
            completion_tokens=total.completion_tokens + spent.completion_tokens,
        ),
    )


def _usage_of(event: Event) -> TokenUsage:
    match event:
        case EmailSent():
            return event.usage
        case ReplyJudged() | InputJudged():
            return event.judgement.usage
        case _:
            return TokenUsage()


def _transition(case: CaseRecord, event: Event, clock: Clock) -> CaseRecord:
    match event:
        case CaseStarted():
            return _started(case, clock)
        case EmailSent():
            return _email_sent(case, event, clock)
        case SendRejected():
            if event.attempt <= case.attempt_count:
                return case
            return _fail(case, "REJECTED", event.reason, clock)
        case SendFailed():
            if event.attempt <= case.attempt_count:
                return case
            return _fail(case, "send_failed", event.reason, clock)
        case FollowUpDue():
            return _follow_up_due(case, clock)
        case ReplyJudged():
            return _reply_judged(case, event, clock)
        case InputJudged():
            return _input_judged(case, event, clock)
        case DeliveryFailed():
            return _fail(case, DELIVERY_RESULT_STATUS[event.kind], event.detail or None, clock)
        case AgentStuck():
            if case.status == "INPUT_NEEDED":
                return case
            return _need_input(case, event.question, clock, source=event.source)


# ---- transitions -----------------------------------------------------------------------------------------


def _touch(case: CaseRecord, clock: Clock, **changes: Any) -> CaseRecord:
    """A client-visible change: updatedAt strictly increases, so every event id is unique."""
    return msgspec.structs.replace(case, updated_at=max(clock.now, case.updated_at + 1), **changes)


def _request_send(
    case: CaseRecord,
    clock: Clock,
    *,
    attempt: int,
    kind: EmailKind,
    in_reply_to: str | None,
    draft_subject: str | None = None,
    draft_text: str | None = None,
) -> CaseRecord:
    command = SendEmailCommand(
        case_id=case.case_id,
        attempt=attempt,
        kind=kind,
        in_reply_to=in_reply_to,
        draft_subject=draft_subject,
        draft_text=draft_text,
    )
    message = outbox_message(
        subject=CMD_SEND,
        stream_name=CASE_COMMANDS.name,
        # A re-request after the lease gets a new id: the first one may be gone (parked or expired).
        msg_id=f"send:{case.case_id}:{attempt}:{clock.now}",
        payload=command,
    )
    requested = msgspec.structs.replace(
        case, awaiting_send=attempt, awaiting_kind=kind, next_action_at=clock.now + SEND_LEASE_MS
    )
    return with_outbox(requested, [message], now=clock.now)


def _started(case: CaseRecord, clock: Clock) -> CaseRecord:
    if case.status != "CREATED" or case.awaiting_send is not None or case.attempt_count > 0:
        return case
    started = msgspec.structs.replace(case, pending_create=False)
    return _request_send(started, clock, attempt=1, kind="first", in_reply_to=None)


def _email_sent(case: CaseRecord, event: EmailSent, clock: Clock) -> CaseRecord:
    if event.attempt <= case.attempt_count:
        return case
    follow_ups = case.follow_ups_since_reply + (1 if event.kind == "follow_up" else 0)
    return _touch(
        case,
        clock,
        status="RUNNING",
        attempt_count=event.attempt,
        follow_ups_since_reply=follow_ups,
        thread_id=case.thread_id or event.thread_id,
        last_message_id=event.message_id,
        awaiting_send=None,
        awaiting_kind=None,
        pending_create=False,
        next_action_at=event.sent_at + case.follow_up_delay_hours * clock.hour_ms,
    )


def _follow_up_due(case: CaseRecord, clock: Clock) -> CaseRecord:
    if case.status not in ("CREATED", "RUNNING") or clock.now < case.next_action_at:
        return case
    if case.awaiting_send is not None:
        # The send we asked for was never confirmed: ask again, same attempt (the adapter deduplicates).
        return _request_send(
            case,
            clock,
            attempt=case.awaiting_send,
            kind=case.awaiting_kind or "follow_up",
            in_reply_to=case.last_inbound_message_id if case.awaiting_kind == "reply" else case.last_message_id,
        )
    if case.status == "CREATED":
        return _request_send(case, clock, attempt=1, kind="first", in_reply_to=None)
    if case.follow_ups_since_reply >= case.max_attempts:
        return _fail(case, "max_retries", None, clock)
    return _request_send(
        case, clock, attempt=case.attempt_count + 1, kind="follow_up", in_reply_to=case.last_message_id
    )


def _fail(case: CaseRecord, result_status: str, reason: str | None, clock: Clock) -> CaseRecord:
    failed = _touch(
        case,
        clock,
        status="FAILED",
        result_status=result_status,
        failure_reason=reason,
        next_action_at=NOTHING_SCHEDULED,
        awaiting_send=None,
        awaiting_kind=None,
    )
    return with_outbox(failed, [case_event(failed, "case.failed")], now=clock.now)


def _remember(ids: list[str], new_id: str) -> list[str]:
    return [*ids, new_id][-HANDLED_MEMORY:]


def _reply_judged(case: CaseRecord, event: ReplyJudged, clock: Clock) -> CaseRecord:
    message = event.message
    if message.message_id in case.handled_message_ids:
        return case
    known = {attachment.attachment_id for attachment in case.attachments}
    attachments = [*case.attachments, *(a for a in message.attachments if a.attachment_id not in known)]
    seen = msgspec.structs.replace(
        case,
        handled_message_ids=_remember(case.handled_message_ids, message.message_id),
        follow_ups_since_reply=0,
        last_message_id=message.message_id,
        last_inbound_message_id=message.message_id,
        attachments=attachments,
    )
    return _apply_judgement(seen, event.judgement, clock, reply_to=message.message_id, source=message.message_id)


def _input_judged(case: CaseRecord, event: InputJudged, clock: Clock) -> CaseRecord:
    request = case.input_request
    if (
        case.status != "INPUT_NEEDED"
        or request is None
        or request.id != event.input_request_id
        or event.input_request_id in case.handled_input_ids
    ):
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
    case: CaseRecord, judgement: Judgement, clock: Clock, *, reply_to: str | None, source: str
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
                awaiting_send=None,
                awaiting_kind=None,
            )
            return with_outbox(completed, [case_event(completed, "case.completed")], now=clock.now)
        case "REQUIRES_REPLY":
            running = _touch(case, clock, status="RUNNING")
            draft = judgement.reply
            return _request_send(
                running,
                clock,
                attempt=case.attempt_count + 1,
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


def _need_input(case: CaseRecord, question: str, clock: Clock, *, source: str) -> CaseRecord:
    request = InputRequestRecord(
        # Derived from what caused it, so recomputing the same transition gives the same id.
        id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"caseflow:{case.case_id}:{source}")),
        question=question,
        status="PENDING",
        requested_at=max(clock.now, case.updated_at + 1),
    )
    paused = _touch(
        case,
        clock,
        status="INPUT_NEEDED",
        input_request=request,
        next_action_at=NOTHING_SCHEDULED,
        awaiting_send=None,
        awaiting_kind=None,
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
