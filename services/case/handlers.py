"""The case service's request/reply handlers: decode, call the domain, persist, publish, reply.

`POST /cases` is all or nothing without a second write: claim the Idempotency-Key for a case id chosen up front,
reserve a usage unit (billing), insert the case visible in CREATED, reply. Nothing starts the case until the
gateway confirms the create by publishing its created command (only when it answers the client 201), and a
create whose deadline has passed is dropped before it stores anything; an unconfirmed case is removed by the
reconciler (worker.py), so a create the client was answered 5xx (or never answered) never emails anyone.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import signal
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

import msgspec
from faststream.nats import NatsBroker

from services.case import domain, lifecycle
from services.case.model import CaseRecord
from services.case.outbox import OutboxRelay
from services.case.store import CaseStore, IdempotencyStore, PageCursor, WriteConflict
from services.case.timers import CaseTimers
from services.case.transcript import case_threads, case_transcript, format_transcript, transcript_entries
from services.case.validation import validate_new_case
from shared import metrics
from shared.clock import Clock, naive_utc, system_clock, unix_ms
from shared.contracts import agentmail, billing, case
from shared.contracts.rpc import Ok
from shared.errors import ErrorCode, ServiceError
from shared.logs import case_id_var, client_id_var, request_id_var
from shared.messaging.responder import RpcRequest, rpc_subscriber
from shared.messaging.rpc import RpcClient, request_deadline_ms
from shared.settings import CaseSettings
from shared.subjects import Service, queue_group
from shared.transcript_budget import newest_that_fit

log = logging.getLogger("caseflow.case")

# Reads (GET /cases/{id}, GET /cases) change nothing, so they run side by side, each awaiting its own MongoDB
# round trip; one at a time, a replica's reads queued behind each other's round trips (issue 16's bench).
CONCURRENT_READS: Final = 16
# Writes run side by side too: creates are independent (the key claim and the billing reservation are conditional
# writes the database serialises), and two writes to one case meet at its version check, which re-reads and
# re-applies. One at a time, a replica's creates queued behind each other's three writes and billing round trip.
CONCURRENT_WRITES: Final = 8


@dataclass
class CaseApi:
    broker: NatsBroker
    store: CaseStore
    idempotency: IdempotencyStore
    relay: OutboxRelay
    settings: CaseSettings
    clock: Clock = system_clock
    rpc: RpcClient = field(init=False)

    def __post_init__(self) -> None:
        self.rpc = RpcClient(self.broker, self.settings.rpc_timeout_seconds)

    def now_ms(self) -> int:
        return unix_ms(self.clock())

    # Arms a case's timer after a write that changed its due time (an answer's lease); None: the scan only.
    timers: CaseTimers | None = None

    async def _load_owned(self, case_id: str, client_id: str) -> CaseRecord:
        case_id_var.set(case_id)
        client_id_var.set(client_id)
        return domain.ensure_owner(await self.store.get(case_id), client_id)

    async def _update(self, case_id: str, client_id: str, change: Callable[[CaseRecord], CaseRecord]) -> CaseRecord:
        """Apply `change` to the caller's case under optimistic concurrency (re-checked on a conflicting write)."""
        case_id_var.set(case_id)
        client_id_var.set(client_id)
        try:
            written = await self.store.write_change(
                case_id, lambda record: change(domain.ensure_owner(record, client_id))
            )
        except WriteConflict:
            raise ServiceError(
                ErrorCode.SERVICE_UNAVAILABLE, "The case is changing too often; retry shortly."
            ) from None
        if written is None:
            raise ServiceError(ErrorCode.CASE_NOT_FOUND)
        before, after = written
        if self.timers is not None and after is not before:
            await self.timers.follow(before, after)
        return after

    # ---- create ------------------------------------------------------------------------------------------

    async def create(self, command: case.CreateCase, *, deadline_ms: int | None = None) -> case.CreateCaseResult:
        """Claim the key (if any), reserve a unit, store the case: at most three writes. `deadline_ms` is the
        asker's deadline: past it nobody will confirm the case, so nothing is stored."""
        client_id_var.set(command.client_id)
        validate_new_case(command.case, allow_private_webhooks=self.settings.webhook_allow_private)
        deadline = (
            deadline_ms if deadline_ms is not None else self.now_ms() + int(self.settings.rpc_timeout_seconds * 1000)
        )
        self._drop_if_late(deadline, "before it started")
        case_id = str(uuid.uuid4())
        key = command.idempotency_key
        if key is not None:
            replayed = await self._claim(command, key, case_id=case_id, deadline=deadline)
            if replayed is not None:
                return case.CreateCaseResult(case_id=replayed, replayed=True)
        try:
            await self._create_reserved(command, case_id=case_id, deadline=deadline)
        except BaseException:
            if key is not None:
                await self.idempotency.abandon(client_id=command.client_id, key=key, case_id=case_id)
            raise
        return case.CreateCaseResult(case_id=case_id, replayed=False)

    def _drop_if_late(self, deadline: int, stage: str) -> None:
        if self.now_ms() >= deadline:
            # The asker has given up: storing the case now would only leave one that nobody confirms.
            log.warning("create dropped: its deadline passed %s", stage, extra={"deadline": deadline})
            metrics.DEADLINE_DROPS.labels(subject=case.CREATE).inc()
            raise ServiceError(ErrorCode.SERVICE_UNAVAILABLE)

    async def _claim(self, command: case.CreateCase, key: str, *, case_id: str, deadline: int) -> str | None:
        """Claim `key` for `case_id`; returns the earlier case when this is a replay of it."""
        claim = await self.idempotency.claim(
            client_id=command.client_id,
            key=key,
            request_hash=request_hash(command.case),
            case_id=case_id,
            deadline_ms=deadline,
            now=naive_utc(self.clock()),
        )
        if claim.outcome == "new":
            return None
        if claim.outcome == "mismatch":
            raise ServiceError(ErrorCode.IDEMPOTENCY_KEY_MISMATCH)
        if claim.case_id is not None and await self._still_there(claim.case_id, deadline=deadline):
            return claim.case_id
        # The earlier request stored no case (yet): it may still, until its deadline has passed.
        now = self.now_ms()
        if not self.idempotency.may_take_over(claim.deadline_ms, now_ms=now):
            wait = self.idempotency.takeover_wait_seconds(claim.deadline_ms, now_ms=now)
            raise ServiceError(ErrorCode.IDEMPOTENCY_KEY_IN_USE, retry_after_seconds=wait)
        if not await self.idempotency.take_over(
            client_id=command.client_id, key=key, previous_case_id=claim.case_id, case_id=case_id, deadline_ms=deadline
        ):
            # Another retry took it over just now: its own request is in flight.
            raise ServiceError(ErrorCode.IDEMPOTENCY_KEY_IN_USE, retry_after_seconds=1)
        log.info(
            "idempotency key taken over: its earlier request can no longer commit", extra={"previous": claim.case_id}
        )
        return None

    async def _still_there(self, case_id: str, *, deadline: int) -> bool:
        """The replayed case exists and may be confirmed by this request: one still awaiting its confirmation
        gets a later confirmation time first, so the reconciler cannot remove it under this replay."""
        confirm_by = deadline + self._confirm_grace_ms
        if await self.store.extend_confirmation(case_id, confirm_by=confirm_by):
            if self.timers is not None:
                # The case's timer was armed for the earlier time; one armed too early re-arms itself (worker).
                await self.timers.arm_or_leave_to_the_scan(case_id, confirm_by)
            return True
        return await self.store.get(case_id) is not None

    @property
    def _confirm_grace_ms(self) -> int:
        return int(self.settings.create_confirm_grace_seconds * 1000)

    async def _create_reserved(self, command: case.CreateCase, *, case_id: str, deadline: int) -> None:
        case_id_var.set(case_id)
        reservation = await self.rpc(
            billing.RESERVE,
            billing.ReserveUnit(client_id=command.client_id, plan=command.plan, reservation_id=case_id),
            billing.Reservation,
            timeout=min(self.settings.rpc_timeout_seconds, max(deadline - self.now_ms(), 1) / 1000),
        )
        try:
            self._drop_if_late(deadline, "before the case was stored")
        except ServiceError:
            await self._release(command.client_id, reservation)
            raise
        record = domain.new_case(
            case_id=case_id,
            client_id=command.client_id,
            body=command.case,
            now=self.now_ms(),
            confirm_by=deadline + self._confirm_grace_ms,
            usage_month=reservation.month,
        )
        try:
            await self.store.insert(record)
        except Exception as exc:
            log.exception("could not store a new case")
            await self._release(command.client_id, reservation)
            raise ServiceError(ErrorCode.INTERNAL_ERROR) from exc
        log.info("case stored; it starts once the create is confirmed")
        if self.timers is not None:
            # Fires at confirmBy: the worker then starts the case if its created command exists, else removes it.
            await self.timers.follow(None, record)
        if self.settings.fault_exit_after_case_insert:
            os.kill(os.getpid(), signal.SIGKILL)

    async def _release(self, client_id: str, reservation: billing.Reservation) -> None:
        await release_unit(self.rpc, client_id=client_id, reservation=reservation)

    # ---- reads -------------------------------------------------------------------------------------------

    async def get(self, query: case.GetCase) -> case.CaseView:
        record = await self._load_owned(query.case_id, query.client_id)
        view = domain.view(record)
        if not query.include_transcript:
            return view
        if not case_threads(record):
            return msgspec.structs.replace(view, conversation_thread=None, conversation_messages=None)

        omitted = 0

        async def thread(thread_id: str) -> list[agentmail.TranscriptMessage]:
            nonlocal omitted
            found = await self.rpc(
                agentmail.TRANSCRIPT, agentmail.GetTranscript(thread_id=thread_id), agentmail.Transcript
            )
            # The adapter bounds each thread (newest messages within a byte budget) so the reply fits the bus.
            omitted += found.omitted
            return found.messages

        # Each thread fits the bus; several together might not, so the merged transcript gets the same budget.
        messages, left_out = newest_that_fit(await case_transcript(record, thread))
        omitted += left_out
        return msgspec.structs.replace(
            view,
            conversation_thread=format_transcript(messages, omitted=omitted),
            conversation_messages=transcript_entries(messages),
            conversation_messages_omitted=omitted or msgspec.UNSET,
        )

    async def list(self, query: case.ListCases) -> case.CasePage:
        client_id_var.set(query.client_id)
        if not 1 <= query.limit <= 100:
            raise ServiceError(ErrorCode.INVALID_REQUEST, "limit: must be between 1 and 100")
        records = await self.store.page(
            client_id=query.client_id,
            statuses=query.statuses,
            client_reference_id=query.client_reference_id,
            updated_after=query.updated_after,
            after=decode_cursor(query.cursor) if query.cursor else None,
            limit=query.limit + 1,
        )
        more = len(records) > query.limit
        page = records[: query.limit]
        next_cursor = encode_cursor(PageCursor(page[-1].updated_at, page[-1].case_id)) if more else None
        return case.CasePage(items=[domain.view(record) for record in page], next_cursor=next_cursor)

    async def check_owner(self, ref: case.CaseRef) -> case.OwnerChecked:
        record = await self._load_owned(ref.case_id, ref.client_id)
        return case.OwnerChecked(case_id=record.case_id)

    async def attachment(self, query: case.GetAttachment) -> case.AttachmentDownload:
        record = await self._load_owned(query.case_id, query.client_id)
        meta = next((a for a in record.attachments if a.attachment_id == query.attachment_id), None)
        if meta is None:
            raise ServiceError(ErrorCode.ATTACHMENT_NOT_FOUND)
        try:
            link = await self.rpc(
                agentmail.ATTACHMENT_LINK,
                agentmail.GetAttachmentLink(message_id=meta.message_id, attachment_id=meta.attachment_id),
                agentmail.AttachmentLink,
            )
        except ServiceError as exc:
            # The contract answers 500 when AgentMail's lookup fails, whatever the reason.
            raise ServiceError(ErrorCode.INTERNAL_ERROR, "The attachment link could not be obtained.") from exc
        return case.AttachmentDownload(
            attachment_id=meta.attachment_id,
            name=meta.name,
            size=meta.size,
            type=meta.type,
            message_id=meta.message_id,
            inbox_id=meta.inbox_id,
            received_at=meta.received_at,
            download_url=link.download_url,
            expires_at=link.expires_at,
        )

    # ---- writes ------------------------------------------------------------------------------------------

    async def provide_input(self, command: case.ProvideInput) -> case.InputAccepted:
        input_request_id = command.input_request_id.strip()
        provided_context = command.provided_context.strip()
        if not input_request_id:
            raise ServiceError(ErrorCode.INVALID_REQUEST, "inputRequestId: must not be blank")
        if not provided_context:
            raise ServiceError(ErrorCode.INVALID_REQUEST, "providedContext: must not be blank")
        answer = lifecycle.InputProvided(input_request_id=input_request_id, provided_context=provided_context)
        updated = await self._update(
            command.case_id,
            command.client_id,
            lambda record: lifecycle.apply_request(record, answer, lifecycle.Timing.of(self.settings, self.now_ms())),
        )
        await self._publish_soon(updated)
        return case.InputAccepted(case_id=updated.case_id, input_request_id=input_request_id, accepted=True)

    async def cancel(self, ref: case.CaseRef) -> case.CaseView:
        updated = await self._update(
            ref.case_id,
            ref.client_id,
            lambda record: lifecycle.apply_request(
                record, lifecycle.CancelRequested(), lifecycle.Timing.of(self.settings, self.now_ms())
            ),
        )
        await self._publish_soon(updated)
        return domain.view(updated)

    async def _publish_soon(self, record: CaseRecord) -> None:
        # The owed messages are already durable in the case's outbox; if this publish fails the relay retries.
        try:
            await self.relay.publish(record, request_id=request_id_var.get())
        except Exception:
            log.warning("publish deferred to the outbox relay", exc_info=True)


async def release_unit(rpc: RpcClient, *, client_id: str, reservation: billing.Reservation) -> bool:
    """Give a usage unit back (idempotent by reservation id); False, logged, when billing did not answer."""
    try:
        await rpc(
            billing.RELEASE,
            billing.ReleaseUnit(
                client_id=client_id, month=reservation.month, reservation_id=reservation.reservation_id
            ),
            billing.Released,
        )
    except ServiceError:
        log.exception("could not release a usage unit", extra={"reservation_id": reservation.reservation_id})
        return False
    return True


def request_hash(body: case.NewCase) -> str:
    return hashlib.sha256(msgspec.json.encode(body, order="sorted")).hexdigest()


def encode_cursor(cursor: PageCursor) -> str:
    raw = msgspec.json.encode([cursor.updated_at, cursor.case_id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(token: str) -> PageCursor:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        updated_at, case_id = msgspec.json.decode(raw, type=tuple[int, str])
    except (binascii.Error, ValueError, msgspec.DecodeError):
        raise ServiceError(ErrorCode.INVALID_REQUEST, "cursor: is not a cursor returned by this API") from None
    return PageCursor(updated_at, case_id)


def register(api: CaseApi) -> None:
    broker = api.broker
    queue = queue_group(Service.CASE)

    @rpc_subscriber(broker, case.CREATE, queue=queue, concurrency=CONCURRENT_WRITES)
    async def create_case(command: case.CreateCase, request: RpcRequest) -> Ok[case.CreateCaseResult]:
        return Ok(await api.create(command, deadline_ms=request_deadline_ms(request.headers)))

    @rpc_subscriber(broker, case.GET, queue=queue, concurrency=CONCURRENT_READS)
    async def get_case(query: case.GetCase) -> Ok[case.CaseView]:
        return Ok(await api.get(query))

    @rpc_subscriber(broker, case.LIST, queue=queue, concurrency=CONCURRENT_READS)
    async def list_cases(query: case.ListCases) -> Ok[case.CasePage]:
        return Ok(await api.list(query))

    @rpc_subscriber(broker, case.PROVIDE_INPUT, queue=queue, concurrency=CONCURRENT_WRITES)
    async def provide_input(command: case.ProvideInput) -> Ok[case.InputAccepted]:
        return Ok(await api.provide_input(command))

    @rpc_subscriber(broker, case.CANCEL, queue=queue, concurrency=CONCURRENT_WRITES)
    async def cancel_case(ref: case.CaseRef) -> Ok[case.CaseView]:
        return Ok(await api.cancel(ref))

    @rpc_subscriber(broker, case.ATTACHMENT, queue=queue)
    async def get_attachment(query: case.GetAttachment) -> Ok[case.AttachmentDownload]:
        return Ok(await api.attachment(query))

    @rpc_subscriber(broker, case.CHECK_OWNER, queue=queue)
    async def check_owner(ref: case.CaseRef) -> Ok[case.OwnerChecked]:
        return Ok(await api.check_owner(ref))
