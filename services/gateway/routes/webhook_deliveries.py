"""The client-visible webhook delivery log of a case, and manual redelivery of one event [beyond Offload].

Thin HTTP adapters over the webhook service, which owner-checks both routes through the case service (404
CASE_NOT_FOUND, 403 FORBIDDEN, exactly as the other case routes). A redelivery is queued, not sent inline:
the answer is 202 and the event goes out through the same signed, retried, recorded path as every delivery.
"""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, get, post
from litestar.di import NamedDependency, Provide
from litestar.params import PathParameter

from services.gateway.context import GatewayContext
from services.gateway.envelope import DataEnvelope, ok
from services.gateway.guards import require_api_key
from services.gateway.openapi import error_responses
from services.gateway.routes.cases import CASE_ERRORS, CaseId, provide_caller
from shared.contracts import webhook as contract
from shared.contracts.auth import KeyIdentity
from shared.errors import ErrorCode

EventId = Annotated[
    str,
    PathParameter(
        description="The webhook's event_id (also its webhook-id header), e.g. "
        "evt_<caseId>_case_completed_<updatedAt>.",
        max_length=256,
    ),
]


class WebhookDeliveriesController(Controller):
    path = "/cases/{case_id:str}/webhook-deliveries"
    tags = ["webhooks"]
    guards = [require_api_key]
    dependencies = {"caller": Provide(provide_caller, sync_to_thread=False)}
    security = [{"apiKey": []}]

    @get(
        "/",
        operation_id="listWebhookDeliveries",
        summary="List a case's webhook events and delivery attempts",
        description="Every event sent (or being sent) to the case's clientWebhookUrl, oldest first, with each "
        "attempt's time, HTTP status, latency and error, and the event's data. Cases without a webhook URL have "
        "none.",
        responses=error_responses(*CASE_ERRORS),
    )
    async def list_deliveries(
        self,
        case_id: CaseId,
        caller: NamedDependency[KeyIdentity],
        gateway: NamedDependency[GatewayContext],
    ) -> DataEnvelope[contract.WebhookDeliveries]:
        deliveries = await gateway.rpc(
            contract.LIST_DELIVERIES,
            contract.ListDeliveries(client_id=caller.client_id, case_id=case_id),
            contract.WebhookDeliveries,
        )
        return ok(deliveries)

    @post(
        "/{event_id:str}/redeliver",
        status_code=202,
        operation_id="redeliverWebhook",
        summary="Send a webhook event again",
        description="Queues a new delivery of the event with the same event_id (and webhook-id), signed afresh "
        "with your current secret, and restarts its retry schedule. 202 means queued; the attempt appears in the "
        "delivery log.",
        responses=error_responses(*CASE_ERRORS, ErrorCode.WEBHOOK_EVENT_NOT_FOUND),
    )
    async def redeliver(
        self,
        case_id: CaseId,
        event_id: EventId,
        caller: NamedDependency[KeyIdentity],
        gateway: NamedDependency[GatewayContext],
    ) -> DataEnvelope[contract.WebhookDelivery]:
        delivery = await gateway.rpc(
            contract.REDELIVER,
            contract.Redeliver(client_id=caller.client_id, case_id=case_id, event_id=event_id),
            contract.WebhookDelivery,
        )
        return ok(delivery)
