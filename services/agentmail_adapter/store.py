"""The adapter's collections: `messages` (every message sent or received) and `inbound_events` (dedupe).

`messages` is keyed by AgentMail's message id, so recording the same message twice (a retried send, a
redelivered webhook) is an idempotent upsert; case transcripts are read from here, never fetched live.
`inbound_events` holds one document per webhook event *fully handled* (stored and published): it is written
last, so a crash before it makes the redelivered webhook run again, and JetStream's Nats-Msg-Id dedupe
absorbs the repeated publish. MongoDB deletes it HANDLED_EVENT_TTL later: AgentMail (Svix) stops retrying an
event about 28 hours after the first attempt, so a week is ample and the collection cannot grow without bound.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from typing import Final

import msgspec
from pymongo import ASCENDING, DESCENDING, IndexModel
from pymongo.asynchronous.database import AsyncDatabase

from services.agentmail_adapter.model import HandledEvent, StoredMessage
from shared.mongo import Document
from shared.records import to_document

MESSAGES: Final = "messages"
INBOUND_EVENTS: Final = "inbound_events"
HANDLED_EVENT_TTL: Final = dt.timedelta(days=7)

INDEXES: Final = {
    MESSAGES: [
        IndexModel([("threadId", ASCENDING), ("timestamp", ASCENDING)], name="thread_time"),
        IndexModel([("caseId", ASCENDING), ("attempt", ASCENDING)], name="case_attempt", sparse=True),
    ],
    INBOUND_EVENTS: [
        # MongoDB deletes an event record once expiresAt (a BSON date) has passed.
        IndexModel([("expiresAt", ASCENDING)], name="expires_ttl", expireAfterSeconds=0),
    ],
}


class MessageStore:
    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self._messages = db[MESSAGES]
        self._events = db[INBOUND_EVENTS]

    async def record(self, message: StoredMessage) -> None:
        document = to_document(message)
        await self._messages.replace_one({"_id": message.message_id}, document, upsert=True)

    async def record_first(self, message: StoredMessage) -> StoredMessage:
        """Record `message` unless it is recorded already, and return the record that stands: several webhooks
        of one email (`message.sent`, its delivery, a reply) may each recover it at once, and the first stays."""
        fields = {name: value for name, value in to_document(message).items() if name != "_id"}
        await self._messages.update_one({"_id": message.message_id}, {"$setOnInsert": fields}, upsert=True)
        return await self.find(message.message_id) or message

    async def find(self, message_id: str) -> StoredMessage | None:
        document = await self._messages.find_one({"_id": message_id})
        return msgspec.convert(document, StoredMessage) if document else None

    async def sent_for_attempt(self, case_id: str, attempt: int) -> StoredMessage | None:
        document = await self._messages.find_one({"caseId": case_id, "attempt": attempt, "direction": "outbound"})
        return msgspec.convert(document, StoredMessage) if document else None

    async def case_of_thread(self, thread_id: str) -> str | None:
        """The case that sent an email in the thread (recorded with every send, before the send is answered)."""
        document = await self._messages.find_one(
            {"threadId": thread_id, "direction": "outbound", "caseId": {"$ne": None}}, projection={"caseId": 1}
        )
        return str(document["caseId"]) if document and document.get("caseId") else None

    async def thread(self, thread_id: str) -> list[StoredMessage]:
        cursor = self._messages.find({"threadId": thread_id}).sort(
            [("timestamp", ASCENDING), ("recordedAt", ASCENDING)]
        )
        return [msgspec.convert(document, StoredMessage) async for document in cursor]

    def thread_newest_first(self, thread_id: str) -> AsyncIterator[StoredMessage]:
        """The thread's messages, newest first, read lazily (a caller that stops early reads no more)."""
        cursor = self._messages.find({"threadId": thread_id}).sort(
            [("timestamp", DESCENDING), ("recordedAt", DESCENDING)]
        )
        return (msgspec.convert(document, StoredMessage) async for document in cursor)

    async def thread_size(self, thread_id: str) -> int:
        return await self._messages.count_documents({"threadId": thread_id})

    async def event_handled(self, event_id: str) -> bool:
        return await self._events.find_one({"_id": event_id}, projection={"_id": 1}) is not None

    async def mark_event_handled(self, event_id: str, event: HandledEvent) -> None:
        # $setOnInsert: a concurrent or repeated delivery keeps the first record.
        record = {**to_document(event), "expiresAt": _as_utc_date(event.handled_at) + HANDLED_EVENT_TTL}
        await self._events.update_one({"_id": event_id}, {"$setOnInsert": record}, upsert=True)


def _as_utc_date(unix_ms: int) -> dt.datetime:
    """A naive UTC datetime, as PyMongo stores and returns BSON dates."""
    return dt.datetime.fromtimestamp(unix_ms / 1000, dt.UTC).replace(tzinfo=None)
