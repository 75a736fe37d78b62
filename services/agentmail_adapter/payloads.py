"""AgentMail's JSON bodies as the adapter reads and writes them (the subset in `agentmail.md`), as msgspec Structs.

Responses carry fields no schema declares and gain new ones over time, so every model ignores unknown fields
and treats as optional whatever the adapter can do without; requests leave out fields that are not set.
These types never leave the adapter: other services see the contracts in `shared/contracts/agentmail.py`.
"""

from __future__ import annotations

from datetime import datetime

import msgspec


class Model(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Base of every AgentMail body (snake_case on the wire, unknown fields ignored)."""


class ErrorResponse(Model, frozen=True, kw_only=True):
    name: str = ""
    code: str | None = None
    message: str | None = None


class CreateInbox(Model, frozen=True, kw_only=True):
    username: str | None = None
    domain: str | None = None
    display_name: str | None = None
    client_id: str | None = None


class Inbox(Model, frozen=True, kw_only=True):
    inbox_id: str
    email: str
    display_name: str | None = None
    client_id: str | None = None
    created_at: datetime | None = None


class Attachment(Model, frozen=True, kw_only=True):
    attachment_id: str
    size: int = 0
    filename: str | None = None
    content_type: str | None = None


class Message(Model, frozen=True, kw_only=True):
    inbox_id: str
    thread_id: str
    message_id: str
    timestamp: datetime
    from_: str = msgspec.field(default="", name="from")
    to: list[str] = []
    cc: list[str] = []
    labels: list[str] = []
    subject: str | None = None
    text: str | None = None
    html: str | None = None
    extracted_text: str | None = None
    attachments: list[Attachment] = []
    in_reply_to: str | None = None
    headers: dict[str, str] = {}


class Thread(Model, frozen=True, kw_only=True):
    """GET thread. The paging fields exist only in the newer API: absent, `messages` is the whole thread."""

    inbox_id: str
    thread_id: str
    messages: list[Message]
    subject: str | None = None
    message_count: int | None = None
    count: int | None = None
    next_page_token: str | None = None


class SendMessage(Model, frozen=True, kw_only=True):
    to: list[str]
    subject: str
    text: str
    html: str | None = None
    labels: list[str] | None = None


class ReplyMessage(Model, frozen=True, kw_only=True):
    text: str
    html: str | None = None
    to: list[str] | None = None
    labels: list[str] | None = None


class SentMessage(Model, frozen=True, kw_only=True):
    message_id: str
    thread_id: str


class AttachmentDownload(Model, frozen=True, kw_only=True):
    """GET attachment: a short-lived, unauthenticated `download_url` (never stored: ask again each time)."""

    attachment_id: str
    download_url: str
    expires_at: str
    filename: str | None = None
    size: int | None = None
    content_type: str | None = None


class CreateWebhook(Model, frozen=True, kw_only=True):
    url: str
    event_types: list[str]
    client_id: str | None = None
    inbox_ids: list[str] | None = None


class Webhook(Model, frozen=True, kw_only=True):
    webhook_id: str
    url: str
    secret: str
    enabled: bool = True
    event_types: list[str] = []


# ---- webhook events ---------------------------------------------------------------------------------------


class MessageRef(Model, frozen=True, kw_only=True):
    """The ids every delivery-event detail carries."""

    inbox_id: str
    thread_id: str
    message_id: str
    timestamp: datetime


class Delivery(MessageRef, frozen=True, kw_only=True):
    recipients: list[str] = []


class BouncedRecipient(Model, frozen=True, kw_only=True):
    address: str
    status: str = ""


class Bounce(MessageRef, frozen=True, kw_only=True):
    type: str = ""
    sub_type: str = ""
    recipients: list[BouncedRecipient] = []


class Complaint(MessageRef, frozen=True, kw_only=True):
    type: str = ""
    sub_type: str = ""
    recipients: list[str] = []


class Reject(MessageRef, frozen=True, kw_only=True):
    reason: str = ""


class WebhookEvent(Model, frozen=True, kw_only=True):
    """Every webhook body: `event_type`, `event_id` and the one detail object that type carries."""

    event_type: str
    event_id: str
    message: Message | None = None
    send: Delivery | None = None
    delivery: Delivery | None = None
    bounce: Bounce | None = None
    complaint: Complaint | None = None
    reject: Reject | None = None
