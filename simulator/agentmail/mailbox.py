"""The simulated AgentMail account: inboxes, threads, messages, attachment bytes, webhooks, idempotency keys.

Plain synchronous state, kept in memory and changed only from the event loop's thread, so no locks are needed:
every method runs to completion before another request is served. Methods raise `ApiError` with the status
and error body AgentMail would answer; `simulation.py` adds time (events, scripted replies) on top.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parseaddr
from typing import Final

import msgspec

from simulator.agentmail import wire
from simulator.agentmail.counterparties import Behaviour, counterparty_for

MAX_RECIPIENTS: Final = 50
MAX_PAGE: Final = 100
DEFAULT_DOMAIN: Final = "agentmail.to"
_IDEMPOTENCY_KEY: Final = re.compile(r"^[A-Za-z0-9\-._~]{1,256}$")
_DISPLAY_NAME_FORBIDDEN: Final = re.compile(r'[()<>@,;:\\"\[\]\x00-\x1f]')
_PREVIEW_CHARS: Final = 200


def iso(moment: datetime) -> str:
    """AgentMail's timestamp format: RFC 3339 in UTC with milliseconds."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def as_list(addresses: wire.Addresses | None) -> list[str]:
    if addresses is None:
        return []
    return [addresses] if isinstance(addresses, str) else list(addresses)


def bare_address(mailbox: str) -> str:
    return parseaddr(mailbox)[1].lower()


@dataclass(frozen=True, slots=True)
class StoredFile:
    attachment: wire.Attachment
    content: bytes
    inbox_id: str
    thread_id: str
    message_id: str


@dataclass(frozen=True, slots=True)
class NewFile:
    filename: str
    content_type: str
    content: bytes


@dataclass(slots=True)
class _Remembered:
    fingerprint: str
    response: wire.SendMessageResponse


@dataclass(slots=True)
class Mailbox:
    default_inbox: str
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    inboxes: dict[str, wire.Inbox] = field(default_factory=dict)
    messages: dict[str, wire.Message] = field(default_factory=dict)
    threads: dict[str, list[str]] = field(default_factory=dict)  # thread id → message ids, oldest first
    files: dict[str, StoredFile] = field(default_factory=dict)
    webhooks: dict[str, wire.Webhook] = field(default_factory=dict)
    outbox: list[str] = field(default_factory=list)  # ids of messages sent through the API, in order
    blocked: set[str] = field(default_factory=set)  # bare addresses that bounced, complained or were rejected
    _idempotency: dict[str, _Remembered] = field(default_factory=dict)

    def __post_init__(self) -> None:
        username, _, domain = self.default_inbox.partition("@")
        self.create_inbox(wire.CreateInboxRequest(username=username, domain=domain))

    def now(self) -> str:
        return iso(self.clock())

    # ---- inboxes ------------------------------------------------------------------------------------------

    def create_inbox(self, request: wire.CreateInboxRequest) -> wire.Inbox:
        if request.client_id is not None:
            if "@" in request.client_id:
                raise wire.ApiError.validation("client_id", "client_id must not contain '@'")
            for inbox in self.inboxes.values():
                if inbox.client_id == request.client_id:
                    return inbox
        if request.display_name is not None and _DISPLAY_NAME_FORBIDDEN.search(request.display_name):
            raise wire.ApiError.validation("display_name", "display_name contains a forbidden character")
        username = (request.username or f"inbox-{uuid.uuid4().hex[:10]}").lower()
        inbox_id = f"{username}@{(request.domain or DEFAULT_DOMAIN).lower()}"
        if inbox_id in self.inboxes:
            raise wire.ApiError(403, "IsTakenError", "already_exists", f"Inbox {inbox_id} already exists")
        now = self.now()
        inbox = wire.Inbox(
            pod_id=str(uuid.uuid4()),
            inbox_id=inbox_id,
            email=inbox_id,
            display_name=request.display_name,
            client_id=request.client_id,
            metadata=request.metadata,
            created_at=now,
            updated_at=now,
        )
        self.inboxes[inbox_id] = inbox
        return inbox

    def inbox(self, inbox_id: str) -> wire.Inbox:
        found = self.inboxes.get(inbox_id.lower())
        if found is None:
            raise wire.ApiError.not_found("Inbox")
        return found

    def list_inboxes(self, *, limit: int | None, page_token: str | None) -> wire.ListInboxesResponse:
        newest_first = sorted(self.inboxes.values(), key=lambda inbox: inbox.created_at, reverse=True)
        start = _decode_token(page_token, "inboxes") if page_token else 0
        size = _page_size(limit) if limit is not None else MAX_PAGE
        page = newest_first[start : start + size]
        more = start + size < len(newest_first)
        return wire.ListInboxesResponse(
            count=len(page),
            limit=size,
            inboxes=page,
            next_page_token=_encode_token("inboxes", start + size) if more else None,
        )

    # ---- webhooks -----------------------------------------------------------------------------------------

    def create_webhook(self, request: wire.CreateWebhookRequest) -> wire.Webhook:
        if not request.event_types:
            raise wire.ApiError.validation("event_types", "at least one event type is required")
        if not request.url.startswith(("https://", "http://")):
            raise wire.ApiError.validation("url", "url must be an http(s) URL")
        if request.client_id is not None:
            for webhook in self.webhooks.values():
                if webhook.client_id == request.client_id:
                    return webhook
        now = self.now()
        webhook = wire.Webhook(
            webhook_id=f"ep_{uuid.uuid4().hex[:24]}",
            url=request.url,
            secret="whsec_" + base64.b64encode(os.urandom(24)).decode(),
            enabled=True,
            event_types=request.event_types,
            inbox_ids=request.inbox_ids,
            pod_ids=request.pod_ids,
            client_id=request.client_id,
            created_at=now,
            updated_at=now,
        )
        self.webhooks[webhook.webhook_id] = webhook
        return webhook

    def webhook(self, webhook_id: str) -> wire.Webhook:
        found = self.webhooks.get(webhook_id)
        if found is None:
            raise wire.ApiError.not_found("Webhook")
        return found

    # ---- sending ------------------------------------------------------------------------------------------

    def idempotent(
        self, key: str | None, fingerprint: object, send: Callable[[], wire.Message]
    ) -> tuple[wire.SendMessageResponse, wire.Message | None]:
        """Run `send` once per Idempotency-Key: a replay returns the first response and no new message."""
        if key is None:
            message = send()
            return wire.SendMessageResponse(message_id=message.message_id, thread_id=message.thread_id), message
        if not _IDEMPOTENCY_KEY.match(key):
            raise wire.ApiError.validation(
                "Idempotency-Key", "Idempotency-Key must be 1-256 characters from A-Z a-z 0-9 - . _ ~"
            )
        digest = hashlib.sha256(msgspec.json.encode(fingerprint, order="sorted")).hexdigest()
        remembered = self._idempotency.get(key)
        if remembered is not None:
            if remembered.fingerprint != digest:
                raise wire.ApiError(
                    409,
                    "ConflictError",
                    "conflict",
                    "Idempotency-Key was already used with a different request",
                )
            return remembered.response, None
        message = send()
        response = wire.SendMessageResponse(message_id=message.message_id, thread_id=message.thread_id)
        self._idempotency[key] = _Remembered(digest, response)
        return response, message

    def send(self, inbox_id: str, request: wire.SendMessageRequest) -> wire.Message:
        inbox = self.inbox(inbox_id)
        to, cc, bcc = as_list(request.to), as_list(request.cc), as_list(request.bcc)
        self._check_recipients(to + cc + bcc)
        return self._store_outbound(
            inbox,
            request,
            thread_id=str(uuid.uuid4()),
            to=to,
            cc=cc,
            bcc=bcc,
            subject=request.subject,
            in_reply_to=None,
        )

    def reply(self, inbox_id: str, message_id: str, request: wire.ReplyToMessageRequest) -> wire.Message:
        inbox = self.inbox(inbox_id)
        original = self.message(inbox.inbox_id, message_id)
        outbound = "sent" in original.labels
        if request.to is not None:
            to = as_list(request.to)
        elif outbound:
            # Following up on our own email goes to the people it went to.
            to = list(original.to)
        else:
            to = list(original.reply_to or [original.from_])
        cc, bcc = as_list(request.cc), as_list(request.bcc)
        if request.reply_all and not outbound:
            cc += [address for address in [*original.to, *(original.cc or [])] if address != inbox.inbox_id]
        self._check_recipients(to + cc + bcc)
        subject = original.subject or ""
        return self._store_outbound(
            inbox,
            request,
            thread_id=original.thread_id,
            to=to,
            cc=cc,
            bcc=bcc,
            subject=subject if subject.lower().startswith("re:") else f"Re: {subject}".strip(),
            in_reply_to=original,
        )

    def _check_recipients(self, recipients: list[str]) -> None:
        if not recipients:
            raise wire.ApiError.validation("to", "to, cc, or bcc must be specified")
        if len(recipients) > MAX_RECIPIENTS:
            raise wire.ApiError.validation("to", f"at most {MAX_RECIPIENTS} recipients per message")
        for recipient in recipients:
            address = bare_address(recipient)
            counterparty = counterparty_for(address)
            if address in self.blocked or (counterparty and counterparty.behaviour is Behaviour.REJECT):
                raise wire.ApiError(
                    403,
                    "MessageRejectedError",
                    "message_rejected",
                    f"Message rejected: {address} is on the suppression list",
                )

    def _store_outbound(
        self,
        inbox: wire.Inbox,
        request: wire.OutgoingMessage,
        *,
        thread_id: str,
        to: list[str],
        cc: list[str],
        bcc: list[str],
        subject: str | None,
        in_reply_to: wire.Message | None,
    ) -> wire.Message:
        files = [_decode_attachment(index, attachment) for index, attachment in enumerate(request.attachments or [])]
        sender = f"{inbox.display_name} <{inbox.inbox_id}>" if inbox.display_name else inbox.inbox_id
        text = request.text
        full_text = text
        if in_reply_to is not None and text is not None:
            # AgentMail quotes the answered email under a reply's text; extracted_text keeps only the new words.
            full_text = f"{text}\n\n{_quote(in_reply_to)}"
        message = self._store(
            inbox_id=inbox.inbox_id,
            thread_id=thread_id,
            labels=["sent", *(request.labels or [])],
            sender=sender,
            to=to,
            cc=cc,
            bcc=bcc,
            reply_to=as_list(request.reply_to),
            subject=subject,
            text=full_text,
            extracted_text=text,
            html=request.html,
            files=files,
            headers=request.headers,
            in_reply_to=in_reply_to,
        )
        self.outbox.append(message.message_id)
        return message

    def receive(
        self,
        inbox_id: str,
        *,
        sender: str,
        to: list[str] | None,
        subject: str | None,
        text: str,
        html: str | None,
        files: list[NewFile],
        headers: dict[str, str] | None,
        in_reply_to: wire.Message | None,
    ) -> wire.Message:
        """Store an email that arrived in `inbox_id`: a reply in `in_reply_to`'s thread, or a fresh thread."""
        inbox = self.inbox(inbox_id)
        if subject is None and in_reply_to is not None:
            original = in_reply_to.subject or ""
            subject = original if original.lower().startswith("re:") else f"Re: {original}"
        return self._store(
            inbox_id=inbox.inbox_id,
            thread_id=in_reply_to.thread_id if in_reply_to else str(uuid.uuid4()),
            labels=["received", "unread"],
            sender=sender,
            to=to or [inbox.inbox_id],
            cc=[],
            bcc=[],
            reply_to=[],
            subject=subject,
            text=f"{text}\n\n{_quote(in_reply_to)}" if in_reply_to else text,
            extracted_text=text,
            html=html,
            files=files,
            headers=headers,
            in_reply_to=in_reply_to,
        )

    def _store(
        self,
        *,
        inbox_id: str,
        thread_id: str,
        labels: list[str],
        sender: str,
        to: list[str],
        cc: list[str],
        bcc: list[str],
        reply_to: list[str],
        subject: str | None,
        text: str | None,
        extracted_text: str | None,
        html: str | None,
        files: list[NewFile],
        headers: dict[str, str] | None,
        in_reply_to: wire.Message | None,
    ) -> wire.Message:
        now = self.now()
        message_id = f"<{uuid.uuid4()}@agentmail.sim>"
        attachments = []
        for new in files:
            attachment = wire.Attachment(
                attachment_id=str(uuid.uuid4()),
                filename=new.filename,
                size=len(new.content),
                content_type=new.content_type,
                content_disposition="attachment",
            )
            attachments.append(attachment)
            self.files[attachment.attachment_id] = StoredFile(
                attachment, new.content, inbox_id=inbox_id, thread_id=thread_id, message_id=message_id
            )
        body_size = sum(len((part or "").encode()) for part in (text, html))
        message = wire.Message(
            inbox_id=inbox_id,
            thread_id=thread_id,
            message_id=message_id,
            labels=labels,
            timestamp=now,
            from_=sender,
            to=to,
            cc=cc or None,
            bcc=bcc or None,
            reply_to=reply_to or None,
            subject=subject,
            preview=(extracted_text or text or "")[:_PREVIEW_CHARS] or None,
            text=text,
            html=html,
            extracted_text=extracted_text,
            attachments=attachments or None,
            in_reply_to=in_reply_to.message_id if in_reply_to else None,
            references=[*(in_reply_to.references or []), in_reply_to.message_id] if in_reply_to else None,
            headers=headers or None,
            size=body_size + sum(attachment.size for attachment in attachments),
            created_at=now,
            updated_at=now,
        )
        self.messages[message_id] = message
        self.threads.setdefault(thread_id, []).append(message_id)
        return message

    # ---- reading ------------------------------------------------------------------------------------------

    def message(self, inbox_id: str, message_id: str) -> wire.Message:
        found = self.messages.get(message_id)
        if found is None or found.inbox_id != inbox_id.lower():
            raise wire.ApiError.not_found("Message")
        return found

    def thread_messages(self, thread_id: str) -> list[wire.Message]:
        return [self.messages[message_id] for message_id in self.threads.get(thread_id, [])]

    def thread_item(self, thread_id: str) -> wire.ThreadItem:
        return _thread_item(self.thread_messages(thread_id))

    def thread(self, inbox_id: str | None, thread_id: str, *, limit: int | None, page_token: str | None) -> wire.Thread:
        """GET thread: unpaged (every message), or with `limit` the newest page first, older pages by token."""
        try:
            uuid.UUID(thread_id)
        except ValueError:
            raise wire.ApiError.validation("thread_id", "Invalid UUID") from None
        messages = self.thread_messages(thread_id)
        if not messages or (inbox_id is not None and messages[0].inbox_id != inbox_id.lower()):
            raise wire.ApiError.not_found("Thread")
        end = len(messages)
        if page_token is not None:
            end = _decode_token(page_token, thread_id)
        size = _page_size(limit) if limit is not None else end
        start = max(0, end - size)
        page = messages[start:end]
        item = _thread_item(messages)
        return wire.Thread(
            **msgspec.structs.asdict(item),
            count=len(page),
            limit=limit,
            messages=page,
            next_page_token=_encode_token(thread_id, start) if start > 0 else None,
        )

    def attachment(
        self, inbox_id: str, attachment_id: str, *, message_id: str | None = None, thread_id: str | None = None
    ) -> StoredFile:
        found = self.files.get(attachment_id)
        if (
            found is None
            or found.inbox_id != inbox_id.lower()
            or (message_id is not None and found.message_id != message_id)
            or (thread_id is not None and found.thread_id != thread_id)
        ):
            raise wire.ApiError.not_found("Attachment")
        return found


def _quote(message: wire.Message) -> str:
    body = message.extracted_text or message.text or ""
    quoted = "\n".join(f"> {line}" if line else ">" for line in body.splitlines())
    return f"On {message.timestamp}, {message.from_} wrote:\n{quoted}"


def _decode_attachment(index: int, attachment: wire.SendAttachment) -> NewFile:
    if attachment.content is None:
        raise wire.ApiError.validation(
            f"attachments.{index}.content", "the simulator accepts attachments with base64 content only"
        )
    try:
        content = base64.b64decode(attachment.content, validate=True)
    except binascii.Error:
        raise wire.ApiError.validation(f"attachments.{index}.content", "content must be base64") from None
    return NewFile(
        filename=attachment.filename or f"attachment-{index + 1}",
        content_type=attachment.content_type or "application/octet-stream",
        content=content,
    )


def _thread_item(messages: list[wire.Message]) -> wire.ThreadItem:
    first, last = messages[0], messages[-1]
    received = [message for message in messages if "received" in message.labels]
    sent = [message for message in messages if "sent" in message.labels]
    attachments = [attachment for message in messages for attachment in message.attachments or []]
    return wire.ThreadItem(
        inbox_id=first.inbox_id,
        thread_id=first.thread_id,
        labels=sorted({label for message in messages for label in message.labels}),
        timestamp=last.timestamp,
        received_timestamp=received[-1].timestamp if received else None,
        sent_timestamp=sent[-1].timestamp if sent else None,
        senders=list(dict.fromkeys(message.from_ for message in messages)),
        recipients=list(dict.fromkeys(address for message in messages for address in message.to)),
        subject=first.subject,
        preview=last.preview,
        attachments=attachments or None,
        last_message_id=last.message_id,
        message_count=len(messages),
        size=sum(message.size for message in messages),
        created_at=first.created_at,
        updated_at=last.updated_at,
    )


def _page_size(limit: int) -> int:
    if not 1 <= limit <= MAX_PAGE:
        raise wire.ApiError.validation("limit", f"limit must be between 1 and {MAX_PAGE}")
    return limit


def _encode_token(scope: str, position: int) -> str:
    return base64.urlsafe_b64encode(msgspec.json.encode({"scope": scope, "position": position})).decode()


class _Token(msgspec.Struct):
    scope: str
    position: int


def _decode_token(token: str, scope: str) -> int:
    try:
        decoded = msgspec.json.decode(base64.urlsafe_b64decode(token.encode()), type=_Token)
    except (ValueError, msgspec.DecodeError):
        decoded = None
    if decoded is None or decoded.scope != scope or decoded.position < 0:
        raise wire.ApiError.validation("page_token", "Invalid page_token")
    return decoded.position
