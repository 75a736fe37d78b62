"""Inbound AgentMail webhooks: Svix signature verification and the mapping to Caseflow's AgentMail events.

Verification is the `svix` package's (HMAC-SHA256 over `id.timestamp.body` with the `whsec_` secret, and its
fixed 5-minute replay window), run on the exact bytes the gateway received; nothing is parsed before the
signature holds. The mapping is pure: message bodies are read as `extracted_text`, then `text`, then `html`
reduced to text; `None` means the webhook left the body out and the message must be fetched.
"""

from __future__ import annotations

from collections.abc import Mapping
from email.utils import parseaddr
from html.parser import HTMLParser
from typing import Final, Literal

import msgspec
from svix.webhooks import Webhook as SvixVerifier
from svix.webhooks import WebhookVerificationError

from services.agentmail_adapter.payloads import Message, MessageRef, WebhookEvent
from shared.clock import unix_ms
from shared.contracts.agentmail import AttachmentInfo, DeliveryEvent, MessageReceived
from shared.errors import ErrorCode, ServiceError

MESSAGE_RECEIVED_TYPE: Final = "message.received"
MESSAGE_SENT_TYPE: Final = "message.sent"
type DeliveryKind = Literal["delivered", "bounced", "complained", "rejected"]
_decoder: Final = msgspec.json.Decoder(WebhookEvent)


class WebhookVerifier:
    def __init__(self, secret: str) -> None:
        self._svix = SvixVerifier(secret)

    def verify(self, body: bytes, headers: Mapping[str, str]) -> WebhookEvent:
        """The event in `body` if the svix-* headers sign it and are fresh; else ServiceError INVALID_REQUEST."""
        try:
            self._svix.verify(body, dict(headers))
        # The package raises ValueError subclasses (not its own error) for malformed signatures or non-UTF-8 bodies.
        except (WebhookVerificationError, ValueError) as exc:
            raise ServiceError(
                ErrorCode.INVALID_REQUEST, "The webhook signature is missing, invalid or stale."
            ) from exc
        try:
            return _decoder.decode(body)
        except msgspec.DecodeError as exc:
            raise ServiceError(ErrorCode.INVALID_REQUEST, f"The webhook body is not an AgentMail event: {exc}") from exc


def bare_address(mailbox: str) -> str:
    """`Jane Doe <jane@example.com>` → `jane@example.com` (unparseable input is returned as it is)."""
    return parseaddr(mailbox)[1] or mailbox.strip()


def body_text(message: Message) -> str | None:
    """The reply's own words: `extracted_text`, then `text`, then the text of `html`; None if none is present."""
    if message.extracted_text is not None:
        return message.extracted_text
    if message.text is not None:
        return message.text
    if message.html is not None:
        return html_to_text(message.html)
    return None


def is_auto_submitted(message: Message) -> bool:
    """An `Auto-Submitted` header whose keyword is not `no` marks an auto-reply (RFC 3834), not a person's answer.
    The keyword is the value's first token: parameters (`; ...`) and anything after a folded line are not it."""
    for name, value in message.headers.items():
        if name.lower() == "auto-submitted":
            keyword = value.strip().replace(";", " ").split(maxsplit=1)
            return not keyword or keyword[0].lower() != "no"
    return False


def message_received(event_id: str, message: Message, text: str) -> MessageReceived:
    return MessageReceived(
        event_id=event_id,
        inbox_id=message.inbox_id,
        message_id=message.message_id,
        thread_id=message.thread_id,
        from_address=bare_address(message.from_),
        to=[bare_address(address) for address in message.to],
        subject=message.subject or "",
        text=text,
        received_at=unix_ms(message.timestamp),
        auto_submitted=is_auto_submitted(message),
        in_reply_to=message.in_reply_to,
        attachments=[
            AttachmentInfo(
                attachment_id=attachment.attachment_id,
                filename=attachment.filename or "",
                size=attachment.size,
                content_type=attachment.content_type or "application/octet-stream",
            )
            for attachment in message.attachments
        ],
    )


def delivery_event(event: WebhookEvent) -> DeliveryEvent | None:
    """The DeliveryEvent for a delivered/bounced/complained/rejected webhook; None for any other type."""
    match event.event_type:
        case "message.delivered" if event.delivery is not None:
            return _delivery_event(event.event_id, "delivered", event.delivery, "")
        case "message.bounced" if event.bounce is not None:
            bounce = event.bounce
            return _delivery_event(event.event_id, "bounced", bounce, _joined(bounce.type, bounce.sub_type))
        case "message.complained" if event.complaint is not None:
            complaint = event.complaint
            return _delivery_event(event.event_id, "complained", complaint, _joined(complaint.type, complaint.sub_type))
        case "message.rejected" if event.reject is not None:
            return _delivery_event(event.event_id, "rejected", event.reject, event.reject.reason)
    return None


def _delivery_event(event_id: str, kind: DeliveryKind, ref: MessageRef, detail: str) -> DeliveryEvent:
    return DeliveryEvent(
        event_id=event_id,
        kind=kind,
        inbox_id=ref.inbox_id,
        message_id=ref.message_id,
        thread_id=ref.thread_id,
        at=unix_ms(ref.timestamp),
        detail=detail,
    )


def _joined(*parts: str) -> str:
    """Bounce and complaint type with sub-type: `Permanent/General`."""
    return "/".join(part for part in parts if part)


class _TextExtractor(HTMLParser):
    _BREAKS: Final = frozenset({"br", "p", "div", "li", "tr", "h1", "h2", "h3", "h4", "blockquote"})
    _HIDDEN: Final = frozenset({"script", "style", "head"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._HIDDEN:
            self._hidden += 1
        elif tag in self._BREAKS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._HIDDEN:
            self._hidden = max(0, self._hidden - 1)

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self.parts.append(data)


def html_to_text(html: str) -> str:
    extractor = _TextExtractor()
    extractor.feed(html)
    extractor.close()
    lines = (" ".join(line.split()) for line in "".join(extractor.parts).splitlines())
    return "\n".join(line for line in lines if line).strip()
