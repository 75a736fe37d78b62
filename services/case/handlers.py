"""The case service's request/reply handlers: decode, call the domain, persist, publish, reply.

`POST /cases` is the one multi-step write: claim the Idempotency-Key, reserve a usage unit (billing), insert
the case hidden, publish its created command, show it. Any failure after the reservation releases it and
removes the hidden case, so the client either gets a 201 for a durable, queued case or an error and no case.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import get_args

import msgspec
from faststream.nats import NatsBroker

from services.case import domain
from services.case.model import CaseRecord, SendEmailCommand
from services.case.outbox import OutboxRelay
from services.case.store import CaseStore, IdempotencyStore, PageCursor, WriteConflict
from services.case.transcript import format_transcript, transcript_entries
from services.case.validation import validate_new_case
from shared.clock import now_ms
from shared.contracts import agentmail, billing, case
from shared.contracts.rpc import Ok
from shared.errors import ErrorCode, ServiceError
from shared.logs import case_id_var, client_id_var, request_id_var
from shared.messaging import broker_unavailable, document_publication, request
from shared.settings import CaseSettings
from shared.subjects import CASE_COMMANDS, CASE_EVENTS, Service, queue_group

log = logging.getLogger("caseflow.case")


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


@dataclass
class CaseApi:
    broker: NatsBroker
    store: CaseStore
    idempotency: IdempotencyStore
    relay: OutboxRelay
    settings: CaseSettings
    clock: Callable[[], dt.datetime] = utc_now

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
            raise ServiceError(ErrorCode.INTERNAL_ERROR, "The case is changing too often; retry shortly.") from None
        if written is None:
            raise ServiceError(ErrorCode.CASE_NOT_FOUND)
        return written[1]

    async def _rpc[T](self, subject: str, payload: msgspec.Struct, reply_type: type[T]) -> T:
        return await request(self.broker, subject, payload, reply_type, timeout=self.settings.rpc_timeout_seconds)

    # ---- create ------------------------------------------------------------------------------------------

    async def create(self, command: case.CreateCase) -> case.CreateCaseResult:
        client_id_var.set(command.client_id)
        validate_new_case(command.case, allow_private_webhooks=self.settings.webhook_allow_private)
        key = command.idempotency_key
        if key is not None:
            claim = await self.idempotency.claim(
                client_id=command.client_id,
                key=key,
                request_hash=request_hash(command.case),
                now=self.clock(),
            )
            if claim.outcome == "replay" and claim.case_id is not None:
                return case.CreateCaseResult(case_id=claim.case_id, replayed=True)
            if claim.outcome == "in_flight":
                raise ServiceError(ErrorCode.IDEMPOTENCY_KEY_IN_USE)
            if claim.outcome == "mismatch":
                raise ServiceError(ErrorCode.IDEMPOTENCY_KEY_MISMATCH)
        try:
            case_id = await self._create_reserved(command)
        except BaseException:
            if key is not None:
                await self.idempotency.abandon(client_id=command.client_id, key=key)
            raise
        if key is not None:
            await self.idempotency.complete(client_id=command.client_id, key=key, case_id=case_id)
        return case.CreateCaseResult(case_id=case_id, replayed=False)

    async def _create_reserved(self, command: case.CreateCase) -> str:
        case_id = str(uuid.uuid4())
        case_id_var.set(case_id)
        reservation = await self._rpc(
            billing.RESERVE,
            billing.ReserveUnit(client_id=command.client_id, plan=command.plan, reservation_id=case_id),
            billing.Reservation,
        )
        record = domain.new_case(case_id=case_id, client_id=command.client_id, body=command.case, now=now_ms())
        try:
            await self.store.insert(record)
        except Exception as exc:
            log.exception("could not store a new case")
            await self._release(command.client_id, reservation)
            raise ServiceError(ErrorCode.INTERNAL_ERROR) from exc
        try:
            await self.relay.publish(record, request_id=request_id_var.get())
        except Exception as exc:
            log.exception("could not queue a new case; undoing the create")
            try:
                await self.store.delete_unpublished(case_id)
            except Exception:
                # The hidden case stays; the outbox relay will publish it later, so keep the unit counted.
                log.exception("could not undo the create; the outbox relay will complete it")
            else:
                await self._release(command.client_id, reservation)
            # A stream electing a new leader (a NATS node died) is a 503 the client may retry, not a 500.
            raise ServiceError(
                ErrorCode.SERVICE_UNAVAILABLE if broker_unavailable(exc) else ErrorCode.INTERNAL_ERROR
            ) from exc
        log.info("case created")
        return case_id

    async def _release(self, client_id: str, reservation: billing.Reservation) -> None:
        try:
            await self._rpc(
                billing.RELEASE,
                billing.ReleaseUnit(
                    client_id=client_id, month=reservation.month, reservation_id=reservation.reservation_id
                ),
                billing.Released,
            )
        except ServiceError:
            log.exception("could not release a usage unit", extra={"reservation_id": reservation.reservation_id})

    # ---- reads -------------------------------------------------------------------------------------------

    async def get(self, query: case.GetCase) -> case.CaseView:
        record = await self._load_owned(query.case_id, query.client_id)
        view = domain.view(record)
        if not query.include_transcript:
            return view
        if record.thread_id is None:
            return msgspec.structs.replace(view, conversation_thread=None, conversation_messages=None)
        transcript = await self._rpc(
            agentmail.TRANSCRIPT, agentmail.GetTranscript(thread_id=record.thread_id), agentmail.Transcript
        )
        return msgspec.structs.replace(
            view,
            conversation_thread=format_transcript(transcript.messages),
            conversation_messages=transcript_entries(transcript.messages),
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
            link = await self._rpc(
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
        updated = await self._update(
            command.case_id,
            command.client_id,
            lambda record: domain.resolve_input(
                record, input_request_id=input_request_id, provided_context=provided_context, now=now_ms()
            ),
        )
        await self._publish_soon(updated)
        return case.InputAccepted(case_id=updated.case_id, input_request_id=input_request_id, accepted=True)

    async def cancel(self, ref: case.CaseRef) -> case.CaseView:
        updated = await self._update(ref.case_id, ref.client_id, lambda record: domain.cancel(record, now=now_ms()))
        await self._publish_soon(updated)
        return domain.view(updated)

    async def _publish_soon(self, record: CaseRecord) -> None:
        # The owed messages are already durable in the case's outbox; if this publish fails the relay retries.
        try:
            await self.relay.publish(record, request_id=request_id_var.get())
        except Exception:
            log.warning("publish deferred to the outbox relay", exc_info=True)


def document_outbox_subjects(broker: NatsBroker) -> None:
    """What the outbox relay publishes (raw JetStream publishes, so the AsyncAPI document learns them here)."""
    commands = f"Stream {CASE_COMMANDS.name}; Nats-Msg-Id is the command id; relayed from the case's outbox."
    document_publication(
        broker,
        case.CMD_CREATED,
        case.CaseCreatedCommand,
        description=f"A case was created: the worker starts it (first email). {commands}",
    )
    document_publication(
        broker,
        case.CMD_INPUT_PROVIDED,
        case.InputProvidedCommand,
        description=f"The client answered the case's input request: the worker resumes the case. {commands}",
    )
    document_publication(
        broker,
        case.CMD_SEND,
        SendEmailCommand,
        description=f"The worker's own queue of emails to send (payload private to the case service). {commands}",
    )
    for event_type in get_args(case.EventType):
        document_publication(
            broker,
            case.event_subject(event_type),
            case.CaseEvent,
            description=f"Case event `{event_type}` for the client's webhook. Stream {CASE_EVENTS.name}; "
            "Nats-Msg-Id is the event id; relayed from the case's outbox.",
        )


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
    document_outbox_subjects(broker)

    @broker.subscriber(case.CREATE, queue=queue)
    async def create_case(command: case.CreateCase) -> Ok[case.CreateCaseResult]:
        return Ok(await api.create(command))

    @broker.subscriber(case.GET, queue=queue)
    async def get_case(query: case.GetCase) -> Ok[case.CaseView]:
        return Ok(await api.get(query))

    @broker.subscriber(case.LIST, queue=queue)
    async def list_cases(query: case.ListCases) -> Ok[case.CasePage]:
        return Ok(await api.list(query))

    @broker.subscriber(case.PROVIDE_INPUT, queue=queue)
    async def provide_input(command: case.ProvideInput) -> Ok[case.InputAccepted]:
        return Ok(await api.provide_input(command))

    @broker.subscriber(case.CANCEL, queue=queue)
    async def cancel_case(ref: case.CaseRef) -> Ok[case.CaseView]:
        return Ok(await api.cancel(ref))

    @broker.subscriber(case.ATTACHMENT, queue=queue)
    async def get_attachment(query: case.GetAttachment) -> Ok[case.AttachmentDownload]:
        return Ok(await api.attachment(query))

    @broker.subscriber(case.CHECK_OWNER, queue=queue)
    async def check_owner(ref: case.CaseRef) -> Ok[case.OwnerChecked]:
        return Ok(await api.check_owner(ref))
