"""The delivery log stays bounded however often an event is retried or redelivered (issue: 16 MB documents)."""

from __future__ import annotations

from pymongo.asynchronous.database import AsyncDatabase

from services.webhook import domain
from services.webhook.handlers import delivery_view
from services.webhook.model import AttemptRecord, DeliveryRecord
from services.webhook.store import STORED_ATTEMPTS, DeliveryStore
from shared.contracts.case import CaseEvent, CaseEventData
from shared.mongo import Document


def _record() -> DeliveryRecord:
    event = CaseEvent(
        event_id="evt_c1_case_completed_1",
        event_type="case.completed",
        timestamp=1,
        client_id="client-1",
        webhook_url="https://hooks.example/x",
        data=CaseEventData(case_id="c1", status="COMPLETED", channel="EMAIL", attempt_count=1, attachments=[]),
    )
    return DeliveryRecord(
        event_id=event.event_id,
        case_id="c1",
        client_id="client-1",
        event_type="case.completed",
        timestamp=1,
        url="https://hooks.example/x",
        body=domain.webhook_body(event),
        state="pending",
        created_at=1,
        next_attempt_at=1,
    )


async def test_attempts_beyond_the_cap__only_the_newest_kept_and_all_counted(
    mongo_db: AsyncDatabase[Document],
) -> None:
    store = DeliveryStore(mongo_db)
    record = _record()
    assert await store.insert_once(record)
    total = STORED_ATTEMPTS + 7
    for n in range(total):
        claimed = await store.claim_due(now=10**12, lease_ms=1, claim=f"claim-{n}")
        assert claimed is not None
        kept = await store.record_attempt(
            record.event_id,
            claim=f"claim-{n}",
            attempt=AttemptRecord(at=n, status=500, latency_ms=1, error="HTTP 500: not a 2xx response"),
            state="pending",
            next_attempt_at=n,
            round_attempts=1,
        )
        assert kept
    [stored] = await store.for_case(case_id="c1", client_id="client-1")
    assert [a.at for a in stored.attempts] == list(range(total - STORED_ATTEMPTS, total))
    view = delivery_view(stored)
    assert (len(view.attempts), view.attempt_count) == (STORED_ATTEMPTS, total)
