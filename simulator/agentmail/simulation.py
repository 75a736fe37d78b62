"""The simulated world over time: sends produce delivery events, scripted counterparties answer after a delay.

`Simulation` owns the mailbox (state), the webhook dispatcher and the background tasks that play the scripts;
the HTTP layer (`app.py`) only translates requests into calls here. Everything scheduled is a task that
`reset()` and `aclose()` cancel, so a test's leftovers never leak into the next test.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from simulator.agentmail import wire
from simulator.agentmail.counterparties import (
    DOCUMENT_FILENAME,
    Behaviour,
    Counterparty,
    counterparty_for,
    reply_for,
    signed_document,
    step_for,
)
from simulator.agentmail.delivery import Endpoint, WebhookDispatcher
from simulator.agentmail.faults import FaultBook
from simulator.agentmail.mailbox import Mailbox, NewFile, bare_address
from simulator.agentmail.settings import SimulatorSettings

log = logging.getLogger("simulator.agentmail")

type DeliveryKind = Literal["delivered", "bounced", "complained", "rejected"]

CONFIGURED_WEBHOOK_ID = "ep_configured"


@dataclass(frozen=True, slots=True)
class Inbound:
    """An email to inject, as if someone had written to the inbox."""

    sender: str
    text: str
    inbox_id: str | None = None
    to: list[str] | None = None
    subject: str | None = None
    html: str | None = None
    in_reply_to: str | None = None  # a message id: the new email joins its thread
    thread_id: str | None = None  # or a thread: the new email answers its latest message
    files: tuple[NewFile, ...] = ()
    headers: dict[str, str] | None = None
    # AgentMail leaves text/html out of webhooks for large bodies; False reproduces that.
    body_in_webhook: bool = True


class Simulation:
    def __init__(self, settings: SimulatorSettings) -> None:
        self.settings = settings
        self.mailbox = Mailbox(default_inbox=settings.inbox_id)
        self.faults = FaultBook()
        self.dispatcher = WebhookDispatcher(
            retry_seconds=settings.webhook_retry_seconds, timeout_seconds=settings.webhook_timeout_seconds
        )
        self._tasks: set[asyncio.Task[None]] = set()

    # ---- sends through the API ----------------------------------------------------------------------------

    def send(
        self, inbox_id: str, request: wire.SendMessageRequest, *, idempotency_key: str | None
    ) -> wire.SendMessageResponse:
        fingerprint = ["send", inbox_id.lower(), request]
        response, message = self.mailbox.idempotent(
            idempotency_key, fingerprint, lambda: self.mailbox.send(inbox_id, request)
        )
        if message is not None:
            self._after_send(message)
        return response

    def reply(
        self,
        inbox_id: str,
        message_id: str,
        request: wire.ReplyToMessageRequest,
        *,
        idempotency_key: str | None,
    ) -> wire.SendMessageResponse:
        fingerprint = ["reply", inbox_id.lower(), message_id, request]
        response, message = self.mailbox.idempotent(
            idempotency_key, fingerprint, lambda: self.mailbox.reply(inbox_id, message_id, request)
        )
        if message is not None:
            self._after_send(message)
        return response

    def _after_send(self, message: wire.Message) -> None:
        recipients = [*message.to, *(message.cc or []), *(message.bcc or [])]
        self._emit(
            wire.MessageSentEvent(
                event_type="message.sent",
                event_id=_event_id(),
                send=_detail(wire.DeliveryDetail, message, recipients=[bare_address(a) for a in recipients]),
            ),
            message.inbox_id,
        )
        self._schedule(self._deliver(message, recipients))

    async def _deliver(self, message: wire.Message, recipients: list[str]) -> None:
        await asyncio.sleep(self.settings.event_delay_seconds)
        counterparties = [found for found in map(counterparty_for, recipients) if found is not None]
        bouncing = {c.address for c in counterparties if c.behaviour is Behaviour.BOUNCE}
        delivered = [address for address in recipients if bare_address(address) not in bouncing]
        if bouncing:
            self.emit_delivery_event(message.message_id, "bounced", addresses=sorted(bouncing))
        if delivered:
            self.emit_delivery_event(message.message_id, "delivered", addresses=delivered)
        for counterparty in counterparties:
            if counterparty.behaviour is Behaviour.COMPLAIN:
                await asyncio.sleep(self.settings.event_delay_seconds)
                self.emit_delivery_event(message.message_id, "complained", addresses=[counterparty.address])
            else:
                self._schedule(self._answer(counterparty, message))

    async def _answer(self, counterparty: Counterparty, message: wire.Message) -> None:
        thread = self.mailbox.thread_messages(message.thread_id)
        agent_emails = [
            sent
            for sent in thread
            if "sent" in sent.labels and counterparty.address in {bare_address(a) for a in [*sent.to, *(sent.cc or [])]}
        ]
        step = step_for(counterparty, len(agent_emails))
        if step is None:
            return
        await asyncio.sleep(self.settings.reply_delay_seconds)
        earlier_question = any("received" in m.labels and bare_address(m.from_) == counterparty.address for m in thread)
        reply = reply_for(step, counterparty, subject=message.subject or "", earlier_question=earlier_question)
        files = (
            (NewFile(DOCUMENT_FILENAME, "application/pdf", signed_document(counterparty)),)
            if reply.attach_document
            else ()
        )
        self.inject(
            Inbound(
                sender=counterparty.mailbox,
                text=reply.text,
                inbox_id=message.inbox_id,
                in_reply_to=message.message_id,
                files=files,
            )
        )
        log.info(
            "scripted counterparty replied",
            extra={"counterparty": counterparty.address, "step": str(step), "thread_id": message.thread_id},
        )

    # ---- control API --------------------------------------------------------------------------------------

    def inject(self, inbound: Inbound) -> tuple[wire.Message, str]:
        """Store an inbound email and announce it with `message.received`; returns it and the event id."""
        inbox_id = inbound.inbox_id or self.settings.inbox_id
        original = None
        if inbound.in_reply_to is not None:
            original = self.mailbox.message(inbox_id, inbound.in_reply_to)
        elif inbound.thread_id is not None:
            messages = self.mailbox.thread_messages(inbound.thread_id)
            if not messages:
                raise wire.ApiError.not_found("Thread")
            original = messages[-1]
        message = self.mailbox.receive(
            inbox_id,
            sender=inbound.sender,
            to=inbound.to,
            subject=inbound.subject,
            text=inbound.text,
            html=inbound.html,
            files=list(inbound.files),
            headers=inbound.headers,
            in_reply_to=original,
        )
        in_webhook = message if inbound.body_in_webhook else _without_body(message)
        event_id = _event_id()
        self._emit(
            wire.MessageReceivedEvent(
                event_type="message.received",
                event_id=event_id,
                message=in_webhook,
                thread=self.mailbox.thread_item(message.thread_id),
            ),
            message.inbox_id,
        )
        return message, event_id

    def emit_delivery_event(
        self,
        message_id: str,
        kind: DeliveryKind,
        *,
        addresses: list[str] | None = None,
        reason: str | None = None,
    ) -> str:
        """Announce what happened to a sent message; bounces, complaints and rejections block the address."""
        message = self.mailbox.messages.get(message_id)
        if message is None or "sent" not in message.labels:
            raise wire.ApiError.not_found("Sent message")
        recipients = addresses or [*message.to, *(message.cc or []), *(message.bcc or [])]
        if kind != "delivered":
            self.mailbox.blocked.update(bare_address(address) for address in recipients)
        event_id = _event_id()
        event: wire.Event
        match kind:
            case "delivered":
                event = wire.MessageDeliveredEvent(
                    event_type="message.delivered",
                    event_id=event_id,
                    delivery=_detail(wire.DeliveryDetail, message, recipients=[bare_address(a) for a in recipients]),
                )
            case "bounced":
                event = wire.MessageBouncedEvent(
                    event_type="message.bounced",
                    event_id=event_id,
                    bounce=_detail(
                        wire.BounceDetail,
                        message,
                        type="Permanent",
                        sub_type="General",
                        recipients=[
                            wire.BouncedRecipient(address=bare_address(a), status="bounced") for a in recipients
                        ],
                    ),
                )
            case "complained":
                event = wire.MessageComplainedEvent(
                    event_type="message.complained",
                    event_id=event_id,
                    complaint=_detail(
                        wire.ComplaintDetail,
                        message,
                        type="abuse",
                        sub_type="",
                        recipients=[bare_address(a) for a in recipients],
                    ),
                )
            case "rejected":
                event = wire.MessageRejectedEvent(
                    event_type="message.rejected",
                    event_id=event_id,
                    reject=_detail(
                        wire.RejectDetail,
                        message,
                        reason=reason or "Recipient is on the suppression list",
                    ),
                )
        self._emit(event, message.inbox_id)
        return event_id

    async def reset(self) -> None:
        """Back to the state at start-up: one inbox, no mail, no faults, nothing scheduled or in flight."""
        await self._cancel_tasks()
        await self.dispatcher.reset()
        self.faults.clear()
        self.mailbox = Mailbox(default_inbox=self.settings.inbox_id)

    async def aclose(self) -> None:
        await self._cancel_tasks()
        await self.dispatcher.aclose()

    # ---- plumbing -----------------------------------------------------------------------------------------

    def endpoints(self) -> list[Endpoint]:
        configured = (
            [Endpoint(CONFIGURED_WEBHOOK_ID, self.settings.webhook_url, self.settings.webhook_secret, None)]
            if self.settings.webhook_url
            else []
        )
        created = [
            Endpoint(
                webhook.webhook_id,
                webhook.url,
                webhook.secret,
                frozenset(webhook.event_types) if webhook.event_types else None,
                frozenset(webhook.inbox_ids) if webhook.inbox_ids else None,
            )
            for webhook in self.mailbox.webhooks.values()
            if webhook.enabled
        ]
        return configured + created

    def _emit(self, event: wire.Event, inbox_id: str) -> None:
        self.dispatcher.dispatch(event, inbox_id, self.endpoints())

    def _schedule(self, work: Awaitable[None]) -> None:
        async def run() -> None:
            try:
                await work
            except Exception:
                log.exception("scheduled simulator work failed")

        task = asyncio.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _cancel_tasks(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _detail[D: wire.MessageRef](kind: type[D], message: wire.Message, **fields: Any) -> D:
    """An event detail of type `kind` about `message`: its ids plus `fields`."""
    return kind(
        inbox_id=message.inbox_id,
        thread_id=message.thread_id,
        message_id=message.message_id,
        timestamp=message.timestamp,
        **fields,
    )


def _event_id() -> str:
    return uuid.uuid4().hex


def _without_body(message: wire.Message) -> wire.Message:
    return msgspec.structs.replace(message, text=None, html=None, extracted_text=None, extracted_html=None)
