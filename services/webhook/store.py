"""The webhook service's collection: `deliveries`, one document per client event with every attempt.

Concurrency is MongoDB's job (docs/storage.md). A replica claims a due delivery with one conditional update
that also pushes its `nextAttemptAt` a lease into the future and stamps a claim token, so no other replica
can claim the same attempt; if the claimer dies, the delivery simply becomes due again when the lease ends.
The attempt's outcome is written under that token. The whole schedule lives in these documents, so it
survives restarts of the service.
"""

from __future__ import annotations

from typing import Any, Final

from pymongo import ASCENDING, IndexModel, ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from services.webhook.model import AttemptRecord, DeliveryRecord, from_document
from shared.contracts.webhook import DeliveryState
from shared.mongo import Document, at_or_before
from shared.records import to_document

DELIVERIES: Final = "deliveries"
# A delivery keeps its newest attempts only (plus the count of all of them): redeliveries and retries could
# otherwise grow one document towards MongoDB's 16 MB limit.
STORED_ATTEMPTS: Final = 50

INDEXES: Final = {
    DELIVERIES: [
        # The delivery log of a case, oldest event first.
        IndexModel([("caseId", ASCENDING), ("createdAt", ASCENDING)], name="case_created"),
        # Claims look for pending deliveries whose next attempt is due.
        IndexModel([("nextAttemptAt", ASCENDING)], name="next_attempt"),
    ],
}


def _log_attempt(entry: Document) -> Document:
    """The update that appends an attempt, dropping the oldest beyond STORED_ATTEMPTS, and counts it."""
    return {
        "$push": {"attempts": {"$each": [entry], "$slice": -STORED_ATTEMPTS}},
        "$inc": {"attemptCount": 1},
    }


class DeliveryStore:
    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self.deliveries = db[DELIVERIES]

    async def insert_once(self, record: DeliveryRecord) -> bool:
        """Store a new delivery; False when this event is already stored (a redelivered case event)."""
        try:
            await self.deliveries.insert_one(to_document(record))
        except DuplicateKeyError:
            return False
        return True

    async def claim_due(self, *, now: int, lease_ms: int, claim: str) -> DeliveryRecord | None:
        """Take the most overdue pending delivery for one attempt, or None when nothing is due."""
        document = await self.deliveries.find_one_and_update(
            {"state": "pending", "nextAttemptAt": at_or_before(now)},
            {"$set": {"nextAttemptAt": now + lease_ms, "claim": claim}},
            sort=[("nextAttemptAt", ASCENDING)],
            return_document=ReturnDocument.AFTER,
        )
        return from_document(document) if document else None

    async def release(self, event_id: str, *, claim: str, next_attempt_at: int) -> None:
        """Give a claimed delivery back without an attempt (nothing was sent), due again at `next_attempt_at`."""
        await self.deliveries.update_one(
            {"_id": event_id, "claim": claim}, {"$set": {"nextAttemptAt": next_attempt_at, "claim": None}}
        )

    async def record_attempt(
        self,
        event_id: str,
        *,
        claim: str,
        attempt: AttemptRecord,
        state: DeliveryState,
        next_attempt_at: int | None,
        round_attempts: int,
    ) -> bool:
        """Append the attempt and move the schedule on; False if the claim was lost (lease over, redelivery)."""
        logged = _log_attempt(to_document(attempt))
        result = await self.deliveries.update_one(
            {"_id": event_id, "claim": claim},
            {
                **logged,
                "$set": {
                    "state": state,
                    "nextAttemptAt": next_attempt_at,
                    "roundAttempts": round_attempts,
                    "claim": None,
                },
            },
        )
        if result.matched_count == 1:
            return True
        # Whoever holds the delivery now owns its schedule; the attempt still happened, so it is still logged.
        await self.deliveries.update_one({"_id": event_id}, logged)
        return False

    async def for_case(self, *, case_id: str, client_id: str) -> list[DeliveryRecord]:
        cursor = self.deliveries.find({"caseId": case_id, "clientId": client_id}).sort(
            [("createdAt", ASCENDING), ("_id", ASCENDING)]
        )
        return [from_document(document) for document in await cursor.to_list(None)]

    async def restart_schedule(self, *, event_id: str, case_id: str, client_id: str, now: int) -> DeliveryRecord | None:
        """Make an event due now with a fresh schedule (manual redelivery); None if the case has no such event.

        An attempt in flight loses its claim: it is still logged when it ends, but the new schedule wins.
        """
        update: dict[str, Any] = {"state": "pending", "nextAttemptAt": now, "roundAttempts": 0, "claim": None}
        document = await self.deliveries.find_one_and_update(
            {"_id": event_id, "caseId": case_id, "clientId": client_id},
            {"$set": update},
            return_document=ReturnDocument.AFTER,
        )
        return from_document(document) if document else None
