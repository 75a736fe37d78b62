"""The adapter's records: the messages it sent or received (`messages`) and the webhook events it handled.

Design decision: these are the adapter's own view of AgentMail's mail, kept so transcripts and send idempotency
never need AgentMail; AgentMail's JSON bodies themselves are in `payloads.py` and never stored as they come.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from shared.records import Record


class StoredAttachment(Record, frozen=True):
    attachment_id: str
    filename: str
    size: int
    content_type: str


class StoredMessage(Record, frozen=True):
    message_id: str = msgspec.field(name="_id")
    inbox_id: str
    thread_id: str
    direction: Literal["outbound", "inbound"]
    from_address: str
    to: list[str]
    subject: str
    text: str
    timestamp: int  # Unix ms: when AgentMail received it, or when we sent it
    recorded_at: int  # Unix ms
    attachments: list[StoredAttachment] = []
    in_reply_to: str | None = None
    # Outbound: the case and attempt that sent it (the idempotency of SendEmail/ReplyEmail).
    case_id: str | None = None
    attempt: int | None = None
    # Inbound: the webhook event that brought it, and whether it was an auto-reply.
    event_id: str | None = None
    auto_submitted: bool = False


class HandledEvent(Record, frozen=True):
    """An `inbound_events` document, apart from its `_id` (the event id)."""

    event_type: str
    handled_at: int  # Unix ms
