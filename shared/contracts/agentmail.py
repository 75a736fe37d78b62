"""AgentMail adapter contracts: what other services ask the adapter, and the events it publishes.

The adapter is the only code that speaks AgentMail. Sends are idempotent by (case_id, attempt): the adapter
derives AgentMail's `Idempotency-Key` from them, so a retried request never emails twice.
"""

from __future__ import annotations

from typing import Final, Literal

from shared.contracts.base import Contract

# Request/reply (queue group "agentmail_adapter").
SEND: Final = "agentmail_adapter.rpc.send"
REPLY: Final = "agentmail_adapter.rpc.reply"
ATTACHMENT_LINK: Final = "agentmail_adapter.rpc.attachment_link"
TRANSCRIPT: Final = "agentmail_adapter.rpc.transcript"
INGEST_WEBHOOK: Final = "agentmail_adapter.rpc.ingest_webhook"

# JetStream, stream AGENTMAIL_EVENTS. Nats-Msg-Id is the AgentMail event_id.
MESSAGE_RECEIVED: Final = "agentmail.evt.message_received"
DELIVERY_EVENT: Final = "agentmail.evt.delivery"


class SendEmail(Contract, frozen=True):
    """First email of a case: a new thread. Replies Ok[SendOutcome]; transient provider failure after retries:
    Err SERVICE_UNAVAILABLE; anything else: Err INTERNAL_ERROR."""

    case_id: str
    attempt: int  # 1-based count of emails the agent has sent on this case, including this one
    to: list[str]
    subject: str
    text: str
    html: str | None = None


class ReplyEmail(Contract, frozen=True):
    """An email in an existing thread, answering `in_reply_to_message_id`. Same replies as SendEmail."""

    case_id: str
    attempt: int
    in_reply_to_message_id: str
    text: str
    html: str | None = None
    to: list[str] | None = None


class Sent(Contract, frozen=True, tag="sent"):
    message_id: str
    thread_id: str
    sent_at: int  # Unix ms


class Rejected(Contract, frozen=True, tag="rejected"):
    """AgentMail refused the message (403 message_rejected): the case fails with REJECTED."""

    reason: str


type SendOutcome = Sent | Rejected


class GetAttachmentLink(Contract, frozen=True):
    """Replies Ok[AttachmentLink], or Err INTERNAL_ERROR when AgentMail fails (the API answers 500)."""

    message_id: str
    attachment_id: str


class AttachmentLink(Contract, frozen=True):
    download_url: str
    expires_at: str  # ISO 8601, as AgentMail gives it


class GetTranscript(Contract, frozen=True):
    """Served from the adapter's own message store, never fetched live."""

    thread_id: str


class AttachmentInfo(Contract, frozen=True):
    attachment_id: str
    filename: str
    size: int
    content_type: str


class TranscriptMessage(Contract, frozen=True):
    direction: Literal["outbound", "inbound"]
    message_id: str
    from_address: str
    to: list[str]
    subject: str
    text: str
    at: int  # Unix ms
    attachments: list[AttachmentInfo] = []


class Transcript(Contract, frozen=True):
    thread_id: str
    messages: list[TranscriptMessage]  # oldest first


# The headers the gateway forwards with an AgentMail webhook's body (Svix's signature scheme), lower-cased.
WEBHOOK_SIGNATURE_HEADERS: Final = ("svix-id", "svix-timestamp", "svix-signature")


# Webhook bodies up to this size travel inline in IngestWebhook (base64 in JSON grows them by a third, and NATS
# carries at most 8 MB per message); larger ones go through the AGENTMAIL_INGRESS_BODIES object store bucket.
INLINE_WEBHOOK_BODY_BYTES: Final = 4 * 1024 * 1024


class IngestWebhook(Contract, frozen=True):
    """The gateway forwards AgentMail's webhook untouched: the exact body bytes and the svix-* headers.
    Replies Ok[WebhookAccepted] only after the event is stored and published; a bad or stale signature:
    Err INVALID_REQUEST (the gateway answers 400).

    A body over INLINE_WEBHOOK_BODY_BYTES is not inline: `body` is empty and `body_object` names it in the
    AGENTMAIL_INGRESS_BODIES object store, byte for byte as received."""

    body: bytes
    headers: dict[str, str]
    body_object: str | None = None


class WebhookAccepted(Contract, frozen=True):
    event_id: str
    duplicate: bool


class MessageReceived(Contract, frozen=True):
    """An inbound email on our inbox (AgentMail `message.received`)."""

    event_id: str
    inbox_id: str
    message_id: str
    thread_id: str
    from_address: str
    to: list[str]
    subject: str
    text: str
    received_at: int  # Unix ms
    # True for auto-replies (an Auto-Submitted header other than "no"): they are not counterparty replies.
    auto_submitted: bool = False
    in_reply_to: str | None = None
    attachments: list[AttachmentInfo] = []


class DeliveryEvent(Contract, frozen=True):
    """What happened to a message we sent (AgentMail message.delivered/bounced/complained/rejected)."""

    event_id: str
    kind: Literal["delivered", "bounced", "complained", "rejected"]
    inbox_id: str
    message_id: str
    thread_id: str
    at: int  # Unix ms
    detail: str = ""  # bounce type/sub-type, complaint type or rejection reason
