"""The auth service's collections: `clients` and `api_keys` (keys stored only as a keyed hash)."""

from __future__ import annotations

from typing import Final

from pymongo import ASCENDING, IndexModel

CLIENTS: Final = "clients"
API_KEYS: Final = "api_keys"

INDEXES: Final = {
    CLIENTS: [IndexModel([("name", ASCENDING)], name="name")],
    API_KEYS: [
        # Lookups are by hash; uniqueness makes a hash collision a write error, never a shared key.
        IndexModel([("keyHash", ASCENDING)], name="keyHash_unique", unique=True),
        IndexModel([("clientId", ASCENDING)], name="clientId"),
    ],
}
