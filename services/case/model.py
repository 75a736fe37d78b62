"""The stored case: one MongoDB document per case, decoded into `CaseRecord`.

Every change to a case replaces the whole document under a version check (optimistic concurrency), and the
messages a change causes are written into the same document's `outbox` in that same write. A relay
publishes them to JetStream afterwards, so a crash between "state changed" and "message sent" loses nothing.
"""

from __future__ import annotations

from email.utils import parseaddr
from typing import Any, Final, Literal

import msgspec

from shared.contracts.case import AttachmentMeta, CaseStatus, Counterparty, Goal, SenderPersona, StatusChange
from shared.records import Record


class InputRequestRecord(Record, frozen=True):
    id: str
    question: str
    status: Literal["PENDING", "RESOLVED"]
    requested_at: int
    # Once RESOLVED: the client's answer and when it was last queued for the worker, so the reconciler can
    # queue it again from the case alone if it is not applied within its lease.
    provided_context: str | None = None
    answer_queued_at: int | None = None


class TokenUsageRecord(Record, frozen=True):
    """Model tokens spent on a case (writing and judging), for cost reporting and the per-case budget."""

    prompt_tokens: int = 0
    completion_tokens: int = 0


class OutboxMessage(Record, frozen=True):
    """A JetStream publish owed by a state change; `msg_id` makes a repeated relay a no-op."""

    msg_id: str
    subject: str
    stream: str
    payload: bytes


EmailKind = Literal["first", "follow_up", "reply"]


class SendEmailCommand(Record, frozen=True):
    """`case.cmd.send`: the worker sends email number `attempt` of the case (idempotent by case and attempt).

    A reply drafted while judging travels in `draft_*`; otherwise the agent writes the email at send time."""

    case_id: str
    attempt: int
    kind: EmailKind
    in_reply_to: str | None = None
    draft_subject: str | None = None
    draft_text: str | None = None


class JudgeReplyCommand(Record, frozen=True):
    """`case.cmd.judge_reply`: the worker judges a stored counterparty message (the reconciler's repair of a
    reply that was received but never judged)."""

    case_id: str
    message_id: str


class QueuedSend(Record, frozen=True):
    """An email decided while another one was already being sent: requested once that one is confirmed."""

    kind: EmailKind
    in_reply_to: str | None = None
    draft_subject: str | None = None
    draft_text: str | None = None


class UnjudgedReply(Record, frozen=True):
    """A counterparty message matched to the case and not yet judged (`noted_at` starts its lease)."""

    message_id: str
    thread_id: str
    noted_at: int
    attachments: list[AttachmentMeta] = []


class CaseRecord(Record, frozen=True):
    case_id: str = msgspec.field(name="_id")
    client_id: str
    status: CaseStatus
    created_at: int
    updated_at: int
    next_action_at: int
    max_attempts: int
    follow_up_delay_hours: int
    channel: str
    goal: Goal
    counterparty: Counterparty
    sender_persona: SenderPersona
    # The counterparty's bare, lower-cased address: inbound mail outside the thread is matched on it.
    counterparty_key: str = ""
    client_reference_id: str | None = None
    constraints: list[str] | None = None
    result_schema: dict[str, Any] | None = None
    client_webhook_url: str | None = None
    metadata: dict[str, Any] | None = None
    attempt_count: int = 0
    # Follow-ups sent since the counterparty last wrote: the budget `max_attempts` is spent against this.
    follow_ups_since_reply: int = 0
    attachments: list[AttachmentMeta] = []
    result_status: str | None = None
    result: dict[str, Any] | None = None
    failure_reason: str | None = None
    input_request: InputRequestRecord | None = None
    # The case's first thread; `thread_ids` holds every thread of the case (a counterparty may write fresh).
    thread_id: str | None = None
    thread_ids: list[str] = []
    # The newest message in the thread (ours or theirs): follow-ups and replies answer it.
    last_message_id: str | None = None
    # The newest counterparty message: the agent judges it and replies to it.
    last_inbound_message_id: str | None = None
    # The one email in flight: the worker has been asked to send attempt `awaiting_send` and has not yet
    # confirmed it. Once the worker has started sending it (`send_claimed`) its body is fixed in `outgoing_*`,
    # so a repeat after a crash sends the same body under the same attempt, and nothing supersedes it.
    awaiting_send: int | None = None
    awaiting_kind: EmailKind | None = None
    awaiting_in_reply_to: str | None = None
    send_requested_at: int | None = None
    send_claimed: bool = False
    outgoing_subject: str | None = None
    outgoing_text: str | None = None
    # What is to be sent once the email in flight is confirmed (a reply decided while it was being sent).
    queued_send: QueuedSend | None = None
    # The highest attempt number ever handed out: every distinct email gets a new one (its Idempotency-Key).
    last_attempt: int = 0
    # Counterparty messages matched to the case and not yet judged.
    unjudged_replies: list[UnjudgedReply] = []
    # When the reconciler should look at the case: the earliest lease of a step requested and not confirmed
    # (a send, an answer to apply, a reply to judge); None when nothing waits.
    repair_at: int | None = None
    # Recently handled inbound messages and input requests, so a redelivered event changes nothing.
    handled_message_ids: list[str] = []
    handled_input_ids: list[str] = []
    token_usage: TokenUsageRecord = TokenUsageRecord()
    # The status timeline, written by the transition that changes the status (same write): the first entry and
    # the newest ones, `status_history_omitted` counting those dropped between. Empty on cases stored before it.
    status_history: list[StatusChange] = []
    status_history_omitted: int = 0
    # Incremented by every write; writes carry the version they read.
    version: int = 0
    # Legacy (cases stored before creates were confirmed by the gateway): such a case was hidden until its
    # created command was published. New cases are stored visible, so it stays False.
    pending_create: bool = False
    # A create not yet confirmed (its created command not yet published by the gateway): by this time (Unix ms:
    # the request's deadline plus CREATE_CONFIRM_GRACE_SECONDS) the reconciler starts it if the command exists,
    # else removes it and releases its usage unit. None once there is nothing to confirm.
    confirm_by: int | None = None
    # The billing month its usage unit was reserved in (to release it if the create is never confirmed).
    usage_month: str | None = None
    outbox: list[OutboxMessage] = []
    outbox_pending_since: int | None = None


def address_key(address: str) -> str:
    return parseaddr(address)[1].strip().lower()


# Client-supplied free-form JSON is stored as JSON text, never as BSON sub-documents: its keys may start with
# `$` or contain `.` (JSON Schema's "$ref", "a.b"), its numbers may exceed 64 bits and its nesting may exceed
# MongoDB's depth limit, none of which a client should be able to turn into a storage error. Nothing is ever
# queried inside these values. Each entry: (parent path, field, stored field).
_JSON_TEXT_FIELDS: Final = (
    ((), "metadata", "metadataJson"),
    ((), "resultSchema", "resultSchemaJson"),
    ((), "result", "resultJson"),
    (("goal",), "knowledge", "knowledgeJson"),
    (("counterparty",), "customData", "customDataJson"),
)


def _parent(document: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    for key in path:
        document = document[key]
    return document


def to_document(record: CaseRecord) -> dict[str, Any]:
    document: dict[str, Any] = msgspec.to_builtins(record, builtin_types=(bytes,))
    for path, field, stored in _JSON_TEXT_FIELDS:
        parent = _parent(document, path)
        value = parent.pop(field, None)
        if value is not None:
            parent[stored] = msgspec.json.encode(value).decode()
    return document


def from_document(document: dict[str, Any]) -> CaseRecord:
    for path, field, stored in _JSON_TEXT_FIELDS:
        parent = _parent(document, path)
        text = parent.pop(stored, None)
        if text is not None:
            parent[field] = msgspec.json.decode(text)
    return msgspec.convert(document, CaseRecord)
