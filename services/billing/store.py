"""The billing service's collection: `usage`, one counter document per client and UTC month."""

from __future__ import annotations

from typing import Final

from pymongo import ASCENDING, IndexModel

USAGE: Final = "usage"

INDEXES: Final = {
    USAGE: [
        IndexModel([("clientId", ASCENDING), ("month", ASCENDING)], name="client_month_unique", unique=True)
    ],
}
