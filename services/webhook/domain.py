"""Pure webhook rules: the body a client receives, what an attempt's outcome means, and the retry schedule.

No I/O here. The one decision a reader must know: the body is encoded once, when the event is first stored,
and those exact bytes are what every attempt (and every manual redelivery) signs and sends. Standard Webhooks
signs the raw bytes, so re-serializing a stored document could change them and break a client's dedupe.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import msgspec

from shared.contracts.case import CaseEvent, CaseEventData, EventType
from shared.contracts.webhook import DeliveryState


class WebhookBody(msgspec.Struct, frozen=True):
    """Offload's envelope: snake_case at the top level, `data` camelCase (CaseEventData is encoded as is)."""

    event_id: str
    event_type: EventType
    timestamp: int
    data: CaseEventData


def webhook_body(event: CaseEvent) -> bytes:
    """The exact bytes every attempt for `event` sends (minified JSON, fields in contract order)."""
    return msgspec.json.encode(
        WebhookBody(event_id=event.event_id, event_type=event.event_type, timestamp=event.timestamp, data=event.data)
    )


def decode_body(body: bytes) -> WebhookBody:
    return msgspec.json.decode(body, type=WebhookBody)


# What the delivery log tells a client about an attempt that got no HTTP answer. Deliberately coarse: the log is
# readable by the client and redeliver lets it choose when to try, so an address, a port, a resolver's answer or
# a TLS detail would let it map the deployment's internal network. The detail goes to the service's own log.
DESTINATION_NOT_ALLOWED = "destination not allowed or not resolvable"
CONNECTION_FAILED = "connection failed"
TIMEOUT = "timeout"


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """What one attempt came to: an HTTP status when one arrived, else the error that prevented it."""

    status: int | None
    # What the client's delivery log shows (a status description or one of the coarse errors above).
    error: str | None
    latency_ms: int
    # The SSRF guard refused the destination: nothing was sent, and retrying cannot change that.
    refused: bool = False
    # The full reason, for the service's log only (never stored where a client reads it).
    detail: str | None = None


Verdict = Literal["delivered", "gone", "refused", "retry"]


def verdict(result: AttemptResult) -> Verdict:
    """Any 2xx is success; 410 Gone asks us to stop; everything else (3xx included, never followed) is retried."""
    if result.refused:
        return "refused"
    if result.status is not None and 200 <= result.status < 300:
        return "delivered"
    if result.status == 410:
        return "gone"
    return "retry"


def failure_description(status: int) -> str:
    if 300 <= status < 400:
        return f"HTTP {status}: redirects are not followed"
    return f"HTTP {status}: not a 2xx response"


def delay_before_attempt(schedule: Sequence[float], attempt: int) -> float | None:
    """Seconds to wait before the `attempt`-th attempt (1-based) of a schedule; None once it is exhausted."""
    if attempt < 1 or attempt > len(schedule):
        return None
    return schedule[attempt - 1]


@dataclass(frozen=True, slots=True)
class NextStep:
    state: DeliveryState
    # Seconds from now to the next attempt while `state` is pending; None when the delivery is finished.
    delay_seconds: float | None


def after_attempt(schedule: Sequence[float], *, attempt: int, result: AttemptResult) -> NextStep:
    """Where a delivery goes after its `attempt`-th attempt (counted since the schedule last started)."""
    match verdict(result):
        case "delivered":
            return NextStep("delivered", None)
        case "gone":
            return NextStep("gone", None)
        case "refused":
            return NextStep("failed", None)
        case "retry":
            delay = delay_before_attempt(schedule, attempt + 1)
            return NextStep("failed", None) if delay is None else NextStep("pending", delay)
