"""AgentMail's JSON shapes as the simulator serves them: requests, resources, error bodies and webhook events.

Field names, optionality and nesting follow `reference/agentmail-api.md` (absent optional fields are left out,
as AgentMail does). These are deliberately not the adapter's models: a double that shared the code it tests
would agree with its bugs; the official SDK's fidelity test is the independent check.
"""

from __future__ import annotations

from typing import Literal

import msgspec


class Wire(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Base for every AgentMail body: unknown request fields are ignored, absent optionals are not sent."""


# ---- errors -----------------------------------------------------------------------------------------------


class ErrorBody(Wire, frozen=True, kw_only=True):
    name: str
    message: str
    code: str | None = None


class FieldError(Wire, frozen=True, kw_only=True):
    path: list[str]
    message: str


class ValidationErrorBody(Wire, frozen=True, kw_only=True):
    name: str
    code: str
    errors: list[FieldError]
    message: str | None = None


# ---- inboxes and webhooks ---------------------------------------------------------------------------------


class CreateInboxRequest(Wire, frozen=True, kw_only=True):
    username: str | None = None
    domain: str | None = None
    display_name: str | None = None
    client_id: str | None = None
    metadata: dict[str, str | int | float | bool] | None = None


class Inbox(Wire, frozen=True, kw_only=True):
    pod_id: str
    inbox_id: str
    email: str
    updated_at: str
    created_at: str
    display_name: str | None = None
    client_id: str | None = None
    metadata: dict[str, str | int | float | bool] | None = None


class ListInboxesResponse(Wire, frozen=True, kw_only=True):
    count: int
    inboxes: list[Inbox]
    limit: int | None = None
    next_page_token: str | None = None


class CreateWebhookRequest(Wire, frozen=True, kw_only=True):
    url: str
    event_types: list[str]
    client_id: str | None = None
    inbox_ids: list[str] | None = None
    pod_ids: list[str] | None = None
    headers: dict[str, str] | None = None


class Webhook(Wire, frozen=True, kw_only=True):
    webhook_id: str
    url: str
    secret: str
    enabled: bool
    updated_at: str
    created_at: str
    event_types: list[str] | None = None
    inbox_ids: list[str] | None = None
    pod_ids: list[str] | None = None
    client_id: str | None = None


# ---- messages ---------------------------------------------------------------------------------------------

type Addresses = str | list[str]


class SendAttachment(Wire, frozen=True, kw_only=True):
    filename: str | None = None
    content_type: str | None = None
    content_disposition: Literal["attachment", "inline"] | None = None
    content_id: str | None = None
    content: str | None = None  # base64
    url: str | None = None


class OutgoingMessage(Wire, frozen=True, kw_only=True):
    """What a send and a reply have in common."""

    to: Addresses | None = None
    cc: Addresses | None = None
    bcc: Addresses | None = None
    reply_to: Addresses | None = None
    text: str | None = None
    html: str | None = None
    labels: list[str] | None = None
    attachments: list[SendAttachment] | None = None
    headers: dict[str, str] | None = None
    track_opens: bool | None = None


class SendMessageRequest(OutgoingMessage, frozen=True, kw_only=True):
    subject: str | None = None


class ReplyToMessageRequest(OutgoingMessage, frozen=True, kw_only=True):
    reply_all: bool | None = None


class SendMessageResponse(Wire, frozen=True, kw_only=True):
    message_id: str
    thread_id: str


class Attachment(Wire, frozen=True, kw_only=True):
    attachment_id: str
    size: int
    filename: str | None = None
    content_type: str | None = None
    content_disposition: str | None = None
    content_id: str | None = None


class AttachmentResponse(Attachment, frozen=True, kw_only=True):
    download_url: str
    expires_at: str


class Message(Wire, frozen=True, kw_only=True):
    inbox_id: str
    thread_id: str
    message_id: str
    labels: list[str]
    timestamp: str
    from_: str = msgspec.field(name="from")
    to: list[str]
    size: int
    updated_at: str
    created_at: str
    reply_to: list[str] | None = None
    cc: list[str] | None = None
    bcc: list[str] | None = None
    subject: str | None = None
    preview: str | None = None
    text: str | None = None
    html: str | None = None
    extracted_text: str | None = None
    extracted_html: str | None = None
    attachments: list[Attachment] | None = None
    in_reply_to: str | None = None
    references: list[str] | None = None
    headers: dict[str, str] | None = None


class ThreadItem(Wire, frozen=True, kw_only=True):
    inbox_id: str
    thread_id: str
    labels: list[str]
    timestamp: str
    senders: list[str]
    recipients: list[str]
    last_message_id: str
    message_count: int
    size: int
    updated_at: str
    created_at: str
    received_timestamp: str | None = None
    sent_timestamp: str | None = None
    subject: str | None = None
    preview: str | None = None
    attachments: list[Attachment] | None = None


class Thread(ThreadItem, frozen=True, kw_only=True):
    count: int
    messages: list[Message]
    limit: int | None = None
    next_page_token: str | None = None


# ---- webhook events ---------------------------------------------------------------------------------------


class MessageRef(Wire, frozen=True, kw_only=True):
    """The ids every delivery-event detail carries."""

    inbox_id: str
    thread_id: str
    message_id: str
    timestamp: str


class DeliveryDetail(MessageRef, frozen=True, kw_only=True):
    recipients: list[str]


class BouncedRecipient(Wire, frozen=True, kw_only=True):
    address: str
    status: str


class BounceDetail(MessageRef, frozen=True, kw_only=True):
    type: str
    sub_type: str
    recipients: list[BouncedRecipient]


class ComplaintDetail(MessageRef, frozen=True, kw_only=True):
    type: str
    sub_type: str
    recipients: list[str]


class RejectDetail(MessageRef, frozen=True, kw_only=True):
    reason: str


class Event(Wire, frozen=True, kw_only=True, omit_defaults=False):
    """The webhook envelope: `{"type": "event", "event_type", "event_id", <one detail object>}`."""

    event_type: str
    event_id: str
    type: Literal["event"] = "event"


class MessageReceivedEvent(Event, frozen=True, kw_only=True):
    message: Message
    thread: ThreadItem


class MessageSentEvent(Event, frozen=True, kw_only=True):
    send: DeliveryDetail


class MessageDeliveredEvent(Event, frozen=True, kw_only=True):
    delivery: DeliveryDetail


class MessageBouncedEvent(Event, frozen=True, kw_only=True):
    bounce: BounceDetail


class MessageComplainedEvent(Event, frozen=True, kw_only=True):
    complaint: ComplaintDetail


class MessageRejectedEvent(Event, frozen=True, kw_only=True):
    reject: RejectDetail


class ApiError(Exception):
    """An AgentMail error response: the status, the `{name, code, message}` body and optional headers."""

    def __init__(
        self,
        status: int,
        name: str,
        code: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.body: ErrorBody | ValidationErrorBody = ErrorBody(name=name, code=code, message=message)
        self.headers = headers or {}

    @classmethod
    def validation(cls, path: str, message: str) -> ApiError:
        error = cls(400, "ValidationError", "validation_error", message)
        error.body = ValidationErrorBody(
            name="ValidationError",
            code="validation_error",
            message=message,
            errors=[FieldError(path=[part for part in path.split(".") if part], message=message)],
        )
        return error

    @classmethod
    def not_found(cls, what: str) -> ApiError:
        return cls(404, "NotFoundError", "not_found", f"{what} not found")
