"""The case service's collections: `cases` and `idempotency_keys`."""

from __future__ import annotations

from typing import Final

from pymongo import ASCENDING, IndexModel

CASES: Final = "cases"
IDEMPOTENCY_KEYS: Final = "idempotency_keys"

INDEXES: Final = {
    CASES: [
        # Listing a client's cases in (updatedAt, caseId) order, and filtering by reference id.
        IndexModel(
            [("clientId", ASCENDING), ("updatedAt", ASCENDING), ("_id", ASCENDING)], name="client_updated"
        ),
        IndexModel([("clientId", ASCENDING), ("clientReferenceId", ASCENDING)], name="client_reference"),
        # The scheduler finds due cases through this index.
        IndexModel([("nextActionAt", ASCENDING)], name="next_action"),
    ],
    IDEMPOTENCY_KEYS: [
        IndexModel([("clientId", ASCENDING), ("key", ASCENDING)], name="client_key_unique", unique=True),
    ],
}
