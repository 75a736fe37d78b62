"""Webhook service contracts: the client-visible delivery log of a case, and manual redelivery of one event.

Both requests carry the caller's client id and are owner-checked by the webhook service against the case
service (`case.rpc.check_owner`), so they answer CASE_NOT_FOUND and FORBIDDEN exactly as every case route does.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

from msgspec import Meta

from shared.contracts.base import Contract
from shared.contracts.case import CaseEventData, EventType

# Request/reply (queue group "webhook").
LIST_DELIVERIES: Final = "webhook.rpc.list_deliveries"
REDELIVER: Final = "webhook.rpc.redeliver"


# pending: an attempt is due or scheduled; delivered: a 2xx arrived; failed: the schedule ran out or the
# destination was refused (SSRF guard); gone: the endpoint answered 410 and asked us to stop.
DeliveryState = Literal["pending", "delivered", "failed", "gone"]


class ListDeliveries(Contract, frozen=True):
    """Replies Ok[WebhookDeliveries]; Err CASE_NOT_FOUND, or FORBIDDEN for another client's case."""

    client_id: str
    case_id: str


class Redeliver(Contract, frozen=True):
    """Replies Ok[WebhookDelivery] (pending again); Err CASE_NOT_FOUND / FORBIDDEN / WEBHOOK_EVENT_NOT_FOUND."""

    client_id: str
    case_id: str
    event_id: str


class DeliveryAttempt(Contract, frozen=True):
    at: Annotated[int, Meta(description="When the attempt started (Unix ms).")]
    status: Annotated[int | None, Meta(description="The endpoint's HTTP status; null when none arrived.")]
    latency_ms: int
    error: Annotated[str | None, Meta(description="Why the attempt failed; null on success.")]


class WebhookDelivery(Contract, frozen=True):
    """One event sent (or being sent) to the case's webhook URL, with every attempt so far."""

    event_id: str
    event_type: EventType
    timestamp: int
    state: DeliveryState
    next_attempt_at: Annotated[int | None, Meta(description="When the next attempt is due; null when finished.")]
    attempts: Annotated[list[DeliveryAttempt], Meta(description="The newest attempts (at most 50), oldest first.")]
    attempt_count: Annotated[int, Meta(description="Every attempt made, including those no longer listed.")]
    data: CaseEventData


class WebhookDeliveries(Contract, frozen=True):
    case_id: str
    items: list[WebhookDelivery]
