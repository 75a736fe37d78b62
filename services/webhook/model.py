"""The webhook service's records: one `DeliveryRecord` per client event, with its newest attempts.

Design decision: a delivery keeps the exact bytes every attempt sends and signs (`body`), so a redelivery sends
what the first attempt sent, whatever changed since.
"""

from __future__ import annotations

import msgspec

from shared.contracts.case import EventType
from shared.contracts.webhook import DeliveryState
from shared.mongo import Document
from shared.records import Record


class AttemptRecord(Record, frozen=True):
    at: int
    status: int | None
    latency_ms: int
    error: str | None


class DeliveryRecord(Record, frozen=True):
    event_id: str = msgspec.field(name="_id")
    case_id: str
    client_id: str
    event_type: EventType
    timestamp: int
    url: str
    # The exact bytes every attempt sends and signs (see domain.webhook_body).
    body: bytes
    state: DeliveryState
    created_at: int
    # Due time of the next attempt while pending (pushed a lease ahead while an attempt is in flight).
    next_attempt_at: int | None
    # Attempts since the retry schedule last (re)started: the position in the schedule.
    round_attempts: int = 0
    # The newest STORED_ATTEMPTS attempts, oldest first; `attempt_count` counts every attempt ever made.
    attempts: list[AttemptRecord] = []
    attempt_count: int = 0
    # Token of the replica whose attempt is in flight; None when nobody holds the delivery.
    claim: str | None = None


def from_document(document: Document) -> DeliveryRecord:
    return msgspec.convert(document, DeliveryRecord)
