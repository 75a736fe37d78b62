"""The case worker: turns commands, AgentMail events and the clock into lifecycle events, and applies them.

Every handler has the same shape: load the case, do the I/O the event needs (the agent writes or judges,
the adapter sends), build the event, run the pure `transition`, store the new case with its outbox under a
version check, then relay the outbox. A conflicting write (another handler or replica got there first)
re-runs the whole step on the fresh case; repeats are harmless because transitions ignore duplicates and
sends are idempotent by (case, attempt) at the adapter.

A case's next follow-up, lease end or confirmation time fires as its JetStream timer (services/case/timers.py) onto
the timer consumer here; the safety round (one query of due follow-ups, passed leases and unconfirmed creates) is
the net behind the timers, run at start-up and every SCHEDULER_SAFETY_SCAN_SECONDS. Claiming is the same versioned
write either way, so with several case-service replicas each follow-up or repair is requested once. No inbound
message is discarded: one that no case takes (after a bounded wait for its thread to be recorded) is stored in
`unmatched_messages` for an operator.

It also settles creates nobody confirmed, when their timer fires at `confirmBy` (or the safety round finds them;
`reconcile_creates` without timers): a case is started only by its created command, which the gateway
publishes before it answers 201, so a case without one past its confirmation time was never accepted and is
removed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

from faststream.nats import NatsBroker
from nats.js.errors import NotFoundError

from services.case.agent.port import (
    Agent,
    AgentCannotProceed,
    ComposeRequest,
    Judgement,
    JudgeRequest,
    TokenUsage,
)
from services.case.domain import awaiting_confirmation
from services.case.handlers import release_unit
from services.case.lifecycle import (
    AgentStuck,
    CaseStarted,
    DeliveryFailed,
    EmailSent,
    Event,
    FollowUpDue,
    InboundEmail,
    InputJudged,
    ReplyJudged,
    ReplyReceived,
    SendFailed,
    SendRejected,
    SendStarted,
    Timing,
    input_awaits_judgement,
    repairs_due,
    reply_awaits_judgement,
    send_wanted,
    transition,
    with_human_context,
)
from services.case.model import CaseRecord, JudgeReplyCommand, SendEmailCommand
from services.case.outbox import OutboxRelay
from services.case.store import CaseStore, MessageMatch, UnmatchedMessage, UnmatchedStore
from services.case.timers import CaseTimers, TimerFired
from services.case.transcript import case_transcript, for_agent
from shared import metrics
from shared.clock import Clock, system_clock, unix_ms
from shared.contracts import agentmail
from shared.contracts.billing import Reservation
from shared.contracts.case import (
    CMD_CREATED,
    CMD_INPUT_PROVIDED,
    CMD_JUDGE_REPLY,
    CMD_SEND,
    AttachmentMeta,
    CaseCreatedCommand,
    InputProvidedCommand,
    created_subject,
)
from shared.errors import ServiceError
from shared.logs import case_id_var, client_id_var
from shared.messaging.jetstream import durable_subscriber
from shared.messaging.rpc import RpcClient
from shared.settings import CaseSettings
from shared.subjects import AGENTMAIL_EVENTS, CASE_COMMANDS, CASE_TIMERS, TIMERS_DUE, Consumer

log = logging.getLogger("caseflow.case.worker")

type EventFor = Callable[[CaseRecord], Awaitable[Event | None]]


@dataclass
class Worker:
    broker: NatsBroker
    store: CaseStore
    relay: OutboxRelay
    agent: Agent
    settings: CaseSettings
    unmatched: UnmatchedStore
    # None: no timers on JetStream (unit and integration harnesses), so the scan runs every tick as before.
    timers: CaseTimers | None = None
    clock: Clock = system_clock
    rpc: RpcClient = field(init=False)

    def __post_init__(self) -> None:
        self.rpc = RpcClient(self.broker, self.settings.rpc_timeout_seconds)

    def now_ms(self) -> int:
        return unix_ms(self.clock())

    def timing(self) -> Timing:
        return Timing.of(self.settings, self.now_ms())

    async def apply(self, case_id: str, event_for: EventFor, *, clock: Timing | None = None) -> CaseRecord | None:
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
        # A send's outcome follows the claim written while the event was built: read afresh rather than try
        # a write that is sure to conflict. A WriteConflict propagates: the message is redelivered (with
        # backoff) onto a calmer case.
        sent = isinstance(event, EmailSent | SendRejected | SendFailed)
        written = await self.store.write_change(
            case_id, lambda current: transition(current, event, clock or self.timing()), loaded=None if sent else case
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
            if self.timers is not None:
                await self.timers.follow(before, updated)
        return updated

    async def transcript(self, case: CaseRecord) -> list[agentmail.TranscriptMessage]:
        """Every thread of the case, merged oldest first, as the agent reads it (bounded: see `for_agent`)."""

        async def thread(thread_id: str) -> list[agentmail.TranscriptMessage]:
            found = await self.rpc(
                agentmail.TRANSCRIPT, agentmail.GetTranscript(thread_id=thread_id), agentmail.Transcript
            )
            return found.messages

        return for_agent(await case_transcript(case, thread))

    # ---- commands ----------------------------------------------------------------------------------------

    async def on_created(self, command: CaseCreatedCommand) -> None:
        async def started(_: CaseRecord) -> Event:
            return CaseStarted()

        await self.apply(command.case_id, started)

    async def on_send(self, command: SendEmailCommand) -> None:
        async def sent(case: CaseRecord) -> Event | None:
            if not send_wanted(case, command.attempt):
                return None  # superseded by a newer email, already sent, or the case ended
            return await self._send(case, command)

        await self.apply(command.case_id, sent)

    async def _body(self, case: CaseRecord, command: SendEmailCommand) -> tuple[str, str, TokenUsage] | AgentStuck:
        """The email's subject and text: fixed on the case once claimed, else the drafted reply or a new one."""
        if case.send_claimed and case.outgoing_text is not None:
            return case.outgoing_subject or f"Re: {case.goal.objective}", case.outgoing_text, TokenUsage()
        if command.draft_text is not None:
            return command.draft_subject or f"Re: {case.goal.objective}", command.draft_text, TokenUsage()
        try:
            draft = await self.agent.compose(
                ComposeRequest(
                    case=case, kind=command.kind, attempt=command.attempt, transcript=await self.transcript(case)
                )
            )
        except AgentCannotProceed as stuck:
            return AgentStuck(question=stuck.question, source=f"compose:{command.attempt}")
        return draft.subject, draft.text, draft.usage

    async def _send(self, case: CaseRecord, command: SendEmailCommand) -> Event | None:
        body = await self._body(case, command)
        if isinstance(body, AgentStuck):
            return body
        subject, text, usage = body
        if not case.send_claimed:
            # Claim the send with its body before the adapter sees it: from here on nothing supersedes this
            # email, and a repeat (after a crash, or a second delivery racing this one) sends this same body.
            async def started(_: CaseRecord) -> Event:
                return SendStarted(attempt=command.attempt, subject=subject, text=text)

            claimed = await self.apply(case.case_id, started)
            if claimed is None or not claimed.send_claimed or claimed.awaiting_send != command.attempt:
                return None  # superseded or cancelled while the email was being written: send nothing
            if claimed.outgoing_text != text:
                return None  # another delivery claimed it first with its own body; that one sends it
        reply_to = command.in_reply_to or case.last_message_id
        outcome: agentmail.Sent | agentmail.Rejected
        try:
            if command.kind == "first" or reply_to is None:
                outcome = await self.rpc(
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
                outcome = await self.rpc(
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
            if exc.kind == "terminal":
                return SendFailed(attempt=command.attempt, reason=exc.message)
            raise  # transient or misconfigured: redelivered with capped backoff for as long as it lasts
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
            if not input_awaits_judgement(case, command.input_request_id):
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
        match = await self._match(message)
        if match.case_id is None:
            await self._store_unmatched(message, match)
            return
        inbound = InboundEmail(
            message_id=message.message_id,
            attachments=tuple(attachment_meta(message, a) for a in message.attachments),
            thread_id=message.thread_id,
        )

        async def received(_: CaseRecord) -> Event:
            return ReplyReceived(message=inbound)

        # Noted on the case before it is judged: if judging never finishes, the reconciler judges it again.
        await self.apply(match.case_id, received)
        await self.judge_reply(match.case_id, message.message_id, received=message)

    async def _match(self, message: agentmail.MessageReceived) -> MessageMatch:
        """The message's case; when none is certain yet, looked up again after each configured delay (the
        thread of a case's first email is recorded when its send is confirmed, which a fast reply can beat)."""
        if message.case_id is not None and await self.store.get(message.case_id) is not None:
            return MessageMatch(case_id=message.case_id)  # the adapter knows the thread from our own send
        for delay in self.settings.thread_match_retry_seconds:
            match = await self.store.case_for_message(
                thread_id=message.thread_id, counterparty_address=message.from_address
            )
            if match.case_id is not None:
                return match
            await asyncio.sleep(delay)
        return await self.store.case_for_message(thread_id=message.thread_id, counterparty_address=message.from_address)

    async def _store_unmatched(self, message: agentmail.MessageReceived, match: MessageMatch) -> None:
        reason: Literal["no_case", "ambiguous"] = "ambiguous" if len(match.candidates) > 1 else "no_case"
        await self.unmatched.record(
            UnmatchedMessage(
                message_id=message.message_id,
                event_id=message.event_id,
                inbox_id=message.inbox_id,
                thread_id=message.thread_id,
                from_address=message.from_address,
                subject=message.subject,
                received_at=message.received_at,
                reason=reason,
                candidate_case_ids=list(match.candidates),
                stored_at=self.now_ms(),
            )
        )
        metrics.UNMATCHED_MESSAGES.labels(reason=reason).inc()
        log.warning(
            "inbound message stored as unmatched",
            extra={"message_id": message.message_id, "reason": reason, "candidates": list(match.candidates)},
        )

    async def on_judge_reply(self, command: JudgeReplyCommand) -> None:
        await self.judge_reply(command.case_id, command.message_id, received=None)

    async def judge_reply(
        self, case_id: str, message_id: str, *, received: agentmail.MessageReceived | None
    ) -> CaseRecord | None:
        """Judge a reply noted on the case (a no-op once it is judged, or when the case ended)."""

        async def judged(case: CaseRecord) -> Event | None:
            if not reply_awaits_judgement(case, message_id):
                return None
            noted = next(reply for reply in case.unjudged_replies if reply.message_id == message_id)
            transcript = await self.transcript(case)
            if received is not None and all(entry.message_id != message_id for entry in transcript):
                transcript = for_agent([*transcript, as_transcript_message(received)])
            try:
                judgement = await self.agent.judge(JudgeRequest(case=case, transcript=transcript, trigger="reply"))
            except AgentCannotProceed as stuck:
                judgement = Judgement(outcome="NEEDS_INPUT", question=stuck.question, reason="agent cannot proceed")
            return ReplyJudged(
                message=InboundEmail(
                    message_id=message_id, attachments=tuple(noted.attachments), thread_id=noted.thread_id
                ),
                judgement=judgement,
            )

        return await self.apply(case_id, judged)

    async def on_delivery(self, delivery: agentmail.DeliveryEvent) -> None:
        if delivery.kind == "delivered":
            return
        case_id = await self._case_of_delivery(delivery)
        if case_id is None:
            log.warning("delivery event for a message of no case", extra={"message_id": delivery.message_id})
            return

        async def failed(_: CaseRecord) -> Event:
            return DeliveryFailed(kind=delivery.kind, message_id=delivery.message_id, detail=delivery.detail)  # type: ignore[arg-type]

        await self.apply(case_id, failed)

    async def _case_of_delivery(self, delivery: agentmail.DeliveryEvent) -> str | None:
        """The case that sent the message: as the adapter recorded it, else by thread, looked up again after
        each configured delay (a fast bounce can beat the write of its send's confirmation)."""
        if delivery.case_id is not None and await self.store.get(delivery.case_id) is not None:
            return delivery.case_id
        for delay in self.settings.thread_match_retry_seconds:
            case_id = await self.store.case_for_thread(delivery.thread_id)
            if case_id is not None:
                return case_id
            await asyncio.sleep(delay)
        return await self.store.case_for_thread(delivery.thread_id)

    # ---- scheduler ---------------------------------------------------------------------------------------

    async def run_due(self, *, limit: int = 200) -> int:
        """Request the follow-ups (or failures) of every due case and repair every step past its lease;
        returns how many cases changed."""
        changed = 0
        for case_id in await self.store.due_case_ids(now=self.now_ms(), limit=limit):
            try:
                changed += await self.claim_due(case_id)
            except Exception:
                log.exception("scheduling a due case failed; it stays due", extra={"case_id": case_id})
        return changed

    async def claim_due(self, case_id: str) -> int:
        """Apply `FollowUpDue` to one case (found by the scan or fired by its timer); 1 when it changed. A case
        not due yet (a stale timer) is left as it is."""

        async def due(_: CaseRecord) -> Event:
            return FollowUpDue()

        clock = self.timing()
        before = await self.store.get(case_id)
        after = await self.apply(case_id, due, clock=clock)
        if before is None or after is None or after.version == before.version:
            return 0
        for kind in repairs_due(before, clock):
            metrics.RECONCILER_REPAIRS.labels(kind=kind).inc()
            log.warning("reconciler requested a step again", extra={"case_id": case_id, "repair": kind})
        return 1

    async def on_timer(self, case_id: str) -> None:
        """A case's timer fired: settle it if it is a create awaiting its confirmation, else claim it if due."""
        record = await self.store.get(case_id)
        if record is None:
            return
        if not awaiting_confirmation(record):
            await self.claim_due(case_id)
            return
        confirm_by = self._confirm_by_not_passed(record)
        if confirm_by is not None:
            # Armed for an earlier time than the case now has (a replay pushed it out): wait for the new one.
            if self.timers is not None:
                await self.timers.arm_or_leave_to_the_scan(record.case_id, confirm_by)
            return
        await self._settle_create(record)

    async def reconcile_creates(self, *, limit: int = 100) -> int:
        """Settle every create whose confirmation time has passed unconfirmed: start it if its created command
        exists after all (the consumer will have been slow), else remove it and release its unit — its client
        was never answered 201 (the gateway publishes the command before answering). Returns cases settled."""
        settled = 0
        for record in await self.store.unconfirmed_creates(now=self.now_ms(), limit=limit):
            try:
                settled += await self._settle_create(record)
            except Exception:
                log.exception("reconciling an unconfirmed create failed; it is tried again")
        return settled

    def _confirm_by_not_passed(self, record: CaseRecord) -> int | None:
        """The create's `confirmBy` while it has not passed (its created command may still come), else None."""
        return record.confirm_by if record.confirm_by is not None and record.confirm_by > self.now_ms() else None

    async def _settle_create(self, record: CaseRecord) -> int:
        case_id_var.set(record.case_id)
        client_id_var.set(record.client_id)
        if (
            not awaiting_confirmation(record)
            or record.confirm_by is None
            or self._confirm_by_not_passed(record) is not None
        ):
            return 0  # started, or its confirmation may still come: only its confirmation time settles it
        if await self._created_command_exists(record.case_id):
            await self.on_created(CaseCreatedCommand(case_id=record.case_id))
            log.warning("started a confirmed create its created command had not started yet")
            metrics.RECONCILER_REPAIRS.labels(kind="create_started").inc()
            return 1
        if not await self.store.delete_unconfirmed(record):
            return 0  # it changed meanwhile (started, or a replay is confirming it): look again next time
        if record.usage_month is not None:
            await release_unit(
                self.rpc,
                client_id=record.client_id,
                reservation=Reservation(reservation_id=record.case_id, month=record.usage_month),
            )
        log.warning("removed a create that was never confirmed; its usage unit is released")
        metrics.RECONCILER_REPAIRS.labels(kind="create_unconfirmed").inc()
        return 1

    async def _created_command_exists(self, case_id: str) -> bool:
        try:
            await self.broker.connection.jetstream().get_last_msg(CASE_COMMANDS.name, created_subject(case_id))
        except NotFoundError:
            return False
        return True

    async def safety_round(self, *, limit: int = 200) -> int:
        """Behind the timers: settle every case a lost timer would have fired (due, past a lease, or an
        unconfirmed create past its confirmation time), found by one query per batch; a full batch that changed
        something is followed by the next at once. Returns how many cases changed."""
        changed = 0
        while True:
            found = await self.store.needing_attention(now=self.now_ms(), limit=limit)
            changed_now = 0
            for record in found:
                try:
                    if awaiting_confirmation(record):
                        changed_now += await self._settle_create(record)
                    else:
                        changed_now += await self.claim_due(record.case_id)
                except Exception:
                    log.exception(
                        "the safety round failed on a case; it is found again", extra={"case_id": record.case_id}
                    )
            changed += changed_now
            if len(found) < limit or changed_now == 0:
                return changed

    async def schedule_forever(self) -> None:
        if self.timers is not None:
            # Timers on JetStream fire each due case and each create at its confirmation time; the safety round
            # behind them (one query) finds what a lost timer left, at start-up (cases scheduled before timers
            # existed) and then every SCHEDULER_SAFETY_SCAN_SECONDS, never on a tick.
            while True:
                await self.safety_round()
                await asyncio.sleep(self.settings.scheduler_safety_scan_seconds)
        # Without timers the due scan runs every tick, and unconfirmed creates (which wait out a grace of many
        # seconds anyway) are looked for every quarter of that grace.
        reconcile_every = max(self.settings.scheduler_interval_seconds, self.settings.create_confirm_grace_seconds / 4)
        next_reconcile = 0.0
        while True:
            if time.monotonic() >= next_reconcile:
                await self.reconcile_creates()
                next_reconcile = time.monotonic() + reconcile_every
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

    if worker.timers is not None:

        @durable_subscriber(broker, subject=TIMERS_DUE, stream=CASE_TIMERS, durable=Consumer.CASE_TIMERS, max_workers=8)
        async def timer_fired(fired: TimerFired) -> None:
            await worker.on_timer(fired.case_id)

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
        broker, subject=CMD_JUDGE_REPLY, stream=CASE_COMMANDS, durable=Consumer.CASE_JUDGE_REPLY, max_workers=2
    )
    async def judge_reply(command: JudgeReplyCommand) -> None:
        await worker.on_judge_reply(command)

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
