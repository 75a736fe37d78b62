"""The webhook service's collection: `deliveries`, one document per client event with every attempt."""

from __future__ import annotations

from typing import Final

from pymongo import ASCENDING, IndexModel

DELIVERIES: Final = "deliveries"

INDEXES: Final = {
    DELIVERIES: [
        IndexModel([("caseId", ASCENDING), ("createdAt", ASCENDING)], name="case_created"),
        IndexModel([("nextAttemptAt", ASCENDING)], name="next_attempt"),
    ],
}
