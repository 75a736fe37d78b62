"""The adapter's NATS requests: send, reply, attachment link, transcript, and webhook ingestion.

Each handler decodes the request, calls AgentMail through the client and records what happened in the message
store. Two orders matter. A send is recorded only after AgentMail accepted it, and is idempotent twice over: a
repeated (case, attempt) is answered from the store, and before that AgentMail's Idempotency-Key (derived from
the same pair) makes a retried HTTP call return the original message. An email whose answer never reached us
(a timeout, a crash mid-call, a store outage) is still recorded: every send carries its (case, attempt) as a
label, and AgentMail's `message.sent` webhook for a message we have no record of reads it back and records it,
whether or not the case ever asks again (it may have moved on: the counterparty answered that very email).
A webhook is verified, then its message stored, then its event published (Nats-Msg-Id = event id), then marked
handled, and only then answered: a crash anywhere before the mark makes AgentMail's redelivery do the work
again, and the repeated publish is dropped by JetStream's duplicate window.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http import HTTPStatus
from typing import Final

import msgspec
from faststream.nats import NatsBroker

from services.agentmail_adapter.bounds import INBOUND_SUBJECT_MAX_CHARS, bounded_text, outgoing_subject
from services.agentmail_adapter.client import (
    AgentMailClient,
    AgentMailMisconfigured,
    AgentMailRefused,
    AgentMailUnavailable,
    MessageRejected,
    SendResult,
)
from services.agentmail_adapter.model import HandledEvent, StoredAttachment, StoredMessage
from services.agentmail_adapter.payloads import Message, ReplyMessage, SendMessage, SentMessage
from services.agentmail_adapter.store import MessageStore
from services.agentmail_adapter.webhooks import (
    MESSAGE_RECEIVED_TYPE,
    MESSAGE_SENT_TYPE,
    WebhookVerifier,
    bare_address,
    body_text,
    delivery_event,
    message_received,
)
from shared import metrics
from shared.blobs import object_bucket
from shared.clock import Clock, system_clock, unix_ms
from shared.contracts.agentmail import (
    ATTACHMENT_LINK,
    DELIVERY_EVENT,
    INGEST_WEBHOOK,
    MESSAGE_RECEIVED,
    REPLY,
    SEND,
    TRANSCRIPT,
    AttachmentInfo,
    AttachmentLink,
    GetAttachmentLink,
    GetTranscript,
    IngestWebhook,
    MessageReceived,
    Rejected,
    ReplyEmail,
    SendEmail,
    SendOutcome,
    Sent,
    Transcript,
    TranscriptMessage,
    WebhookAccepted,
)
from shared.contracts.rpc import Ok
from shared.errors import ErrorCode, ServiceError
from shared.logs import case_id_var
from shared.messaging.jetstream import publish_durable
from shared.messaging.responder import rpc_subscriber
from shared.settings import AgentMailSettings
from shared.subjects import AGENTMAIL_EVENTS, AGENTMAIL_INGRESS_BODIES, Service, queue_group
from shared.text import clipped
from shared.transcript_budget import TranscriptBudget

log = logging.getLogger("caseflow.agentmail_adapter")

QUEUE: Final = queue_group(Service.AGENTMAIL_ADAPTER)
# Requests answered at once per replica: most of a request's time is spent waiting on AgentMail or MongoDB, and
# one at a time a burst of webhooks (each send brings two or three) outlives its deadline and AgentMail's retries
# pile onto the backlog.
CONCURRENT_REQUESTS: Final = 16
# AgentMail accepts 1-256 characters from this set in an Idempotency-Key.
_KEY_CHARACTERS: Final = re.compile(r"^[A-Za-z0-9\-._~]{1,256}$")
# The label naming the (case, attempt) of an email we send: `caseflow-attempt.<caseId>.<attempt>`.
ATTEMPT_LABEL_PREFIX: Final = "caseflow-attempt."


def idempotency_key(case_id: str, attempt: int) -> str:
    """AgentMail's Idempotency-Key for the `attempt`-th email of a case: the same pair always gives the same key."""
    key = f"{case_id}.{attempt}"
    if _KEY_CHARACTERS.match(key):
        return key
    return "sha256-" + hashlib.sha256(f"{case_id}\x00{attempt}".encode()).hexdigest()


def attempt_label(case_id: str, attempt: int) -> str:
    """The label an email carries at AgentMail so that the message itself says which (case, attempt) sent it."""
    return f"{ATTEMPT_LABEL_PREFIX}{case_id}.{attempt}"


def attempt_of_labels(labels: list[str]) -> tuple[str, int] | None:
    """(caseId, attempt) from a message's labels, or None for a message we did not send for a case."""
    for label in labels:
        if label.startswith(ATTEMPT_LABEL_PREFIX):
            case_id, _, attempt = label.removeprefix(ATTEMPT_LABEL_PREFIX).rpartition(".")
            if case_id and attempt.isdigit():
                return case_id, int(attempt)
    return None


@contextmanager
def provider_errors(*, transient: ErrorCode = ErrorCode.SERVICE_UNAVAILABLE) -> Iterator[None]:
    """AgentMail failures as registry errors carrying the client's failure class (`kind`), so the asker retries
    (transient, misconfigured) or gives up with the reason (terminal) without reading codes."""
    try:
        yield
    except AgentMailUnavailable as exc:
        log.warning("AgentMail unavailable", extra={"error": str(exc)})
        raise ServiceError(transient, "AgentMail is unavailable; retry later.", kind="transient") from exc
    except AgentMailMisconfigured as exc:
        # Logged once per change by the client, which also reports the adapter not ready.
        raise ServiceError(
            ErrorCode.SERVICE_UNAVAILABLE,
            "AgentMail refuses the adapter's credentials; waiting for an operator.",
            kind="misconfigured",
        ) from exc
    except AgentMailRefused as exc:
        log.error("AgentMail refused the call", extra={"error": str(exc)})
        raise ServiceError(
            ErrorCode.INTERNAL_ERROR, f"AgentMail refused the request: {exc.reason}"[:500], kind="terminal"
        ) from exc


@contextmanager
def case_logging(case_id: str) -> Iterator[None]:
    token = case_id_var.set(case_id)
    try:
        yield
    finally:
        case_id_var.reset(token)


@dataclass(frozen=True)
class AgentMailApi:
    """What the adapter answers, each method one request; the only object holding the AgentMail client."""

    broker: NatsBroker
    mail: AgentMailClient
    store: MessageStore
    verifier: WebhookVerifier
    settings: AgentMailSettings
    clock: Clock = system_clock

    @property
    def inbox_id(self) -> str:
        return self.settings.agentmail_inbox_id

    async def _send_once(self, email: Outgoing, send: Callable[[str], Awaitable[SendResult]]) -> SendOutcome:
        """At most one email per (case, attempt): answered from the store, else sent under the key derived from
        the pair and recorded once AgentMail accepted it."""
        with case_logging(email.case_id):
            recorded = await self.store.sent_for_attempt(email.case_id, email.attempt)
            if recorded is not None:
                metrics.EMAILS_SENT.labels(kind=email.kind, outcome="repeated").inc()
                return _sent(recorded)
            try:
                with provider_errors():
                    result = await send(idempotency_key(email.case_id, email.attempt))
            except ServiceError:
                metrics.EMAILS_SENT.labels(kind=email.kind, outcome="failed").inc()
                raise
            if isinstance(result, MessageRejected):
                metrics.EMAILS_SENT.labels(kind=email.kind, outcome="rejected").inc()
                log.info("AgentMail rejected the email", extra={"reason": result.reason, "attempt": email.attempt})
                return Rejected(reason=result.reason)
            # Counted once AgentMail accepted it: the email is out even if recording it fails below.
            metrics.EMAILS_SENT.labels(kind=email.kind, outcome="sent").inc()
            stored = email.sent_as(result, now=unix_ms(self.clock()))
            await self.store.record(stored)
            return _sent(stored)

    async def send(self, request: SendEmail) -> SendOutcome:
        # Whoever wrote it (the client's objective, the model), a subject goes out single-line and bounded.
        subject = outgoing_subject(request.subject)
        label = [attempt_label(request.case_id, request.attempt)]
        message = SendMessage(to=request.to, subject=subject, text=request.text, html=request.html, labels=label)
        email = Outgoing(
            case_id=request.case_id,
            attempt=request.attempt,
            inbox_id=self.inbox_id,
            to=request.to,
            subject=subject,
            text=request.text,
            in_reply_to=None,
        )
        return await self._send_once(
            email, lambda key: self.mail.send_message(self.inbox_id, message, idempotency_key=key)
        )

    async def reply(self, request: ReplyEmail) -> SendOutcome:
        answered = request.in_reply_to_message_id
        original = await self.store.find(answered)
        reply_inbox = original.inbox_id if original is not None else self.inbox_id
        label = [attempt_label(request.case_id, request.attempt)]
        reply = ReplyMessage(text=request.text, html=request.html, to=request.to, labels=label)
        email = Outgoing(
            case_id=request.case_id,
            attempt=request.attempt,
            inbox_id=reply_inbox,
            to=request.to or _reply_recipients(original),
            # AgentMail derives a reply's subject from the thread; what we record is made safe the same way.
            subject=outgoing_subject(_reply_subject(original.subject if original is not None else "")),
            text=request.text,
            in_reply_to=answered,
        )
        return await self._send_once(
            email, lambda key: self.mail.reply_to_message(reply_inbox, answered, reply, idempotency_key=key)
        )

    async def attachment_link(self, request: GetAttachmentLink) -> AttachmentLink:
        stored = await self.store.find(request.message_id)
        message_inbox = stored.inbox_id if stored is not None else self.inbox_id
        with provider_errors(transient=ErrorCode.INTERNAL_ERROR):
            download = await self.mail.get_attachment(message_inbox, request.message_id, request.attachment_id)
        return AttachmentLink(download_url=download.download_url, expires_at=download.expires_at)

    async def transcript(self, request: GetTranscript) -> Transcript:
        """The newest messages of the thread that fit TRANSCRIPT_MAX_BYTES (always the newest one), oldest first."""
        newest_first: list[TranscriptMessage] = []
        budget = TranscriptBudget()
        cut = False
        async for stored in self.store.thread_newest_first(request.thread_id):
            message = _transcript_message(stored)
            if not budget.admits(message):
                cut = True
                break
            newest_first.append(message)
        omitted = await self.store.thread_size(request.thread_id) - len(newest_first) if cut else 0
        return Transcript(thread_id=request.thread_id, messages=newest_first[::-1], omitted=omitted)

    async def ingest_webhook(self, request: IngestWebhook) -> WebhookAccepted:
        body = request.body
        if request.body_object is not None:
            # Too large to forward inline: the gateway stored the exact bytes; they are verified like any other.
            body = (
                await (await object_bucket(self.broker, AGENTMAIL_INGRESS_BODIES)).get(request.body_object)
            ).data or b""
        event = self.verifier.verify(body, request.headers)
        if await self.store.event_handled(event.event_id):
            return WebhookAccepted(event_id=event.event_id, duplicate=True)
        if event.event_type == MESSAGE_RECEIVED_TYPE and event.message is not None:
            await self._accept_message(event.event_id, event.message)
        elif event.event_type == MESSAGE_SENT_TYPE and event.send is not None:
            await self._our_email(event.send.inbox_id, event.send.message_id)
        elif (delivery := delivery_event(event)) is not None:
            sent = await self._our_email(delivery.inbox_id, delivery.message_id)
            delivery = msgspec.structs.replace(delivery, case_id=sent.case_id if sent is not None else None)
            await publish_durable(self.broker, DELIVERY_EVENT, delivery, stream=AGENTMAIL_EVENTS, msg_id=event.event_id)
        else:
            log.info("AgentMail event ignored", extra={"event_type": event.event_type, "event_id": event.event_id})
        await self.store.mark_event_handled(
            event.event_id, HandledEvent(event_type=event.event_type, handled_at=unix_ms(self.clock()))
        )
        return WebhookAccepted(event_id=event.event_id, duplicate=False)

    async def _our_email(self, inbox_id: str, message_id: str) -> StoredMessage | None:
        """Our record of an email we sent; when there is none yet, the email as AgentMail holds it, recorded
        under the (case, attempt) its label names. None for a message that is no case's (no label) or unknown.

        The record is usually written when the send is answered. It is missing when that answer was lost, and
        for a moment whenever a webhook (`message.sent`, a complaint, a reply) beats the answer: reading the label
        is what lets such a webhook still name its case rather than wait out the case service's thread match."""
        stored = await self.store.find(message_id)
        if stored is not None:
            return stored if stored.direction == "outbound" else None
        with provider_errors():
            try:
                message = await self.mail.get_message(inbox_id, message_id)
            except AgentMailRefused as exc:
                if exc.status != HTTPStatus.NOT_FOUND:
                    raise
                return None  # not a message of this inbox (a reply to someone else's mail)
        pair = attempt_of_labels(message.labels)
        if pair is None:
            log.info("AgentMail holds this message for no case", extra={"message_id": message_id})
            return None
        case_id, attempt = pair
        with case_logging(case_id):
            email = Outgoing(
                case_id=case_id,
                attempt=attempt,
                inbox_id=message.inbox_id,
                to=message.to,
                subject=outgoing_subject(message.subject or ""),
                text=body_text(message) or "",
                in_reply_to=message.in_reply_to,
            )
            sent = SentMessage(message_id=message.message_id, thread_id=message.thread_id)
            record = await self.store.record_first(
                email.sent_as(sent, now=unix_ms(self.clock()), sent_at=unix_ms(message.timestamp))
            )
            log.info(
                "recorded a sent email from AgentMail before its send's answer",
                extra={"message_id": message.message_id, "attempt": attempt},
            )
        return record

    async def _accept_message(self, event_id: str, message: Message) -> None:
        if bare_address(message.from_).lower() == message.inbox_id.lower():
            # Our own mail coming back (a loop) is never a counterparty's reply.
            log.info("AgentMail event from our own inbox ignored", extra={"event_id": event_id})
            return
        text = body_text(message)
        if text is None:
            # Large bodies are left out of webhooks: read the message itself.
            with provider_errors():
                message = await self.mail.get_message(message.inbox_id, message.message_id)
            text = body_text(message) or ""
        # Stored and published whole up to the bound (a marker says what was cut): the event must fit the bus.
        received = message_received(event_id, message, bounded_text(text))
        received = msgspec.structs.replace(received, subject=clipped(received.subject, INBOUND_SUBJECT_MAX_CHARS))
        # The thread → case map from our own record of the sends, so a reply finds its case even before the
        # case service has written its send's confirmation.
        received = msgspec.structs.replace(received, case_id=await self._case_answered(received))
        await self.store.record(_inbound(received, recorded_at=unix_ms(self.clock())))
        await publish_durable(self.broker, MESSAGE_RECEIVED, received, stream=AGENTMAIL_EVENTS, msg_id=event_id)

    async def _case_answered(self, received: MessageReceived) -> str | None:
        """The case whose email the message answers: by our record of the thread, else by the email it replies
        to (its label), which a reply can reach before the send's answer or its `message.sent` is recorded."""
        case_id = await self.store.case_of_thread(received.thread_id)
        if case_id is not None or received.in_reply_to is None:
            return case_id
        answered = await self._our_email(received.inbox_id, received.in_reply_to)
        return answered.case_id if answered is not None and answered.thread_id == received.thread_id else None


def register(api: AgentMailApi) -> None:
    broker = api.broker

    @rpc_subscriber(broker, SEND, queue=QUEUE, concurrency=CONCURRENT_REQUESTS)
    async def send_email(request: SendEmail) -> Ok[SendOutcome]:
        return Ok(await api.send(request))

    @rpc_subscriber(broker, REPLY, queue=QUEUE, concurrency=CONCURRENT_REQUESTS)
    async def reply_email(request: ReplyEmail) -> Ok[SendOutcome]:
        return Ok(await api.reply(request))

    @rpc_subscriber(broker, ATTACHMENT_LINK, queue=QUEUE, concurrency=CONCURRENT_REQUESTS)
    async def attachment_link(request: GetAttachmentLink) -> Ok[AttachmentLink]:
        return Ok(await api.attachment_link(request))

    @rpc_subscriber(broker, TRANSCRIPT, queue=QUEUE, concurrency=CONCURRENT_REQUESTS)
    async def transcript(request: GetTranscript) -> Ok[Transcript]:
        return Ok(await api.transcript(request))

    @rpc_subscriber(broker, INGEST_WEBHOOK, queue=QUEUE, concurrency=CONCURRENT_REQUESTS)
    async def ingest_webhook(request: IngestWebhook) -> Ok[WebhookAccepted]:
        return Ok(await api.ingest_webhook(request))


# ---- records ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outgoing:
    """An email we are about to send, with what the store records about it once AgentMail accepts it."""

    case_id: str
    attempt: int
    inbox_id: str
    to: list[str]
    subject: str
    text: str
    in_reply_to: str | None

    @property
    def kind(self) -> str:
        """The metrics' kind: a first email of a thread ("send") or an answer in one ("reply")."""
        return "send" if self.in_reply_to is None else "reply"

    def sent_as(self, result: SentMessage, *, now: int, sent_at: int | None = None) -> StoredMessage:
        """The record of the email once AgentMail accepted it (`sent_at`: AgentMail's own time, when known)."""
        return StoredMessage(
            message_id=result.message_id,
            inbox_id=self.inbox_id,
            thread_id=result.thread_id,
            direction="outbound",
            from_address=self.inbox_id,
            to=[bare_address(address) for address in self.to],
            subject=self.subject,
            text=self.text,
            timestamp=now if sent_at is None else sent_at,
            recorded_at=now,
            in_reply_to=self.in_reply_to,
            case_id=self.case_id,
            attempt=self.attempt,
        )


def _inbound(received: MessageReceived, *, recorded_at: int) -> StoredMessage:
    return StoredMessage(
        message_id=received.message_id,
        inbox_id=received.inbox_id,
        thread_id=received.thread_id,
        direction="inbound",
        from_address=received.from_address,
        to=received.to,
        subject=received.subject,
        text=received.text,
        timestamp=received.received_at,
        recorded_at=recorded_at,
        attachments=[
            StoredAttachment(
                attachment_id=a.attachment_id, filename=a.filename, size=a.size, content_type=a.content_type
            )
            for a in received.attachments
        ],
        in_reply_to=received.in_reply_to,
        event_id=received.event_id,
        auto_submitted=received.auto_submitted,
    )


def _sent(stored: StoredMessage) -> Sent:
    return Sent(message_id=stored.message_id, thread_id=stored.thread_id, sent_at=stored.timestamp)


def _reply_recipients(original: StoredMessage | None) -> list[str]:
    """Whom AgentMail answers when `to` is not given: the sender of an inbound email, the recipients of ours."""
    if original is None:
        return []
    return original.to if original.direction == "outbound" else [original.from_address]


def _reply_subject(subject: str) -> str:
    return subject if subject.lower().startswith("re:") else f"Re: {subject}".strip()


def _transcript_message(stored: StoredMessage) -> TranscriptMessage:
    return TranscriptMessage(
        direction=stored.direction,
        message_id=stored.message_id,
        from_address=stored.from_address,
        to=stored.to,
        subject=stored.subject,
        text=bounded_text(stored.text),  # messages stored before the bound existed
        at=stored.timestamp,
        attachments=[
            AttachmentInfo(attachment_id=a.attachment_id, filename=a.filename, size=a.size, content_type=a.content_type)
            for a in stored.attachments
        ],
    )
