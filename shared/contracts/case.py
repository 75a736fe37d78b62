"""Case contracts: the public case shapes (HTTP bodies and views), the case service's requests, its durable
commands, and the case events the webhook service turns into client webhooks.

Field names follow the Offload contract (camelCase on the wire). Structural rules (types, required fields,
lengths, ranges) live here as msgspec constraints so that decoding and the OpenAPI document agree; semantic
rules (email syntax, IANA zone, JSON Schema validity, URL policy) are checked by the case service.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from shared.contracts.base import Contract

# Request/reply (queue group "case").
CREATE: Final = "case.rpc.create"
GET: Final = "case.rpc.get"
LIST: Final = "case.rpc.list"
PROVIDE_INPUT: Final = "case.rpc.provide_input"
CANCEL: Final = "case.rpc.cancel"
ATTACHMENT: Final = "case.rpc.attachment"
CHECK_OWNER: Final = "case.rpc.check_owner"

# Durable commands (stream CASE_COMMANDS); Nats-Msg-Id is the command id.
# A confirmed create, published by the gateway once the client is being answered 201: one subject per case,
# `case.cmd.created.<caseId>`, so the reconciler can look a case's confirmation up (a direct get by subject).
CMD_CREATED: Final = "case.cmd.created.*"
CMD_INPUT_PROVIDED: Final = "case.cmd.input_provided"
# The worker's own queue of emails to send (payload private to the case service).
CMD_SEND: Final = "case.cmd.send"
# The reconciler's request to judge a stored reply that was never judged (payload private to the case service).
CMD_JUDGE_REPLY: Final = "case.cmd.judge_reply"

# Case events (stream CASE_EVENTS): `case.evt.<event type without the "case." prefix>`.
EventType = Literal["case.completed", "case.failed", "case.input_needed", "case.cancelled"]


def created_subject(case_id: str) -> str:
    return CMD_CREATED.removesuffix("*") + case_id


def created_msg_id(case_id: str) -> str:
    """Nats-Msg-Id of a case's created command: a replayed create publishes it again, deduplicated."""
    return f"created:{case_id}"


def event_subject(event_type: EventType) -> str:
    return "case.evt." + event_type.removeprefix("case.")


CaseStatus = Literal["CREATED", "RUNNING", "INPUT_NEEDED", "COMPLETED", "FAILED", "CANCELLED"]
TERMINAL_STATUSES: Final[frozenset[str]] = frozenset({"COMPLETED", "FAILED", "CANCELLED"})
# Offload's "nothing scheduled" value for nextActionAt (9999-12-31T23:59:59.999Z).
NOTHING_SCHEDULED: Final = 253402300799999

Constraint = Annotated[str, Meta(min_length=1, max_length=1000)]


# ---- shapes shared by bodies and views -------------------------------------------------------------------


class Goal(Contract, frozen=True, omit_defaults=True):
    objective: Annotated[str, Meta(min_length=1, max_length=4000)]
    knowledge: str | dict[str, Any] | None = None


class Counterparty(Contract, frozen=True, omit_defaults=True):
    address: Annotated[str, Meta(min_length=1, max_length=320)]
    name: Annotated[str, Meta(min_length=1, max_length=200)]
    company: Annotated[str, Meta(max_length=200)] | None = None
    timezone: Annotated[str, Meta(max_length=64)] | None = None
    custom_data: dict[str, str] | None = None


class SenderPersona(Contract, frozen=True, omit_defaults=True):
    name: Annotated[str, Meta(min_length=1, max_length=200)]
    role: Annotated[str, Meta(max_length=200)] | None = None
    company: Annotated[str, Meta(max_length=200)] | None = None
    tone: Annotated[str, Meta(max_length=200)] | None = None


class NewCase(Contract, frozen=True):
    """The body of `POST /cases`. Unknown fields are ignored (Offload-compatible)."""

    channel: Annotated[str, Meta(description='Only "EMAIL" is supported.', examples=["EMAIL"])]
    goal: Goal
    counterparty: Counterparty
    sender_persona: SenderPersona
    client_reference_id: Annotated[str, Meta(max_length=256)] | None = None
    constraints: Annotated[list[Constraint], Meta(max_length=50)] | None = None
    max_attempts: Annotated[int, Meta(ge=0, le=20)] = 3
    follow_up_delay_hours: Annotated[int, Meta(ge=1, le=8760)] = 72
    result_schema: dict[str, Any] | None = None
    client_webhook_url: Annotated[str, Meta(max_length=2048)] | None = None
    metadata: dict[str, Any] | None = None


class InputBody(Contract, frozen=True):
    """The body of `POST /cases/{id}/input`; both fields are trimmed and must stay non-empty."""

    input_request_id: Annotated[str, Meta(min_length=1, max_length=256)]
    provided_context: Annotated[str, Meta(min_length=1, max_length=10_000)]


class AttachmentMeta(Contract, frozen=True):
    attachment_id: str
    name: str
    size: int
    type: str
    message_id: str
    inbox_id: str
    received_at: int


class InputRequestView(Contract, frozen=True):
    id: str
    question: str
    status: Literal["PENDING", "RESOLVED"]
    requested_at: int


# The status timeline keeps its first entry (CREATED) and the newest ones, this many in all: a case that
# bounces RUNNING ⇄ INPUT_NEEDED for weeks keeps a bounded document and view.
STATUS_HISTORY_LIMIT: Final = 20

# What moved a case into a status (`statusHistory[].cause`): the lifecycle event that caused the change.
# "unrecorded" marks the current status of a case stored before statuses were recorded (its `at` is then
# the case's updatedAt, the latest time known).
StatusCause = Literal[
    "created",
    "email_sent",
    "reply_judged",
    "input_judged",
    "agent_stuck",
    "follow_up_due",
    "send_rejected",
    "send_failed",
    "delivery_failed",
    "cancel_requested",
    "unrecorded",
]


class StatusChange(Contract, frozen=True):
    """One entry of a case's status timeline: the status it entered, when (Unix ms, its updatedAt then), why."""

    status: Annotated[CaseStatus, Meta(description="The status the case entered.")]
    at: Annotated[int, Meta(description="When (Unix ms): the case's updatedAt at that change.")]
    cause: Annotated[StatusCause, Meta(description="The lifecycle event that moved the case.")]


class TranscriptEntry(Contract, frozen=True):
    direction: Literal["outbound", "inbound"]
    message_id: str
    from_: str = msgspec.field(name="from")
    to: list[str]
    subject: str
    text: str
    at: int


class CaseView(Contract, frozen=True, omit_defaults=True):
    """`GET /cases/{id}`. Optional fields are left out when absent; `inputRequest` is always present."""

    case_id: str
    status: CaseStatus
    created_at: int
    updated_at: int
    next_action_at: int
    attempt_count: int
    max_attempts: int
    follow_up_delay_hours: int
    channel: str
    counterparty: Counterparty
    attachments: list[AttachmentMeta]
    goal: Goal
    sender_persona: SenderPersona
    input_request: InputRequestView | None
    client_reference_id: str | None = None
    result_status: str | None = None
    result: dict[str, Any] | None = None
    result_schema: dict[str, Any] | None = None
    constraints: list[str] | None = None
    metadata: dict[str, Any] | None = None
    failure_reason: str | None = None
    # The status timeline, oldest first: the first change and the newest ones (STATUS_HISTORY_LIMIT in all).
    status_history: Annotated[
        list[StatusChange],
        Meta(description=f"Status changes, oldest first: the first and the newest {STATUS_HISTORY_LIMIT - 1}."),
    ] = []
    # How many changes between the first and the newest the bounded timeline leaves out (only when some are).
    status_history_omitted: Annotated[
        int, Meta(description="Changes left out between the first and the newest (present only when not 0).")
    ] = 0
    # Only with includeTranscript=true: UNSET leaves them out; None means "no thread yet".
    conversation_thread: str | UnsetType | None = UNSET
    conversation_messages: list[TranscriptEntry] | UnsetType | None = UNSET
    # How many of the thread's oldest messages the size-capped transcript leaves out (only when some are).
    conversation_messages_omitted: int | UnsetType = UNSET


class CreatedCase(Contract, frozen=True):
    case_id: str


class CasePage(Contract, frozen=True):
    items: list[CaseView]
    next_cursor: str | None


class InputAccepted(Contract, frozen=True):
    case_id: str
    input_request_id: str
    accepted: bool


class AttachmentDownload(Contract, frozen=True):
    attachment_id: str
    name: str
    size: int
    type: str
    message_id: str
    inbox_id: str
    received_at: int
    download_url: str
    expires_at: str


# ---- requests to the case service (gateway → case) --------------------------------------------------------


class CreateCase(Contract, frozen=True):
    """Replies Ok[CreateCaseResult]; Err INVALID_REQUEST / USAGE_LIMIT_REACHED / IDEMPOTENCY_KEY_* /
    INTERNAL_ERROR / SERVICE_UNAVAILABLE (its deadline passed before the case was stored).

    The stored case is not started until the asker confirms it by publishing its created command
    (`created_subject`); one never confirmed is removed by the reconciler and its usage unit released."""

    client_id: str
    plan: str
    case: NewCase
    idempotency_key: str | None = None


class CreateCaseResult(Contract, frozen=True):
    case_id: str
    replayed: bool


class CaseRef(Contract, frozen=True):
    """A request about one client's case: Err CASE_NOT_FOUND, or FORBIDDEN for another client's case."""

    client_id: str
    case_id: str


class GetCase(Contract, frozen=True):
    client_id: str
    case_id: str
    include_transcript: bool = False


class ListCases(Contract, frozen=True):
    client_id: str
    statuses: list[str] = []
    client_reference_id: str | None = None
    updated_after: int | None = None
    limit: int = 50
    cursor: str | None = None


class ProvideInput(Contract, frozen=True):
    client_id: str
    case_id: str
    input_request_id: str
    provided_context: str


class GetAttachment(Contract, frozen=True):
    client_id: str
    case_id: str
    attachment_id: str


class OwnerChecked(Contract, frozen=True):
    case_id: str


# ---- durable commands (to the case worker) ------------------------------------------------------


class CaseCreatedCommand(Contract, frozen=True):
    """On `created_subject(case_id)`: the gateway is answering the create 201, so the worker may start it."""

    case_id: str


class InputProvidedCommand(Contract, frozen=True):
    case_id: str
    input_request_id: str
    provided_context: str


# ---- case events (case service → webhook service) ----------------------------------------------------------


class CaseEventData(Contract, frozen=True):
    """`data` of a client webhook, exactly as Offload sends it (fields absent when UNSET)."""

    case_id: str
    status: CaseStatus
    channel: str
    attempt_count: int
    attachments: list[AttachmentMeta]
    client_reference_id: str | UnsetType = UNSET
    result_status: str | UnsetType = UNSET
    result: dict[str, Any] | UnsetType = UNSET
    metadata: dict[str, Any] | UnsetType = UNSET
    failure_reason: str | UnsetType | None = UNSET
    input_request: str | UnsetType = UNSET
    input_request_id: str | UnsetType = UNSET
    input_request_status: str | UnsetType = UNSET
    input_requested_at: int | UnsetType = UNSET


class CaseEvent(Contract, frozen=True):
    """Published on `event_subject(event_type)` with Nats-Msg-Id = event_id."""

    event_id: str  # evt_<caseId>_<event_type with . → _>_<updatedAt>
    event_type: EventType
    timestamp: int  # the case's updatedAt
    client_id: str
    webhook_url: str | None
    data: CaseEventData


def case_event_id(case_id: str, event_type: EventType, updated_at: int) -> str:
    return f"evt_{case_id}_{event_type.replace('.', '_')}_{updated_at}"
