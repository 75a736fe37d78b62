"""The adapter's collections: `messages` (every message sent or received) and `inbound_events` (dedupe)."""

from __future__ import annotations

from typing import Final

from pymongo import ASCENDING, IndexModel

MESSAGES: Final = "messages"
INBOUND_EVENTS: Final = "inbound_events"

INDEXES: Final = {
    MESSAGES: [IndexModel([("threadId", ASCENDING), ("timestamp", ASCENDING)], name="thread_time")],
    INBOUND_EVENTS: [],
}
