"""The webhook service's message handlers: case events in (JetStream), the delivery log and redelivery out (RPC).

Design decision: a case event is acknowledged only after its delivery record is stored. The handler stores the
record idempotently (the event id is the document id) and returns, and the durable consumer acks only then; a
crash before that gets the event redelivered, and a redelivered event changes nothing. Sending happens later,
from the stored record, in the dispatcher. Events of cases without a `clientWebhookUrl` are not recorded:
Offload sends nothing for them, and a delivery log with nowhere to deliver would only invite redeliveries
that cannot happen.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from faststream.nats import NatsBroker

from services.webhook import domain
from services.webhook.dispatcher import Dispatcher
from services.webhook.model import DeliveryRecord
from services.webhook.store import DeliveryStore
from shared.clock import Clock, system_clock, unix_ms
from shared.contracts import case, webhook
from shared.contracts.rpc import Ok
from shared.errors import ErrorCode, ServiceError
from shared.logs import case_id_var, client_id_var
from shared.messaging.jetstream import durable_subscriber
from shared.messaging.responder import rpc_subscriber
from shared.messaging.rpc import RpcClient
from shared.settings import WebhookSettings
from shared.subjects import CASE_EVENTS, Consumer, Service, queue_group

log = logging.getLogger("caseflow.webhook")


def new_delivery(event: case.CaseEvent, *, url: str, schedule: list[float], now: int) -> DeliveryRecord:
    first_delay = domain.delay_before_attempt(schedule, 1) or 0.0
    return DeliveryRecord(
        event_id=event.event_id,
        case_id=event.data.case_id,
        client_id=event.client_id,
        event_type=event.event_type,
        timestamp=event.timestamp,
        url=url,
        body=domain.webhook_body(event),
        state="pending",
        created_at=now,
        next_attempt_at=now + int(first_delay * 1000),
    )


def delivery_view(record: DeliveryRecord) -> webhook.WebhookDelivery:
    return webhook.WebhookDelivery(
        event_id=record.event_id,
        event_type=record.event_type,
        timestamp=record.timestamp,
        state=record.state,
        next_attempt_at=record.next_attempt_at if record.state == "pending" else None,
        attempts=[
            webhook.DeliveryAttempt(at=a.at, status=a.status, latency_ms=a.latency_ms, error=a.error)
            for a in record.attempts
        ],
        # Deliveries stored before the count existed hold all their attempts.
        attempt_count=max(record.attempt_count, len(record.attempts)),
        data=domain.decode_body(record.body).data,
    )


@dataclass
class WebhookApi:
    broker: NatsBroker
    store: DeliveryStore
    dispatcher: Dispatcher
    settings: WebhookSettings
    clock: Clock = system_clock
    rpc: RpcClient = field(init=False)

    def __post_init__(self) -> None:
        self.rpc = RpcClient(self.broker, self.settings.rpc_timeout_seconds)

    async def record_event(self, event: case.CaseEvent) -> None:
        case_id_var.set(event.data.case_id)
        client_id_var.set(event.client_id)
        if event.webhook_url is None:
            log.debug("case has no webhook URL; event not delivered", extra={"event_id": event.event_id})
            return
        record = new_delivery(
            event,
            url=event.webhook_url,
            schedule=self.settings.webhook_retry_schedule_seconds,
            now=unix_ms(self.clock()),
        )
        if await self.store.insert_once(record):
            log.info("webhook delivery stored", extra={"event_id": event.event_id, "event_type": event.event_type})
            self.dispatcher.wake()

    async def _check_owner(self, *, client_id: str, case_id: str) -> None:
        """CASE_NOT_FOUND or FORBIDDEN with the case routes' semantics, decided by the case service."""
        case_id_var.set(case_id)
        client_id_var.set(client_id)
        await self.rpc(case.CHECK_OWNER, case.CaseRef(client_id=client_id, case_id=case_id), case.OwnerChecked)

    async def list_deliveries(self, query: webhook.ListDeliveries) -> webhook.WebhookDeliveries:
        await self._check_owner(client_id=query.client_id, case_id=query.case_id)
        records = await self.store.for_case(case_id=query.case_id, client_id=query.client_id)
        return webhook.WebhookDeliveries(case_id=query.case_id, items=[delivery_view(r) for r in records])

    async def redeliver(self, command: webhook.Redeliver) -> webhook.WebhookDelivery:
        await self._check_owner(client_id=command.client_id, case_id=command.case_id)
        record = await self.store.restart_schedule(
            event_id=command.event_id, case_id=command.case_id, client_id=command.client_id, now=unix_ms(self.clock())
        )
        if record is None:
            raise ServiceError(ErrorCode.WEBHOOK_EVENT_NOT_FOUND)
        log.info("manual redelivery queued", extra={"event_id": record.event_id})
        self.dispatcher.wake()
        return delivery_view(record)


def register(api: WebhookApi) -> None:
    broker = api.broker
    queue = queue_group(Service.WEBHOOK)

    @durable_subscriber(
        broker,
        subject=CASE_EVENTS.subjects[0],
        stream=CASE_EVENTS,
        durable=Consumer.WEBHOOK_CASE_EVENTS,
        max_workers=8,
        ack_wait_seconds=api.settings.webhook_ack_wait_seconds,
    )
    async def record_case_event(event: case.CaseEvent) -> None:
        await api.record_event(event)

    @rpc_subscriber(broker, webhook.LIST_DELIVERIES, queue=queue)
    async def list_deliveries(query: webhook.ListDeliveries) -> Ok[webhook.WebhookDeliveries]:
        return Ok(await api.list_deliveries(query))

    @rpc_subscriber(broker, webhook.REDELIVER, queue=queue)
    async def redeliver(command: webhook.Redeliver) -> Ok[webhook.WebhookDelivery]:
        return Ok(await api.redeliver(command))
