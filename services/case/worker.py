"""The case worker: turns commands, AgentMail events and the clock into lifecycle events, and applies them.

Every handler has the same shape: load the case, do the I/O the event needs (the agent writes or judges,
the adapter sends), build the event, run the pure `transition`, store the new case with its outbox under a
version check, then relay the outbox. A conflicting write (another handler or replica got there first)
re-runs the whole step on the fresh case; repeats are harmless because transitions ignore duplicates and
sends are idempotent by (case, attempt) at the adapter.

The scheduler finds due cases through the `nextActionAt` index; claiming is the same versioned write, so
with several case-service replicas each follow-up is requested once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import msgspec
from faststream.nats import NatsBroker

from services.case.agent.port import (
    Agent,
    AgentCannotProceed,
    ComposeRequest,
    Judgement,
    JudgeRequest,
    TokenUsage,
)
from services.case.lifecycle import (
    AgentStuck,
    CaseStarted,
    Clock,
    DeliveryFailed,
    EmailSent,
    Event,
    FollowUpDue,
    InboundEmail,
    InputJudged,
    ReplyJudged,
    SendFailed,
    SendRejected,
    transition,
    with_human_context,
)
from services.case.model import CaseRecord, SendEmailCommand
from services.case.outbox import OutboxRelay
from services.case.store import CaseStore
from services.case.transcript import for_agent
from shared.clock import now_ms
from shared.contracts import agentmail
from shared.contracts.case import (
    CMD_CREATED,
    CMD_INPUT_PROVIDED,
    CMD_SEND,
    TERMINAL_STATUSES,
    AttachmentMeta,
    CaseCreatedCommand,
    InputProvidedCommand,
)
from shared.errors import ErrorCode, ServiceError
from shared.logs import case_id_var, client_id_var
from shared.messaging import durable_subscriber, request
from shared.settings import CaseSettings
from shared.subjects import AGENTMAIL_EVENTS, CASE_COMMANDS, Consumer

log = logging.getLogger("caseflow.case.worker")

type EventFor = Callable[[CaseRecord], Awaitable[Event | None]]


@dataclass
class Worker:
    broker: NatsBroker
    store: CaseStore
    relay: OutboxRelay
    agent: Agent
    settings: CaseSettings

    def clock(self) -> Clock:
        return Clock(now=now_ms(), hour_ms=int(self.settings.follow_up_hour_seconds * 1000))

    async def _rpc[T](
        self, subject: str, payload: msgspec.Struct, reply_type: type[T], *, timeout: float | None = None
    ) -> T:
        deadline = timeout or self.settings.rpc_timeout_seconds
        return await request(self.broker, subject, payload, reply_type, timeout=deadline)

    async def apply(self, case_id: str, event_for: EventFor) -> CaseRecord | None:
        """Load, build the event (I/O allowed: the agent writes or judges, the adapter sends), then transition,
        store under a version check and relay.

        The event is built once, from the case as first loaded: a conflicting write (the outbox relay's, or
        another handler's) re-runs only the pure transition on the fresh case, never the email or the model
        call. Transitions ignore what no longer applies, so a stale event is harmless.
        """
        case_id_var.set(case_id)
        case = await self.store.get(case_id)
        if case is None:
            log.warning("event for an unknown case ignored")
            return None
        client_id_var.set(case.client_id)
        event = await event_for(case)
        if event is None:
            return case
        # A WriteConflict propagates: the message is redelivered (with backoff) onto a calmer case.
        written = await self.store.write_change(
            case_id, lambda current: transition(current, event, self.clock()), loaded=case
        )
        if written is None:
            return None
        before, updated = written
        if updated is not before:
            if updated.status != before.status:
                log.info("case status changed", extra={"from": before.status, "to": updated.status})
            try:
                await self.relay.publish(updated)
            except Exception:
                log.warning("publish deferred to the outbox relay", exc_info=True)
        return updated

    async def transcript(self, case: CaseRecord) -> list[agentmail.TranscriptMessage]:
        """The thread as the agent reads it (bounded: see `for_agent`)."""
        if case.thread_id is None:
            return []
        thread = await self._rpc(
            agentmail.TRANSCRIPT, agentmail.GetTranscript(thread_id=case.thread_id), agentmail.Transcript
        )
        return for_agent(thread.messages)

    # ---- commands ----------------------------------------------------------------------------------------

    async def on_created(self, command: CaseCreatedCommand) -> None:
        async def started(_: CaseRecord) -> Event:
            return CaseStarted()

        await self.apply(command.case_id, started)

    async def on_send(self, command: SendEmailCommand) -> None:
        async def sent(case: CaseRecord) -> Event | None:
            if case.status in TERMINAL_STATUSES or command.attempt <= case.attempt_count:
                return None  # cancelled meanwhile, or already sent
            if case.awaiting_send != command.attempt:
                return None  # superseded by a newer request
            return await self._send(case, command)

        await self.apply(command.case_id, sent)

    async def _send(self, case: CaseRecord, command: SendEmailCommand) -> Event | None:
        usage = TokenUsage()
        if command.draft_text is not None:
            subject, text = command.draft_subject or f"Re: {case.goal.objective}", command.draft_text
        else:
            try:
                draft = await self.agent.compose(
                    ComposeRequest(
                        case=case, kind=command.kind, attempt=command.attempt, transcript=await self.transcript(case)
                    )
                )
            except AgentCannotProceed as stuck:
                return AgentStuck(question=stuck.question, source=f"compose:{command.attempt}")
            subject, text, usage = draft.subject, draft.text, draft.usage
        latest = await self.store.get(case.case_id)
        if latest is None or latest.status in TERMINAL_STATUSES:
            return None  # cancelled while the email was being written: send nothing
        reply_to = command.in_reply_to or case.last_message_id
        outcome: agentmail.Sent | agentmail.Rejected
        try:
            if command.kind == "first" or reply_to is None:
                outcome = await self._rpc(
                    agentmail.SEND,
                    agentmail.SendEmail(
                        case_id=case.case_id,
                        attempt=command.attempt,
                        to=[case.counterparty.address],
                        subject=subject,
                        text=text,
                    ),
                    agentmail.SendOutcome,  # type: ignore[arg-type]
                    timeout=self.settings.send_timeout_seconds,
                )
            else:
                outcome = await self._rpc(
                    agentmail.REPLY,
                    agentmail.ReplyEmail(
                        case_id=case.case_id,
                        attempt=command.attempt,
                        in_reply_to_message_id=reply_to,
                        text=text,
                        to=[case.counterparty.address],
                    ),
                    agentmail.SendOutcome,  # type: ignore[arg-type]
                    timeout=self.settings.send_timeout_seconds,
                )
        except ServiceError as exc:
            if exc.code is ErrorCode.INVALID_REQUEST:
                return SendFailed(attempt=command.attempt, reason=exc.message)
            raise  # transient: redelivered with backoff
        if isinstance(outcome, agentmail.Rejected):
            return SendRejected(attempt=command.attempt, reason=outcome.reason)
        return EmailSent(
            attempt=command.attempt,
            kind=command.kind,
            message_id=outcome.message_id,
            thread_id=outcome.thread_id,
            sent_at=outcome.sent_at,
            usage=usage,
        )

    async def on_input(self, command: InputProvidedCommand) -> None:
        async def judged(case: CaseRecord) -> Event | None:
            request_ = case.input_request
            if (
                case.status != "INPUT_NEEDED"
                or request_ is None
                or request_.id != command.input_request_id
                or command.input_request_id in case.handled_input_ids
            ):
                return None
            informed = with_human_context(case, command.provided_context)
            try:
                judgement = await self.agent.judge(
                    JudgeRequest(case=informed, transcript=await self.transcript(case), trigger="input")
                )
            except AgentCannotProceed as stuck:
                judgement = Judgement(outcome="NEEDS_INPUT", question=stuck.question, reason="agent cannot proceed")
            return InputJudged(
                input_request_id=command.input_request_id,
                provided_context=command.provided_context,
                judgement=judgement,
            )

        await self.apply(command.case_id, judged)

    # ---- AgentMail events --------------------------------------------------------------------------------

    async def on_message_received(self, message: agentmail.MessageReceived) -> None:
        if message.auto_submitted:
            log.info("auto-reply ignored", extra={"message_id": message.message_id})
            return
        if message.from_address.lower() == message.inbox_id.lower():
            return  # our own mail
        case_id = await self.store.case_for_message(
            thread_id=message.thread_id, counterparty_address=message.from_address
        )
        if case_id is None:
            log.info("inbound message matches no open case", extra={"message_id": message.message_id})
            return

        async def judged(case: CaseRecord) -> Event | None:
            if case.status in TERMINAL_STATUSES or message.message_id in case.handled_message_ids:
                return None
            transcript = await self.transcript(case)
            if all(entry.message_id != message.message_id for entry in transcript):
                transcript = for_agent([*transcript, as_transcript_message(message)])
            try:
                judgement = await self.agent.judge(JudgeRequest(case=case, transcript=transcript, trigger="reply"))
            except AgentCannotProceed as stuck:
                judgement = Judgement(outcome="NEEDS_INPUT", question=stuck.question, reason="agent cannot proceed")
            return ReplyJudged(
                message=InboundEmail(
                    message_id=message.message_id,
                    attachments=tuple(attachment_meta(message, a) for a in message.attachments),
                ),
                judgement=judgement,
            )

        await self.apply(case_id, judged)

    async def on_delivery(self, delivery: agentmail.DeliveryEvent) -> None:
        if delivery.kind == "delivered":
            return
        case_id = await self.store.case_for_thread(delivery.thread_id)
        if case_id is None:
            return

        async def failed(_: CaseRecord) -> Event:
            return DeliveryFailed(kind=delivery.kind, message_id=delivery.message_id, detail=delivery.detail)  # type: ignore[arg-type]

        await self.apply(case_id, failed)

    # ---- scheduler ---------------------------------------------------------------------------------------

    async def run_due(self, *, limit: int = 200) -> int:
        """Request the follow-ups (or failures) of every due case; returns how many cases changed."""
        changed = 0
        for case_id in await self.store.due_case_ids(now=now_ms(), limit=limit):

            async def due(_: CaseRecord) -> Event:
                return FollowUpDue()

            try:
                before = await self.store.get(case_id)
                after = await self.apply(case_id, due)
            except Exception:
                log.exception("scheduling a due case failed; it stays due", extra={"case_id": case_id})
                continue
            changed += int(before is not None and after is not None and after.version != before.version)
        return changed

    async def schedule_forever(self) -> None:
        while True:
            await self.run_due()
            await asyncio.sleep(self.settings.scheduler_interval_seconds)


def attachment_meta(message: agentmail.MessageReceived, attachment: agentmail.AttachmentInfo) -> AttachmentMeta:
    return AttachmentMeta(
        attachment_id=attachment.attachment_id,
        name=attachment.filename,
        size=attachment.size,
        type=attachment.content_type,
        message_id=message.message_id,
        inbox_id=message.inbox_id,
        received_at=message.received_at,
    )


def as_transcript_message(message: agentmail.MessageReceived) -> agentmail.TranscriptMessage:
    return agentmail.TranscriptMessage(
        direction="inbound",
        message_id=message.message_id,
        from_address=message.from_address,
        to=message.to,
        subject=message.subject,
        text=message.text,
        at=message.received_at,
        attachments=message.attachments,
    )


def register(worker: Worker) -> None:
    broker = worker.broker

    @durable_subscriber(broker, subject=CMD_CREATED, stream=CASE_COMMANDS, durable=Consumer.CASE_CREATED, max_workers=4)
    async def case_created(command: CaseCreatedCommand) -> None:
        await worker.on_created(command)

    @durable_subscriber(broker, subject=CMD_SEND, stream=CASE_COMMANDS, durable=Consumer.CASE_SEND, max_workers=8)
    async def send_email(command: SendEmailCommand) -> None:
        await worker.on_send(command)

    @durable_subscriber(broker, subject=CMD_INPUT_PROVIDED, stream=CASE_COMMANDS, durable=Consumer.CASE_INPUT)
    async def input_provided(command: InputProvidedCommand) -> None:
        await worker.on_input(command)

    @durable_subscriber(
        broker,
        subject=agentmail.MESSAGE_RECEIVED,
        stream=AGENTMAIL_EVENTS,
        durable=Consumer.CASE_MESSAGES,
        max_workers=4,
    )
    async def message_received(message: agentmail.MessageReceived) -> None:
        await worker.on_message_received(message)

    @durable_subscriber(
        broker, subject=agentmail.DELIVERY_EVENT, stream=AGENTMAIL_EVENTS, durable=Consumer.CASE_DELIVERIES
    )
    async def delivery(event: agentmail.DeliveryEvent) -> None:
        await worker.on_delivery(event)
