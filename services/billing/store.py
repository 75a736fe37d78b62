"""The billing service's collection: `usage`, one counter document per client and UTC month.

Design decision: reserving a unit is ONE conditional update of that document, so the database alone
enforces the cap and idempotency however many replicas race: the filter says "under the cap and this
reservation id not yet recorded", the update increments `used` and records the id in a bounded list of
recent reservations. Releasing decrements only if the id is recorded, and removes it, so a double release or
a release without a reservation changes nothing.

The bounded list (the last RECENT_RESERVATIONS ids) is what idempotency and release remember: replaying or
releasing an id that has since been pushed out by that many later reservations counts or releases nothing.
Reserve, release and replay follow each other within seconds, so the bound is never reached in practice.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from pymongo import ASCENDING, IndexModel, ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from shared.mongo import Document

USAGE: Final = "usage"
RECENT_RESERVATIONS: Final = 1000
ONLY_ID: Final[Document] = {"_id": 1}

INDEXES: Final = {
    USAGE: [
        IndexModel([("clientId", ASCENDING), ("month", ASCENDING)], name="client_month_unique", unique=True),
        # The operators' usage report reads one month across every client.
        IndexModel([("month", ASCENDING)], name="month"),
    ],
}


class ReserveOutcome(StrEnum):
    RESERVED = "reserved"
    # The id was reserved before: nothing counted again.
    ALREADY_RESERVED = "already_reserved"
    LIMIT_REACHED = "limit_reached"


class UsageStore:
    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self._usage = db[USAGE]

    async def reserve_unit(
        self, *, client_id: str, month: str, reservation_id: str, cap: int | None, now: int
    ) -> ReserveOutcome:
        counter = {"clientId": client_id, "month": month}
        condition: Document = {**counter, "reservations": {"$ne": reservation_id}}
        if cap is not None:
            condition["used"] = {"$lt": cap}
        increment = {
            "$inc": {"used": 1},
            "$push": {"reservations": {"$each": [reservation_id], "$slice": -RECENT_RESERVATIONS}},
            "$set": {"updatedAt": now},
            "$setOnInsert": {"createdAt": now},
        }
        try:
            # The first reservation of the month inserts the document (only the equality fields of the
            # filter are copied into it).
            # Only whether a document matched matters: the projection keeps the month's document (its list of
            # up to RECENT_RESERVATIONS ids, ~45 KB) from travelling back with every reservation.
            await self._usage.find_one_and_update(
                condition, increment, projection=ONLY_ID, upsert=True, return_document=ReturnDocument.AFTER
            )
        except DuplicateKeyError:
            # The month's document exists and did not match: it is at the cap, or the id is recorded, or a
            # concurrent first reservation inserted it a moment ago. Now that it exists, retry without
            # upsert to tell those apart.
            if await self._usage.find_one_and_update(condition, increment, projection=ONLY_ID) is None:
                current = await self._usage.find_one(counter, {"reservations": 1})
                if current is not None and reservation_id in current.get("reservations", []):
                    return ReserveOutcome.ALREADY_RESERVED
                return ReserveOutcome.LIMIT_REACHED
        return ReserveOutcome.RESERVED

    async def release_unit(self, *, client_id: str, month: str, reservation_id: str, now: int) -> bool:
        """False when the id is not recorded (never reserved, or released already)."""
        result = await self._usage.update_one(
            {"clientId": client_id, "month": month, "reservations": reservation_id},
            {"$inc": {"used": -1}, "$pull": {"reservations": reservation_id}, "$set": {"updatedAt": now}},
        )
        return result.modified_count == 1

    async def units_used(self, *, client_id: str, month: str) -> int:
        current = await self._usage.find_one({"clientId": client_id, "month": month}, {"used": 1})
        return 0 if current is None else int(current["used"])

    async def units_used_by_client(self, *, month: str, client_id: str | None = None) -> dict[str, int]:
        """Units used in `month` by every client with a counter then (or by `client_id` alone)."""
        query: Document = {"month": month}
        if client_id is not None:
            query["clientId"] = client_id
        return {
            document["clientId"]: int(document["used"])
            async for document in self._usage.find(query, {"_id": 0, "clientId": 1, "used": 1})
        }
